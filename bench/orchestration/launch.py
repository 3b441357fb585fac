"""Start the processes of one run and watch them: N on this machine (``sambench train --nproc N``, the
local executor, ``sambench perf --nproc N``), or one rank guarded (a SLURM task, a torchrun worker).

    failure = start_and_watch([python, "-m", "bench.orchestration.launch", RUN_DIR], nproc=2)
    result = train_run(run_dir, nproc=2)          # the same, for a run folder, with the failure rule
    code = guard_rank(argv, env, run_dir)          # one rank as a child process, its death recorded

The launcher sets RANK / WORLD_SIZE / LOCAL_RANK / LOCAL_WORLD_SIZE / MASTER_ADDR=127.0.0.1 /
MASTER_PORT (a free port) for each process (what torchrun sets), forwards Ctrl-C and SIGTERM to
them, and when one exits with an error it stops the others: SIGTERM, then SIGKILL after
``STOP_GRACE_S`` (a process blocked in a collective does not see SIGTERM). For a run folder it then
records the failure in result.json (:func:`bench.rundir.record_failure`): which process (rank), the
signal or exit status, the host, its pid and the tail of its stderr. Rank 0, which writes the
files, may be the one that died. An interrupted run (Ctrl-C, SIGTERM) keeps its checkpoint and
resumes. Each process dies with its launcher (PR_SET_PDEATHSIG), keeping its last checkpoint.

A rank started by another launcher (a task of a SLURM job, a torchrun worker) is guarded the same
way by :func:`guard_rank`: the rank trains in a child process; when the child dies of a signal (or
exits with an error) while nobody asked it to stop, the guard records it, naming that rank, its
signal and host, and exits with an error, so srun (``--kill-on-bad-exit``) or torchrun stops the
others. A guard whose rank failed with an error (not a signal) waits ``PEER_GRACE_S`` before it
exits, so the guard of a rank that was killed (the cause) records first.

``python -m bench.orchestration.launch RUN_DIR [--suite S] [--submission ID] [--skip-handled]``: one
process of such a run: it joins the process group, trains the run folder's config.json with the
others (:func:`bench.engine.train.run`) and leaves the group.
"""
from __future__ import annotations

import argparse
import collections
import contextlib
import ctypes
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

from bench import io, rundir

STOP_GRACE_S = 10.0
POLL_S = 0.2
PEER_GRACE_S = 3.0        # a guard whose rank failed with an error waits this long before exiting
EXIT_LOCKED = 75          # a process found the run folder locked by another training process
EXIT_HANDLED = 76         # the run already has a result of this submission: nothing to do
EXIT_INTERRUPTED = 130    # a process stopped by Ctrl-C, SIGTERM or SIGUSR2 (its checkpoint kept)
TAIL_BYTES = 4000         # the end of a process's stderr kept for its failure record
GUARDED = "SAMBENCH_GUARDED"   # set in a guarded rank's environment (the child does not guard itself)
_PR_SET_PDEATHSIG = 1


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
    """Which process ended the group, and how (``code``: a Popen return code, -N for signal N)."""

    def __init__(self, rank: int, code: int, pid: int | None = None, tail: str = ""):
        self.rank, self.code, self.pid, self.tail = rank, code, pid, tail
        self.host = socket.gethostname()

    @property
    def signal(self) -> str | None:
        return rundir.signal_name(self.code) if self.code < 0 else None

    def describe(self) -> str:
        how = f"signal {self.signal}" if self.code < 0 else f"exit status {self.code}"
        return f"process {self.rank} ended with {how}"

    def record(self, rid: str | None, config: dict | None, submission: str | None, recorded_by: str) -> dict:
        """This failure as a rundir failure record: a death by signal, or an error with the
        stderr's last lines (its traceback)."""
        where = f"{self.describe()} on host {self.host}"
        if self.code < 0:
            return rundir.failure(f"{where}; the other processes were stopped", "rank-death", rid=rid,
                                  rank=self.rank, signal=self.signal, host=self.host, pid=self.pid,
                                  traceback=self.tail or None, recorded_by=recorded_by, submission=submission,
                                  config=config)
        last = next((ln for ln in reversed(self.tail.splitlines()) if ln.strip()), "")
        return rundir.failure(f"{where}: {last}" if last else where, "exception" if last else "rank-death",
                              rid=rid, rank=self.rank, exit_code=self.code, host=self.host, pid=self.pid,
                              traceback=self.tail or None, recorded_by=recorded_by, submission=submission,
                              config=config)


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


