"""Run a suite and report on it (the orchestration behind ``sambench run`` and ``sambench status``).

    run_suite(suite, out, executor="local")   # plan, submit what needs work, wait, summarize
    print_status(target, out)                  # the state of a suite's runs, from the files

Results go to ``<out>/<suite>/<run_id>/`` (config.json written at submission; metrics.jsonl,
checkpoint.pt, result.json by :func:`bench.engine.train.run`); submitit's files (pickles, logs) to
``<out>/<suite>/.submitit/``; each submitted run records its jobs in ``job.json``.

Resubmitting skips finished runs (done/diverged), retries failed ones, redoes runs whose
result.json is corrupt (kept renamed), resumes unfinished ones from their checkpoint, and
leaves alone runs that another live process is training (its ``.lock`` is held) or that a live
SLURM job recorded in ``job.json`` will train (the rule is :mod:`bench.rundir`).

Ctrl-C or SIGTERM while waiting stops the local workers this command started (each run keeps
its last checkpoint and resumes on the next ``sambench run``), or with ``keep_running`` leaves
them to finish; SLURM jobs keep running either way. The final summary is taken after the
workers this command started have exited.
"""
from __future__ import annotations

import os
import re
import sys
import time
import uuid
from pathlib import Path

from bench import rundir
from bench.errors import EXIT_FAIL, EXIT_OK, InvalidInput
from bench.measure import sharpness
from bench.orchestration import executors, reaper, suite_summary
from bench.orchestration.executors import Queue, Request, Submission
from bench.orchestration.reference import write_reference
from bench.rundir import RunState

# --- planning ----------------------------------------------------------------------------------

def plan(suite, root: Path, queue: Queue | None = None, write: bool = True) -> list[RunState]:
    """The state of every run of the suite under ``root``. ``write``: keep what was learned (the
    cache of finished results, the failures SLURM's accounting tells of); a dry run writes nothing."""
    queue = queue or Queue()

    def alive(info: dict | None) -> bool:
        return executors.job_alive(info, queue)

    states = rundir.run_states(root, list(suite.items()), alive, save=write)
    if write:
        reaper.reap(states, alive)  # runs whose SLURM job ended without a result: how it ended
    return [_with_sharpness(st) for st in states]


def _with_sharpness(st: RunState) -> RunState:
    """A trained run whose config asks for sharpness that result.json lacks is not done yet."""
    if st.state == "done" and sharpness.pending(st.cfg, st.result.data):
        st.state = "running" if rundir.lock_held(st.dir) else "resume"
    return st


def pick_executor(name: str) -> str:
    """``auto`` is slurm when a controller answers, else local."""
    if name != "auto":
        return name
    kind = "slurm" if executors.slurm_up() else "local"
    print(f"executor: {kind} (auto)")
    return kind


def check_data(runs: list[RunState]) -> None:
    """Find each data set the runs need, before anything is written (InvalidInput if missing)."""
    from bench.data import files as datafiles

    seen = set()
    for st in runs:
        key = (st.cfg["dataset"], st.cfg["data_root"], st.cfg["download"])
        if key in seen:
            continue
        seen.add(key)
        try:
            if key[0] in datafiles.LOCATORS:
                datafiles.check_available(*key)   # no torch
            else:
                from bench.data.datasets import check_available

                check_available(*key)
        except datafiles.DataError as exc:
            raise InvalidInput(f"dataset {key[0]!r} (run {st.rid}): {exc}") from None


def check_executor(kind: str, runs: list[RunState]) -> None:
    """Runs over several nodes need SLURM (InvalidInput otherwise, before anything is written)."""
    multi = [st for st in runs if st.cfg.get("nodes", 1) > 1]
    if multi and kind != "slurm":
        raise InvalidInput(f"run {multi[0].rid} asks for nodes: {multi[0].cfg['nodes']}; runs over several nodes "
                           f"need --executor slurm (or torchrun on each node with `sambench train`)")


def check_writable(root: Path, runs: list[RunState]) -> None:
    """The folders a submission writes (the suite folder, or the first parent that exists, and each
    run folder already there) must be writable by this user (InvalidInput, before anything is
    written): a results folder shared by several users is writable by all of them."""
    probe = root
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    for folder in [probe] + [st.dir for st in runs if st.result is not None]:  # (None: no folder yet)
        if folder.is_dir() and not os.access(folder, os.W_OK | os.X_OK, effective_ids=True):
            raise InvalidInput(f"{folder}: not writable by this user ({_user()}; it belongs to {_owner(folder)}): "
                               f"a results folder shared by several users must be writable by each of them "
                               f"(a group folder: chmod -R g+rwX, umask 002); nothing was written or submitted")


def _user() -> str:
    import getpass

    return getpass.getuser()


