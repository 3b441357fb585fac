"""Start N processes of one run on this machine (``sambench train --nproc N``, the local executor,
``sambench perf --nproc N``), and the entry point each of them runs.

    codes = start_and_watch([python, "-m", "bench.orchestration.launch", RUN_DIR], nproc=2)
    result = train_run(run_dir, nproc=2)          # the same, for a run folder, with the failure rule

The launcher sets RANK / WORLD_SIZE / LOCAL_RANK / LOCAL_WORLD_SIZE / MASTER_ADDR=127.0.0.1 /
MASTER_PORT (a free port) for each process (what torchrun sets), forwards Ctrl-C and SIGTERM to
them, and when one exits with an error it stops the others: SIGTERM, then SIGKILL after
``STOP_GRACE_S`` (a process blocked in a collective does not see SIGTERM). For a run folder it then
makes sure result.json says failed, naming the process that died: rank 0, which writes the files,
may be the one that died. An interrupted run (Ctrl-C, SIGTERM) keeps its checkpoint and resumes.

``python -m bench.orchestration.launch RUN_DIR [--suite S] [--submission ID] [--threads N]``: one process of
such a run: it joins the process group, trains the run folder's config.json with the others
(:func:`bench.engine.train.run`) and leaves the group.
"""
from __future__ import annotations

import argparse
import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from bench import io, rundir

STOP_GRACE_S = 10.0
POLL_S = 0.2
EXIT_LOCKED = 75          # a process found the run folder locked by another training process


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rank_env(rank: int, nproc: int, port: int, threads: int | None = None) -> dict[str, str]:
    env = dict(os.environ, RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(nproc),
               LOCAL_WORLD_SIZE=str(nproc), MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port),
               PYTHONUNBUFFERED="1")
    if threads:
        env["OMP_NUM_THREADS"] = str(threads)
    return env


class Failure:
    """Which process ended the group, and how."""

    def __init__(self, rank: int, code: int):
        self.rank, self.code = rank, code

    def describe(self) -> str:
        how = f"signal {signal.Signals(-self.code).name}" if self.code < 0 else f"exit status {self.code}"
        return f"process {self.rank} ended with {how}"