def _die_with_parent() -> None:
    """In the child, before exec: SIGTERM when the parent dies (Linux), so no rank outlives its launcher."""
    with contextlib.suppress(Exception):
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


class RankProcess(subprocess.Popen):
    """A process of the run: its stderr forwarded to ours, its last TAIL_BYTES kept for a report."""

    def __init__(self, argv: list[str], env: dict[str, str], rank: int):
        super().__init__(argv, env=env, stderr=subprocess.PIPE, preexec_fn=_die_with_parent)
        self.rank = rank
        self._tail: collections.deque[bytes] = collections.deque()
        self._kept = 0
        self._reader = threading.Thread(target=self._forward, daemon=True)
        self._reader.start()

    def _forward(self) -> None:
        out = getattr(sys.stderr, "buffer", None)
        for line in iter(self.stderr.readline, b""):
            with contextlib.suppress(OSError, ValueError):
                if out is not None:
                    out.write(line)
                    out.flush()
                else:
                    sys.stderr.write(line.decode(errors="replace"))
            self._tail.append(line)
            self._kept += len(line)
            while self._kept > TAIL_BYTES and len(self._tail) > 1:
                self._kept -= len(self._tail.popleft())

    def tail(self) -> str:
        self._reader.join(timeout=2.0)
        return b"".join(self._tail).decode(errors="replace")[-TAIL_BYTES:]

    def failure(self) -> Failure:
        return Failure(self.rank, self.returncode, self.pid, self.tail())


def start(argv: list[str], nproc: int, threads: int | None = None) -> list[RankProcess]:
    """The processes, each with its rank's environment and ``threads`` CPU threads (default: the
    cores shared among them)."""
    threads = threads or default_threads(nproc)
    port = free_port()
    return [RankProcess(argv, rank_env(r, nproc, port, threads), r) for r in range(nproc)]


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


def watch(procs: list[RankProcess]) -> Failure | None:
    """Wait for every process; the first to fail stops the others. Ctrl-C and SIGTERM reach the
    processes (SIGINT, SIGTERM) and are raised here after they stopped."""
    def forward(signum, frame):
        raise _Signal(signum)

    previous = signal.signal(signal.SIGTERM, forward) if _main_thread() else None
    try:
        while True:
            codes = [p.poll() for p in procs]
            failed = [p for p, c in zip(procs, codes) if c not in (None, 0)]
            if failed:
                first = min(failed, key=lambda p: (p.returncode >= 0, p.rank))  # a signal death first
                stop(procs)
                return first.failure()
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
    return threading.current_thread() is threading.main_thread()


def start_and_watch(argv: list[str], nproc: int, threads: int | None = None) -> Failure | None:
    return watch(start(argv, nproc, threads))


# --- a run folder ---------------------------------------------------------------------------------

def run_argv(run_dir: Path, suite: str | None, submission: str | None, skip_handled: bool = False) -> list[str]:
    argv = [sys.executable, "-m", "bench.orchestration.launch", str(run_dir)]
    if suite:
        argv += ["--suite", suite]
    if submission:
        argv += ["--submission", submission]
    if skip_handled:
        argv.append("--skip-handled")
    return argv


def train_run(run_dir: str | Path, nproc: int, suite: str | None = None, submission: str | None = None,
              threads: int | None = None) -> dict:
    """Train the run in ``run_dir`` (config.json written) with ``nproc`` processes on this machine;
    return its result.json (a failed one, naming the process, when one of them died)."""
    run_dir = Path(run_dir)
    if rundir.lock_held(run_dir):
        raise rundir.RunLocked(f"{run_dir} is being trained by another process ({rundir.holder(run_dir)})")
    failure = start_and_watch(run_argv(run_dir, suite, submission), nproc, threads)
    if failure is not None and failure.code == EXIT_LOCKED:
        raise rundir.RunLocked(f"{run_dir} is being trained by another process ({rundir.holder(run_dir)})")
    if failure is not None:
        record_failure(run_dir, failure, submission, "launcher")
    return rundir.read_result(run_dir).data or {"status": "failed", "error": "no result.json"}


def record_failure(run_dir: Path, failure: Failure, submission: str | None, recorded_by: str) -> dict | None:
    """result.json says failed (unless the run finished before the process died), naming the
    process; what rank 0 recorded itself is kept beside it (rundir.merge_failure)."""
    try:
        doc = io.read_json(run_dir / "config.json")
    except (OSError, ValueError):
        doc = {}
    return rundir.record_failure(run_dir, failure.record(doc.get("run_id"), doc.get("config"), submission,
                                                         recorded_by))