def _owner(path: Path) -> str:
    try:
        return path.owner()
    except (KeyError, OSError):
        return f"uid {path.stat().st_uid}"


def prepare_folders(suite, runs: list[RunState]) -> None:
    """Refuse folders that hold another run (nothing written), then write each config.json."""
    for st in runs:
        rundir.check_owner(st.dir, st.rid)
    for st in runs:
        st.dir.mkdir(parents=True, exist_ok=True)
    rundir.write_configs((st.dir, st.rid, suite.name, st.cfg, suite.variant_options(st.cfg)) for st in runs)


# --- running ------------------------------------------------------------------------------------

def run_suite(suite, out: Path, executor: str = "local", max_parallel: int | None = None,
              dry_run: bool = False, wait: bool = True, keep_running: bool = False) -> int:
    """``sambench run``: plan, submit the runs that need work, wait for them, summarize.

    Returns the exit status (0: every run finished; 1: some failed or are unfinished, or the
    submission failed). Raises InvalidInput before anything is written for a missing data set
    or a run folder that holds another run; re-raises KeyboardInterrupt after stopping (or,
    with ``keep_running``, leaving) the local workers it started.
    """
    t_start = time.time()
    root = Path(out) / suite.name
    kind = pick_executor(executor)
    if kind == "slurm" and not dry_run and not executors.slurm_up():
        print("sambench run: error: --executor slurm, but no SLURM controller answers "
              "(`scontrol ping`); start one or use --executor local", file=sys.stderr)
        return EXIT_FAIL
    states = plan(suite, root, write=not dry_run)
    todo = [s for s in states if s.state in rundir.TO_SUBMIT]
    elsewhere = [s for s in states if s.state == "running"]
    line = f"{suite_summary.summarize(states).line()} -> submitting {len(todo)}"
    if dry_run:
        print(suite_summary.table(states, suite.resolved_sparsity))
        try:
            check_data(todo)
            check_executor(kind, todo)
        except InvalidInput as exc:
            print(f"warning: {exc}", file=sys.stderr)
        print(line + " (dry run: nothing written)")
        return EXIT_OK
    check_data(todo)
    check_executor(kind, todo)
    if todo:
        check_writable(root, todo)
        if kind == "slurm":
            executors.check_slurm_limits(todo, suite.slurm)
    print(f"{suite.name}: {line}", flush=True)
    write_reference(suite, root)  # the suite's published numbers, for table and plot
    sub = Submission(kind, uuid.uuid4().hex[:16], suite.name)
    if todo:
        prepare_folders(suite, todo)
    try:
        if todo:
            request = Request(suite.name, todo, root / ".submitit", sub.submission, max_parallel, suite.slurm)
            try:
                executors.submit(sub, request)
            except Exception as exc:  # noqa: BLE001 -- sbatch refused, submitit error, ...
                print(f"sambench run: error: submission failed: {type(exc).__name__}: {exc}", file=sys.stderr)
                executors.stop(sub)
                return EXIT_FAIL
            _print_submitted(sub, len(todo), root)
        if not wait and kind != "debug":
            print(f"not waiting; follow with: sambench status {root}")
            return EXIT_OK
        wait_for(sub, todo, elsewhere)
    except KeyboardInterrupt:
        _interrupted(sub, keep_running, root)
        print(f"{suite.name}: {suite_summary.summarize(plan(suite, root)).line()} -> {root}", flush=True)
        raise
    return final_report(suite, root, t_start)


def _print_submitted(sub: Submission, n_runs: int, root: Path) -> None:
    if sub.note:
        print(sub.note, flush=True)
    ids = sorted({str(j.job_id) for j in sub.jobs})
    shown = ", ".join(ids[:6]) + (f", ... ({len(ids)} jobs)" if len(ids) > 6 else "")
    what = {"slurm": "SLURM array task(s)", "local": "local worker(s)", "debug": "in-process job(s)"}[sub.kind]
    print(f"submitted {n_runs} runs as {len(sub.jobs)} {what}: {shown}; logs in {root / '.submitit'}", flush=True)


def _interrupted(sub: Submission, keep_running: bool, root: Path) -> None:
    """Ctrl-C or a signal: stop the local workers (default) or leave them, and say which."""
    if sub.kind == "local" and sub.jobs:
        if keep_running:
            pids = ", ".join(map(str, executors.local_pids(sub)))
            print(f"\ninterrupted: left {len(sub.jobs)} local worker(s) running (process groups {pids}); "
                  f"follow them with: sambench status {root}", file=sys.stderr, flush=True)
            return
        stopped = executors.stop(sub)
        print(f"\ninterrupted: stopped {len(stopped)} local worker(s); their runs resume from the last "
              f"finished epoch on the next `sambench run`", file=sys.stderr, flush=True)
    elif sub.kind == "slurm" and sub.jobs:
        ids = " ".join(sorted({str(j.job_id).split("_")[0] for j in sub.jobs}))
        print(f"\ninterrupted: the SLURM jobs keep running (`scancel {ids}` stops them); "
              f"follow them with: sambench status {root}", file=sys.stderr, flush=True)
    else:
        print("\ninterrupted", file=sys.stderr, flush=True)