def default_threads(nproc: int) -> int:
    """CPU threads per process: this machine's cores shared by the processes (at most
    $OMP_NUM_THREADS when that is set)."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:
        cores = os.cpu_count() or 1
    threads = max(1, cores // nproc)
    omp = os.environ.get("OMP_NUM_THREADS", "")
    return min(threads, int(omp)) if omp.isdigit() and int(omp) > 0 else threads


def start(argv: list[str], nproc: int, threads: int | None = None) -> list[subprocess.Popen]:
    """The processes, each with its rank's environment and ``threads`` CPU threads (default: the
    cores shared among them)."""
    threads = threads or default_threads(nproc)
    port = free_port()
    return [subprocess.Popen(argv, env=rank_env(r, nproc, port, threads)) for r in range(nproc)]


def stop(procs: list[subprocess.Popen], sig: int = signal.SIGTERM, grace_s: float = STOP_GRACE_S) -> None:
    """Signal the live processes, SIGKILL whatever is left after ``grace_s``."""
    for p in procs:
        if p.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                p.send_signal(sig)
    deadline = time.time() + grace_s
    for p in procs:
        try:
            p.wait(timeout=max(0.0, deadline - time.time()))
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                p.kill()
            p.wait()


def watch(procs: list[subprocess.Popen]) -> Failure | None:
    """Wait for every process; the first to fail stops the others. Ctrl-C and SIGTERM reach the
    processes (SIGINT, SIGTERM) and are raised here after they stopped."""
    def forward(signum, frame):
        raise _Signal(signum)

    previous = signal.signal(signal.SIGTERM, forward) if _main_thread() else None
    try:
        while True:
            codes = [p.poll() for p in procs]
            failed = [(r, c) for r, c in enumerate(codes) if c not in (None, 0)]
            if failed:
                rank, code = failed[0]
                stop(procs)
                return Failure(rank, code)
            if all(c == 0 for c in codes):
                return None
            time.sleep(POLL_S)
    except KeyboardInterrupt:
        stop(procs, signal.SIGINT)
        raise
    except _Signal as sig:
        stop(procs, sig.signum)
        raise KeyboardInterrupt(f"signal {sig.signum}") from None
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


class _Signal(Exception):
    def __init__(self, signum: int):
        self.signum = signum


def _main_thread() -> bool:
    import threading

    return threading.current_thread() is threading.main_thread()


def start_and_watch(argv: list[str], nproc: int, threads: int | None = None) -> Failure | None:
    return watch(start(argv, nproc, threads))


# --- a run folder ---------------------------------------------------------------------------------

def train_run(run_dir: str | Path, nproc: int, suite: str | None = None, submission: str | None = None,
              threads: int | None = None) -> dict:
    """Train the run in ``run_dir`` (config.json written) with ``nproc`` processes on this machine;
    return its result.json (a failed one, naming the process, when one of them died)."""
    run_dir = Path(run_dir)
    argv = [sys.executable, "-m", "bench.orchestration.launch", str(run_dir)]
    if suite:
        argv += ["--suite", suite]
    if submission:
        argv += ["--submission", submission]
    if rundir.lock_held(run_dir):
        raise rundir.RunLocked(f"{run_dir} is being trained by another process")
    failure = start_and_watch(argv, nproc, threads)
    if failure is not None and failure.code == EXIT_LOCKED:
        raise rundir.RunLocked(f"{run_dir} is being trained by another process")
    if failure is not None:
        record_failure(run_dir, failure, submission)
    return rundir.read_result(run_dir).data or {"status": "failed", "error": "no result.json"}


def record_failure(run_dir: Path, failure: Failure, submission: str | None) -> None:
    """result.json says failed (unless the run finished before the process died), naming the
    process; the error rank 0 recorded, if any, is kept beside it."""
    doc = io.read_json(run_dir / "config.json")
    with contextlib.suppress(rundir.RunLocked), rundir.run_lock(run_dir):
        old = rundir.read_result(run_dir)
        if old.kind == "final":
            return
        error = f"{failure.describe()}; the other processes were stopped"
        result = {"status": "failed", "run_id": doc.get("run_id"), "error": error, "config": doc.get("config"),
                  "submission": submission}
        if old.kind == "failed":
            result["rank0_error"] = old.data.get("error")
            result["traceback"] = old.data.get("traceback")
        io.write_json(run_dir / "result.json", result)


def main(argv: list[str] | None = None) -> int:
    """One process of a run that spans several (see the module docstring)."""
    ap = argparse.ArgumentParser(prog="python -m bench.orchestration.launch")
    ap.add_argument("run_dir")
    ap.add_argument("--suite")
    ap.add_argument("--submission")
    args = ap.parse_args(argv)

    def interrupt(signum, frame):
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGTERM, interrupt)
    from bench.engine import distributed, train

    threads = os.environ.get("OMP_NUM_THREADS")
    if threads and threads.isdigit():
        import torch

        torch.set_num_threads(int(threads))
    cfg = io.read_json(Path(args.run_dir) / "config.json")["config"]
    try:
        distributed.init_from_env(cfg.get("device", "auto"))
        train.run(cfg, args.run_dir, suite=args.suite, progress=False, submission=args.submission)
    except KeyboardInterrupt:
        return 130
    except rundir.RunLocked:
        return EXIT_LOCKED
    except Exception as exc:  # noqa: BLE001 -- rank 0 recorded it; the launcher stops the others
        import traceback

        print(f"[sambench] process {distributed.rank()}: {type(exc).__name__}: {exc}", file=sys.stderr, flush=True)
        traceback.print_exc()
        return 1
    finally:
        distributed.destroy()
    return 0


if __name__ == "__main__":
    sys.exit(main())
