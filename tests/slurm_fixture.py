"""Session-scoped fixture that provides the real single-node SLURM cluster of bench/slurm/.

Import it into a test module (``from slurm_fixture import slurm_cluster``) and request
``slurm_cluster``. It runs ``bench/slurm/up.sh`` once per session and ``bench/slurm/down.sh`` at
the end. If the cluster was already up before the session (a developer started it by hand), it is
left running.

The fixture only skips when ``SAMBENCH_NO_SLURM=1``; any failure to start the cluster (not root,
no apt, a daemon that dies) fails the test, so CI cannot silently lose SLURM coverage.
"""

from __future__ import annotations

import os
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SLURM_DIR = REPO / "bench" / "slurm"
UP_SH = SLURM_DIR / "up.sh"
DOWN_SH = SLURM_DIR / "down.sh"
# First run may apt-get install slurm/munge/mariadb.
UP_TIMEOUT_S = 900
DOWN_TIMEOUT_S = 120


@dataclass(frozen=True)
class SlurmCluster:
    summary: str  # up.sh's last line, "slurm up: node X idle, accounting on, N CPUs (...)"
    state_dir: Path
    started_here: bool  # False when it was already up before this session


def _run(script: Path, timeout: float) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["bash", str(script)],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


@pytest.fixture(scope="session")
def slurm_cluster():
    if os.environ.get("SAMBENCH_NO_SLURM") == "1":
        pytest.skip("SAMBENCH_NO_SLURM=1: not starting the local SLURM cluster (bench/slurm/up.sh)")

    try:
        up = _run(UP_SH, UP_TIMEOUT_S)
    except subprocess.TimeoutExpired as exc:
        pytest.fail(f"bench/slurm/up.sh did not finish in {UP_TIMEOUT_S}s:\n{exc.stdout}\n{exc.stderr}")
    if up.returncode != 0:
        pytest.fail(
            f"bench/slurm/up.sh failed (exit {up.returncode}); set SAMBENCH_NO_SLURM=1 to skip SLURM tests.\n"
            f"--- stdout\n{up.stdout}\n--- stderr\n{up.stderr}",
            pytrace=False,
        )
    lines = up.stdout.strip().splitlines()
    summary = lines[-1] if lines else ""
    cluster = SlurmCluster(
        summary=summary,
        state_dir=Path(os.environ.get("SAMBENCH_SLURM_STATE", "/tmp/sambench-slurm")),
        started_here="already up" not in summary,
    )
    yield cluster

    if cluster.started_here:
        down = _run(DOWN_SH, DOWN_TIMEOUT_S)
        if down.returncode != 0:
            pytest.fail(f"bench/slurm/down.sh failed (exit {down.returncode}):\n{down.stdout}\n{down.stderr}")
