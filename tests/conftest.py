import atexit
import os
import shutil
import tempfile

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("OMP_NUM_THREADS", "2")
if "SAMBENCH_CACHE_DIR" not in os.environ:  # validated suites (bench.orchestration.suite_cache): not in ~/.cache
    os.environ["SAMBENCH_CACHE_DIR"] = tempfile.mkdtemp(prefix="sambench-test-cache-")
    atexit.register(shutil.rmtree, os.environ["SAMBENCH_CACHE_DIR"], True)

import re  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import textwrap  # noqa: E402
from pathlib import Path  # noqa: E402

import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(2)

# one real SLURM cluster per test session, shared by every module that asks for it
from slurm_fixture import slurm_cluster  # noqa: E402,F401

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def sambench_env() -> dict[str, str]:
    """The environment for a ``python -m bench`` subprocess of this checkout."""
    path = os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))
    return dict(os.environ, PYTHONPATH=path, OMP_NUM_THREADS="2", HF_HUB_OFFLINE="1", PYTHONUNBUFFERED="1")


@pytest.fixture
def run_sambench(sambench_env):
    """``run_sambench("run", "suite.yaml", ..., timeout=300)``: the command line in a subprocess."""
    def run(*args: str, timeout: float = 300, env: dict | None = None) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "bench", *map(str, args)], env=env or sambench_env,
                              cwd=REPO, capture_output=True, text=True, timeout=timeout, check=False)
    return run


@pytest.fixture
def write_file(tmp_path):
    """``write_file("s.yaml", text)``: the dedented text in tmp_path (or at an absolute path)."""
    def write(name: str | Path, text: str) -> Path:
        path = Path(name) if Path(name).is_absolute() else tmp_path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text))
        return path
    return write


PLAN_KEYS = ["runs", "done", "diverged", "failed", "corrupt", "resume", "new", "running", "submitting"]


@pytest.fixture
def plan_counts():
    """The numbers of ``sambench run``'s plan line (``N runs: a done, ... -> submitting k``)."""
    def counts(text: str) -> dict[str, int]:
        m = re.search(r"(\d+) runs: (\d+) done, (\d+) diverged, (\d+) failed, (\d+) corrupt, (\d+) to resume, "
                      r"(\d+) new, (\d+) running -> submitting (\d+)", text)
        assert m, text
        return dict(zip(PLAN_KEYS, map(int, m.groups())))
    return counts