class _Watched:
    """The runs ``wait_for`` waits on, each reported once it has a result; a run of this submission
    is read only when its result.json is new or changed (a suite of 100,000 runs: a stat each per poll)."""

    def __init__(self, sub: Submission, watch: list[RunState], elsewhere: list[RunState], queue: Queue):
        self.sub, self.queue = sub, queue
        self.reporter = suite_summary.Reporter(len(watch) + len(elsewhere))
        self.pending = {s.rid: s for s in watch + elsewhere}
        self.ours = {s.rid for s in watch}
        self.seen: dict[str, tuple | None] = {}  # run -> its result.json's (inode, size, mtime ns) when read

    def working(self, st: RunState) -> bool:
        return rundir.lock_held(st.dir) or executors.job_alive(rundir.read_job(st.dir), self.queue)

    def result_now(self, st: RunState) -> dict | None:
        """A final result, a failure of this submission, or for a run trained elsewhere the
        result it was left with."""
        if rundir.lock_held(st.dir):
            return None
        result = rundir.read_result(st.dir)
        if result.kind == "final":  # (a job that ended before measuring its sharpness: done all the same)
            return None if sharpness.pending(st.cfg, result.data) and self.working(st) else result.data
        if st.rid in self.ours:
            mine = result.kind == "failed" and result.data.get("submission") == self.sub.submission
            return result.data if mine else None
        return None if self.working(st) else (result.data or {"status": result.kind})

    def harvest(self) -> None:
        for rid, st in list(self.pending.items()):
            if rid in self.ours:
                sig = _signature(st.dir / "result.json")
                if sig is None or self.seen.get(rid) == sig:
                    continue
                self.seen[rid] = sig
            res = self.result_now(st)
            if res is not None:
                self.reporter.finished(rid, st.cfg, res)
                self.pending.pop(rid)
            elif rid in self.ours and rundir.lock_held(st.dir):
                self.seen.pop(rid, None)  # (read while its writer held the lock: read it again)


def wait_for(sub: Submission, watch: list[RunState], elsewhere: list[RunState], poll_s: float = 1.0) -> None:
    """Report each run as it finishes, until every watched run has a result or nothing is left
    that could produce one; then wait for the jobs this submission started to exit."""
    queue = Queue()
    runs = _Watched(sub, watch, elsewhere, queue)
    try:
        if sub.kind == "debug":
            for job in sub.jobs:
                job.results()  # runs in this process
                runs.harvest()
        last_check = 0.0
        while runs.pending:
            runs.harvest()
            if not runs.pending:
                break
            runs.reporter.update(lambda: sum(rundir.lock_held(st.dir) for st in runs.pending.values()))
            if time.time() - last_check >= 3 * poll_s:
                last_check = time.time()
                if not executors.jobs_running(sub, queue) and not any(runs.working(st) for st in runs.pending.values()):
                    time.sleep(poll_s)  # a result written just as the job ended
                    runs.harvest()
                    _reap_pending(runs.pending, queue, sub)  # what SLURM says of jobs that ended without one
                    runs.harvest()
                    break
            time.sleep(poll_s)
        if not executors.wait_done(sub, queue):
            print("warning: jobs of this submission are still running; the summary may count their "
                  "runs as running", file=sys.stderr)
        for rid, st in runs.pending.items():
            runs.reporter.finished(rid, st.cfg, rundir.read_result(st.dir).data)
    finally:
        runs.reporter.close()


def _signature(path: Path) -> tuple | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_ino, st.st_size, st.st_mtime_ns


def _reap_pending(pending: dict[str, RunState], queue: Queue, sub: Submission) -> None:
    """Runs still without a result once no job is left: what SLURM says of their jobs (reaper)."""
    if sub.kind != "slurm" or not pending:
        return
    def alive(info: dict | None) -> bool:
        return executors.job_alive(info, queue)

    reaper.reap([rundir.run_state(rid, st.cfg, st.dir, alive) for rid, st in pending.items()], alive)


def final_report(suite, root: Path, t_start: float) -> int:
    states = plan(suite, root)
    summary = suite_summary.summarize(states)
    print(f"{suite.name}: {summary.line()} ({time.time() - t_start:.1f} s) -> {root}")
    for line in suite_summary.problems(states):
        print(line)
    return EXIT_OK if summary.finished else EXIT_FAIL