# --- one rank, guarded --------------------------------------------------------------------------------

class Stopped(KeyboardInterrupt):
    """The guard was asked to stop (a signal): its rank was stopped, nothing is recorded."""


def guard_rank(argv: list[str], env: dict[str, str], run_dir: Path | None, submission: str | None = None,
               recorded_by: str = "slurm-task", stop_signals=(signal.SIGTERM, signal.SIGINT, signal.SIGHUP)) -> int:
    """Run one rank (``argv`` with ``env``: RANK, WORLD_SIZE...) as a child process and wait for it.

    Returns its exit status. A signal in ``stop_signals`` reaching the guard is passed on to the
    child, which stops (its checkpoint kept), and then raises :class:`Stopped`. When the child ends
    with a signal or an error the guard was not asked for, and ``run_dir`` is given, the failure is
    recorded there with the rank's number, signal or exit status, host, pid and stderr tail; a
    guard whose rank failed with an error waits PEER_GRACE_S first (see the module doc).
    """
    rank = int(env.get("RANK", "0") or 0)
    child = RankProcess(argv, dict(env, **{GUARDED: "1"}), rank)
    asked: list[int] = []

    def pass_on(signum, frame):
        asked.append(signum)
        with contextlib.suppress(ProcessLookupError):
            child.send_signal(signum)

    previous = {s: signal.signal(s, pass_on) for s in stop_signals} if _main_thread() else {}
    try:
        code = child.wait()
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
    if asked or code == EXIT_INTERRUPTED:  # (130: the rank itself was told to stop, e.g. SIGUSR2 before a preemption)
        raise Stopped(f"signal {asked[0]}" if asked else "the rank was interrupted")
    if code in (0, EXIT_LOCKED, EXIT_HANDLED) or run_dir is None:
        return code
    failure = child.failure()
    if code > 0:
        time.sleep(PEER_GRACE_S)  # the guard of a killed rank (the cause) records first
    record_failure(Path(run_dir), failure, submission, recorded_by)
    return code


def guard_this_process(run_dir: Path) -> int | None:
    """Under torchrun (a launcher that exported RANK / WORLD_SIZE to this ``sambench train``): run this
    very command again as a guarded child (:func:`guard_rank`) and return its exit status; None in
    that child, which trains."""
    if os.environ.get(GUARDED):
        return None
    code = guard_rank([sys.executable, *sys.orig_argv[1:]], dict(os.environ), Path(run_dir),
                      recorded_by="torchrun-worker")
    return code if code >= 0 else 1


# --- the process entry -----------------------------------------------------------------------------

def main(argv: list[str] | None = None) -> int:
    """One process of a run that spans several (see the module docstring)."""
    ap = argparse.ArgumentParser(prog="python -m bench.orchestration.launch")
    ap.add_argument("run_dir")
    ap.add_argument("--suite")
    ap.add_argument("--submission")
    ap.add_argument("--skip-handled", action="store_true", help="exit 76 if the run has a result of --submission")
    args = ap.parse_args(argv)

    def interrupt(signum, frame):
        raise KeyboardInterrupt(f"signal {signum}")

    for sig in (signal.SIGTERM, signal.SIGUSR2):  # SIGUSR2: SLURM's notice of a timeout or preemption
        signal.signal(sig, interrupt)
    from bench.engine import distributed, train

    threads = os.environ.get("OMP_NUM_THREADS")
    if threads and threads.isdigit():
        import torch

        torch.set_num_threads(int(threads))
    run_dir = Path(args.run_dir)
    cfg = io.read_json(run_dir / "config.json")["config"]
    try:
        comm = distributed.init_from_env(cfg.get("device", "auto"))
        handled = rundir.handled(run_dir, args.submission) if args.skip_handled else False
        if comm is not None and args.skip_handled:
            handled = comm.share(handled)  # rank 0's view, so every process does the same
        if handled:
            return EXIT_HANDLED
        train.run(cfg, run_dir, suite=args.suite, progress=False, submission=args.submission)
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
    except rundir.RunLocked:
        return EXIT_LOCKED
    except Exception as exc:  # noqa: BLE001 -- rank 0 recorded it; the launcher stops the others
        import traceback

        traceback.print_exc()
        print(f"[sambench] process {distributed.rank()}: {type(exc).__name__}: {exc}", file=sys.stderr, flush=True)
        return 1
    finally:
        distributed.destroy()
    return 0


if __name__ == "__main__":
    sys.exit(main())
