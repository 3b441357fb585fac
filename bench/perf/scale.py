"""``sambench perf --orchestration N``: the orchestration at scale, timed as a user meets it.

Writes a suite of N runs (a multiple of 100: 2 models x 2 variants x 5 mask settings x 5 rho
values x N/100 seeds, data-free and data-driven masks, ``match:`` sparsities) into a temporary
folder and times each command in its own process (start-up and imports included):

- ``dry_run_cold``: ``sambench run SUITE --dry-run`` (expand, validate, plan, print every run)
  with an empty cache of validated suites (bench.orchestration.suite_cache): torch and timm are imported to
  build each model and mask once;
- ``dry_run``: the same again, the expansion now taken from the cache (what every later
  ``run``/``status`` of the suite meets);
- ``submit``: ``sambench run SUITE --executor slurm --no-wait`` to a SLURM cluster that answers
  (jobs submitted held, ``--hold``, and cancelled after the status below, so nothing trains), in
  arrays of at most the cluster's MaxArraySize tasks, one run per task up to 10,000 runs and
  N/10,000 above (every array task is a job, and SLURM's default MaxJobCount is 10,000); without a
  cluster the run folders are written in process instead and the step is not timed;
- ``status_submitted``: ``sambench status`` on the N folders the submission wrote (config.json,
  job.json; every run queued);
- ``status``: ``sambench status`` once every folder holds a result.json and a metrics.jsonl
  (copies of one real run's files, one per run, with that run's id and config): it reads each
  result once and keeps what it learned in the suite folder's cache of finished results;
- ``status_cached``: the same again (one stat per run);
- ``collect``: ``sambench collect`` of those N result files into a CSV, building the suite's
  results index (analysis/index.py);
- ``collect_indexed``: the same again, nothing changed (the index is the answer);
- ``collect_changed``: again after 1% of the results were rewritten (those runs read again).

Each record: ``{"benchmark": "orchestration", "step", "runs", "seconds", "cpu_s", "max_rss_mb",
"target_s"}``: wall time, the command's CPU time (user + system), and its peak resident memory
(``ru_maxrss`` of that process, from ``os.wait4``; its children, e.g. squeue, not counted; the
benchmark's own process stays small, about 40 MB, which a process it starts counts from its start).
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

from bench import io, rundir
from bench.orchestration import executors

RUNS_PER_SEED = 100
MAX_TASKS = 10_000             # SLURM's default MaxJobCount
# the targets at 100,000 runs: cold dry run <= 10 s, status <= 10 s, collect <= 20 s
TARGETS_S = {"dry_run_cold": 10.0, "dry_run": 10.0, "submit": None, "status_submitted": 10.0, "status": 10.0,
             "status_cached": 10.0, "collect": 20.0, "collect_indexed": 20.0, "collect_changed": 20.0}
CHANGED = 0.01                 # the share of results rewritten before collect_changed
MASK_SETTINGS = [
    {"mask": "all"},
    {"mask": "norm_only"},
    {"mask": "random", "sparsity": "match:norm_only"},
    {"mask": "fisher", "sparsity": "match:norm_only", "mask_opts": {"num_samples": 64, "update_every": 1}},
    {"mask": "layerwise", "mask_opts": {"blocks": [2], "norm_only": True}},
]
RHOS = [0.05, 0.1, 0.2, 0.5, 1.0]


def check_size(n_runs: int) -> None:
    if n_runs < RUNS_PER_SEED or n_runs % RUNS_PER_SEED:
        raise ValueError(f"the number of runs must be a positive multiple of {RUNS_PER_SEED}, got {n_runs}")


def suite_doc(n_runs: int, name: str = "scale") -> dict:
    """A suite of exactly ``n_runs`` runs (a multiple of RUNS_PER_SEED)."""
    check_size(n_runs)
    axes = {"model": ["resnet_ci", "vit_ci"], "variant": ["sam", "asam"], "rho": RHOS}
    return {"name": name,
            "defaults": {"dataset": "digits", "epochs": 1, "batch_size": 128},
            "grid": [{**axes, **setting} for setting in MASK_SETTINGS],
            "seeds": list(range(n_runs // RUNS_PER_SEED)),
            "slurm": {"cpus_per_task": 1, "timeout_min": 10, "runs_per_job": runs_per_job(n_runs)}}


def runs_per_job(n_runs: int) -> int:
    """Runs per SLURM task: one, or as many as keep the tasks within SLURM's default MaxJobCount
    (10,000; every array task is a job): a suite of 100,000 runs goes in tasks of 10."""
    return max(1, -(-n_runs // MAX_TASKS))


def _command(args: list[str], log: Path, env: dict) -> tuple[float, float, float]:
    """Run ``python -m bench ARGS`` (output to ``log``): its wall time and CPU time in seconds and
    its peak resident memory in MB."""
    t0 = time.perf_counter()
    with open(log, "w") as out:
        proc = subprocess.Popen([sys.executable, "-m", "bench", *args], stdout=out, stderr=subprocess.STDOUT, env=env)
        _, status, usage = os.wait4(proc.pid, 0)
    seconds = time.perf_counter() - t0
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise RuntimeError(f"sambench {' '.join(args)} exited {proc.returncode}; see {log}:\n"
                           + "\n".join(log.read_text().splitlines()[-10:]))
    return seconds, usage.ru_utime + usage.ru_stime, usage.ru_maxrss / 1024


def _template(work: Path, env: dict) -> tuple[dict, str]:
    """result.json and metrics.jsonl of one real (one-epoch) run, to copy into every folder. (Trained
    in a process of its own, as everything that imports torch here: a process this one starts
    counts this one's memory at the start in its peak, so this one stays small.)"""
    run_dir = work / "template"
    _command(["train", "--dataset", "digits", "--model", "resnet_ci", "--epochs", "1", "--mask", "norm_only",
              "--device", "cpu", "--out", str(run_dir)], work / "template.log", env)
    return io.read_json(run_dir / "result.json"), (run_dir / "metrics.jsonl").read_text()


def _prepare_in_process(suite_file: Path, out: Path, env: dict) -> None:
    """The folders a submission writes (config.json), without an executor (in a process of its own)."""
    code = ("import sys; from pathlib import Path; from bench.orchestration import runner; "
            "from bench.orchestration.suite import load_suite; s = load_suite(sys.argv[1]); "
            "runner.prepare_folders(s, runner.plan(s, Path(sys.argv[2]) / s.name))")
    subprocess.run([sys.executable, "-c", code, str(suite_file), str(out)], env=env, check=True,
                   stdout=subprocess.DEVNULL)


def fill_results(suite_root: Path, result: dict, metrics: str) -> int:
    """Give every run folder a result.json and metrics.jsonl (the template, with its run's id and
    config); returns the number of folders."""
    n = 0
    for d in suite_root.iterdir():
        cfg_file = d / "config.json"
        if not cfg_file.is_file():
            continue
        doc = io.read_json(cfg_file)
        seed = doc["config"]["seed"]
        res = {**result, "run_id": doc["run_id"], "config": doc["config"],
               "test_acc": round(result["test_acc"] - 0.01 * (seed % 7), 4)}
        rundir.write_result(d, res, sync=False)
        (d / "metrics.jsonl").write_text(metrics)
        n += 1
    return n


def _cancel_submitted(suite_root: Path) -> None:
    """scancel the SLURM jobs recorded in the folders' job.json."""
    ids = set()
    for d in suite_root.iterdir():
        info = (d / "job.json")
        if info.is_file():
            for job in io.read_json(info).get("jobs", []):
                ids.add(str(job["job_id"]).split("_")[0])
    if ids:
        subprocess.run(["scancel", *sorted(ids)], check=False, capture_output=True)


def rewrite_some(suite_root: Path, share: float) -> int:
    """Rewrite ``share`` of the result files (a new test accuracy, renamed into place as sambench
    writes); returns how many."""
    names = sorted(d.name for d in suite_root.iterdir() if (d / "result.json").is_file())
    chosen = names[:: max(1, round(1 / share))] if share > 0 else []
    for name in chosen:
        path = suite_root / name / "result.json"
        doc = io.read_json(path)
        doc["test_acc"] = round(float(doc["test_acc"]) - 0.5, 4)
        io.write_json(path, doc, sync=False)
    return len(chosen)


def benchmark(n_runs: int, slurm: bool | None = None, keep: Path | None = None,
              say=print) -> list[dict]:
    """Time the steps on a generated suite of ``n_runs`` runs (see the module doc).

    ``slurm``: submit to SLURM (None: when a controller answers). ``keep``: work in this folder
    (left in place) instead of a temporary one.
    """
    slurm = executors.slurm_up() if slurm is None else slurm
    work = Path(keep) if keep else Path(tempfile.mkdtemp(prefix="sambench-scale-"))
    work.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "SAMBENCH_CACHE_DIR": str(work / "cache")}  # cold: an empty cache
    records: list[dict] = []

    def record(step: str, args: list[str]) -> None:
        seconds, cpu, rss = _command(args, work / f"{step}.log", env)
        target = TARGETS_S[step]
        records.append({"benchmark": "orchestration", "step": step, "runs": n_runs, "seconds": round(seconds, 3),
                        "cpu_s": round(cpu, 3), "max_rss_mb": round(rss, 1), "target_s": target})
        say(f"{n_runs:>7,} runs  {step:<17} {seconds:7.2f} s  cpu {cpu:6.2f} s  {rss:7.0f} MB"
            + (f"  (target <= {target:g} s)" if target else ""))

    try:
        suite_file = work / "scale.yaml"
        suite_file.write_text(yaml.safe_dump(suite_doc(n_runs), sort_keys=False))
        out = work / "results"
        root = out / "scale"
        result, metrics = _template(work, env)
        dry = ["run", str(suite_file), "--out", str(out), "--dry-run"]
        record("dry_run_cold", dry)
        record("dry_run", dry)
        if slurm:
            try:
                record("submit", ["run", str(suite_file), "--out", str(out), "--executor", "slurm", "--no-wait",
                                  "--set", "slurm.additional_parameters={hold: true}"])
                record("status_submitted", ["status", str(root)])
            finally:
                _cancel_submitted(root)
        else:
            say("(no SLURM controller answers: the submission is not timed; folders written in process)")
            _prepare_in_process(suite_file, out, env)
        filled = fill_results(root, result, metrics)
        if filled != n_runs:
            raise RuntimeError(f"expected {n_runs} run folders, found {filled}")
        os.utime(root)
        time.sleep(rundir_fresh_s())  # results older than the cache's freshness window, as after a real suite
        record("status", ["status", str(root)])
        record("status_cached", ["status", str(root)])
        csv = ["collect", str(root), "-o", str(work / "results.csv")]
        record("collect", csv)
        record("collect_indexed", csv)
        rewrite_some(root, CHANGED)
        record("collect_changed", csv)
    finally:
        if not keep:
            shutil.rmtree(work, ignore_errors=True)
    return records


def rundir_fresh_s() -> float:
    from bench.rundir import ResultCache

    return ResultCache.FRESH_S


if __name__ == "__main__":  # python -m bench.perf.scale N [N ...]
    recs = [r for n in sys.argv[1:] or ["1000"] for r in benchmark(int(n))]
    print(json.dumps(recs, indent=2))