# --- status -------------------------------------------------------------------------------------

RUN_ID_RE = re.compile(r"^[0-9a-f]{12}$")


def _is_run_dir(d: os.DirEntry | Path) -> bool:
    """A run folder: named by a run id, or holding a run's files (not figures/, .submitit/, ...)."""
    return d.is_dir() and not d.name.startswith(".") and (
        bool(RUN_ID_RE.match(d.name)) or os.path.exists(os.path.join(d, "config.json"))
        or os.path.exists(os.path.join(d, "result.json")))


def _real(d: os.DirEntry, folder_real: str) -> str:
    """Where a folder entry really is (symbolic links resolved; others cheaply)."""
    return os.path.realpath(d.path) if d.is_symlink() else os.path.join(folder_real, d.name)


def _entries(folder: Path) -> list[os.DirEntry]:
    with os.scandir(folder) as it:
        return sorted(it, key=lambda e: e.name)


def _run_dirs(folder: Path) -> list[str]:
    """The names of the run folders in a suite folder, symbolic links followed, each real folder once."""
    seen, out, folder_real = set(), [], os.path.realpath(folder)
    for d in _entries(folder):
        if _is_run_dir(d):
            real = _real(d, folder_real)
            if real not in seen:
                seen.add(real)
                out.append(d.name)
    return out


def suite_folders(target: Path) -> list[Path]:
    """``target`` if it holds run folders, else its sub-folders that do (links followed once)."""
    if any(_is_run_dir(d) for d in _entries(target)):
        return [target]
    seen, out, target_real = set(), [], os.path.realpath(target)
    for d in _entries(target):
        if d.is_dir() and not d.name.startswith(".") and any(_is_run_dir(r) for r in _entries(Path(d.path))):
            real = _real(d, target_real)
            if real not in seen:
                seen.add(real)
                out.append(Path(d.path))
    return out


def status_groups(target: Path, out: Path, cache: bool = False) -> list[tuple[str, Path, list[RunState]]]:
    """``(suite name, its folder, run states)`` for a suite file or a results folder (``cache``:
    the suite's expansion may come from bench.orchestration.suite_cache)."""
    queue = Queue()

    def alive(info: dict | None) -> bool:
        return executors.job_alive(info, queue)

    if target.is_file():
        from bench.orchestration.suite import load_suite

        suite = load_suite(target, cache=cache)
        return [(suite.name, Path(out) / suite.name, plan(suite, Path(out) / suite.name, queue))]
    if not target.is_dir():
        raise InvalidInput(f"{target}: no such suite file or results folder")
    groups = [(d.name, d, rundir.run_states(d, [(name, {}) for name in _run_dirs(d)], alive))
              for d in suite_folders(target)]
    for _, _, states in groups:
        reaper.reap(states, alive)
    if not groups:
        raise InvalidInput(f"{target}: no run folders found (expected <out>/<suite>/<run_id>/)")
    return groups


def status_lines(groups: list[tuple[str, Path, list[RunState]]]) -> list[str]:
    """One summary line per suite, then what failed and why."""
    lines = []
    for name, root, states in groups:
        lines.append(f"{name}: {suite_summary.summarize(states).line()}  ({root})")
        lines += suite_summary.problems([s for s in states if s.state in ("failed", "corrupt")], details=True)
    return lines


def print_status(target: Path, out: Path, cache: bool = False) -> int:
    """``sambench status``: one summary line per suite, then what failed and why."""
    for line in status_lines(status_groups(Path(target), Path(out), cache)):
        print(line)
    return EXIT_OK


def watch_status(target: Path, out: Path, every: float = 2.0, cache: bool = False, stream=None) -> int:
    """``sambench status --watch``: the status again every ``every`` seconds until no run is running
    (Ctrl-C stops it sooner: KeyboardInterrupt, exit 130). On a terminal the screen is redrawn;
    elsewhere the lines are printed again, with the time, whenever they change."""
    from bench.console import is_terminal

    stream = sys.stdout if stream is None else stream
    redraw, shown = is_terminal(stream), None
    while True:
        groups = status_groups(Path(target), Path(out), cache)
        lines = status_lines(groups)
        running = sum(st.state == "running" for _, _, states in groups for st in states)
        now = time.strftime("%H:%M:%S")
        if redraw:
            footer = (f"{now}  every {every:g} s until no run is running; Ctrl-C stops" if running
                      else f"{now}  no run is running")
            stream.write("\x1b[H\x1b[2J" + "\n".join(lines + ["", footer]) + "\n")
            stream.flush()
        elif lines != shown:
            print(f"[{now}]", *lines, sep="\n", file=stream, flush=True)
        shown = lines
        if not running:
            return EXIT_OK
        time.sleep(every)
