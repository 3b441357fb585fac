"""Run a suite through submitit (local processes, SLURM job arrays, or in process), and report.

    sambench run SUITE.yaml [--out DIR] [--executor local|slurm|debug|auto] [--max-parallel N]
                            [--dry-run] [--no-wait] [--set key=value ...]
    sambench status SUITE.yaml|DIR [--out DIR]

Results go to ``<out>/<suite>/<run_id>/`` (config.json written at submission; metrics.jsonl,
checkpoint.pt, result.json by :func:`bench.train.run`); submitit's own files (pickles, logs)
to ``<out>/<suite>/.submitit/<job id>/``; each submitted run records its job in ``job.json``.

Resubmitting skips finished runs (done/diverged), retries failed ones, resumes unfinished ones
from their checkpoint, and leaves alone runs that another live process is training (its
``.lock`` is held) or that a live SLURM job recorded in ``job.json`` will train.

The job function (:class:`RunJob`) runs several runs one after another (``slurm.runs_per_job``)
and never lets one crash stop the others. It is ``submitit.helpers.Checkpointable``: on a
timeout or preemption submitit requeues it with the same runs, and each resumes from its
checkpoint.pt (written every epoch); finished ones return at once.

Local executor: ``--max-parallel`` worker processes (default: one per GPU; without GPUs one
per CPU core, at most 8), each pinned to one GPU when there are GPUs and to ``cores // workers``
torch threads (capped by OMP_NUM_THREADS when set). Single-threaded workers are the fastest way
to train many small CPU runs, and they do not collapse when another process takes a core (two
OpenMP threads on a contended core run 5-50x slower). The workers share the run list as a work
queue (each run's lock is its claim), so long and short runs balance out.
"""
from __future__ import annotations

import contextlib
import fcntl
import getpass
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench import io, sharpness
from bench.cli import EXIT_FAIL, EXIT_OK, InvalidInput, parse_set
from bench.reference import write_reference

FINAL = ("done", "diverged")
LOCAL_TIMEOUT_MIN = 7 * 24 * 60       # the local controller kills a job after its timeout
DEFAULT_SLURM_TIMEOUT_MIN = 60        # submitit's own default (5 min) is too short for training
MAX_CPU_WORKERS = 8                   # default local workers without GPUs: one per core, <= 8
MAX_ARRAY = 1000                      # tasks per SLURM job array
LOCK_RETRIES = 3                      # a non-blocking lock probe (status, resubmission) can
LOCK_RETRY_S = 0.3                    # collide with a job taking the lock: retry briefly


# --- run folders ---------------------------------------------------------------------------------

def lock_held(run_dir: Path) -> bool:
    """Whether another live process holds the run's ``.lock`` (probe without creating it)."""
    path = run_dir / ".lock"
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        return False
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    except OSError:
        return False
    finally:
        os.close(fd)  # closing releases our probe lock at once
    return False


def read_result(run_dir: Path) -> dict | None:
    try:
        return io.read_json(run_dir / "result.json")
    except FileNotFoundError:
        return None
    except (OSError, ValueError):
        return {"status": "failed", "error": "result.json is unreadable"}


def read_job(run_dir: Path) -> dict | None:
    try:
        info = io.read_json(run_dir / "job.json")
        return info if isinstance(info, dict) else None
    except (OSError, ValueError):
        return None


class Queue:
    """Which SLURM jobs are alive (pending, running, requeued...), from one squeue call."""

    def __init__(self) -> None:
        self._ids: set[str] | None = None
        self._at = 0.0

    def alive_ids(self, max_age: float = 2.0) -> set[str] | None:
        if self._ids is not None and time.time() - self._at < max_age:
            return self._ids
        self._ids = squeue_ids()
        self._at = time.time()
        return self._ids


def squeue_ids() -> set[str] | None:
    """Ids (``123`` and ``123_4`` for array tasks) of this user's jobs still in the queue."""
    if shutil.which("squeue") is None:
        return None
    try:
        out = subprocess.run(["squeue", "-h", "-r", "-u", getpass.getuser(), "-o", "%i %A %T"],
                             capture_output=True, text=True, timeout=20, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return None
    if out.returncode != 0:
        return None
    ids = set()
    for line in out.stdout.splitlines():
        parts = line.split()
        if len(parts) >= 2:
            ids.update(parts[:2])
    return ids


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return b"submitit" in f.read()
    except OSError:
        return True


def job_alive(info: dict | None, queue: Queue) -> bool:
    """Whether the job recorded in a run's job.json may still train it."""
    if not info:
        return False
    jobs = info.get("jobs") or []
    if info.get("executor") == "slurm":
        alive = queue.alive_ids()
        return bool(alive) and any(str(j.get("job_id")) in alive for j in jobs)
    if info.get("executor") == "local" and info.get("host") == socket.gethostname():
        return any(_pid_alive(int(j["job_id"])) for j in jobs if str(j.get("job_id", "")).isdigit())
    return False


@dataclass
class RunState:
    rid: str
    cfg: dict
    dir: Path
    state: str          # done | diverged | failed | resume | new | running
    result: dict | None = None


def run_state(rid: str, cfg: dict, run_dir: Path, queue: Queue) -> RunState:
    if not run_dir.is_dir():
        return RunState(rid, cfg, run_dir, "new")
    result = read_result(run_dir)
    if result is not None and result.get("status") in FINAL and not sharpness.pending(cfg, result):
        return RunState(rid, cfg, run_dir, result["status"], result)
    if lock_held(run_dir) or job_alive(read_job(run_dir), queue):
        return RunState(rid, cfg, run_dir, "running", result)
    if result is not None and result.get("status") in FINAL:  # trained; its sharpness still to measure
        return RunState(rid, cfg, run_dir, "resume", result)
    if result is not None:
        return RunState(rid, cfg, run_dir, "failed", result)
    if (run_dir / "checkpoint.pt").exists() or io.read_jsonl(run_dir / "metrics.jsonl"):
        return RunState(rid, cfg, run_dir, "resume")
    return RunState(rid, cfg, run_dir, "new")


def scan(suite, root: Path, queue: Queue | None = None) -> list[RunState]:
    queue = queue or Queue()
    return [run_state(rid, cfg, root / rid, queue) for rid, cfg in suite.items()]


def count_line(states: list[RunState], submitting: int | None = None) -> str:
    c = _counts(states)
    text = (f"{len(states)} runs: {c['done']} done, {c['diverged']} diverged, {c['resume']} to resume, "
            f"{c['failed']} failed (retry), {c['new']} new, {c['running']} running elsewhere")
    if submitting is not None:
        text += f" -> submitting {submitting}"
    return text


def _counts(states: list[RunState]) -> dict[str, int]:
    c = dict.fromkeys(["done", "diverged", "resume", "failed", "new", "running"], 0)
    for s in states:
        c[s.state] += 1
    return c


# --- the job function ------------------------------------------------------------------------------

def _describe(cfg: dict) -> str:
    if cfg["variant"] == "none":
        what = f"{cfg['base']['name']} (no SAM)"
    else:
        opts = ",".join(f"{k}={v}" for k, v in sorted(cfg["variant_opts"].items()))
        sp = "" if cfg["sparsity"] is None else f" sparsity={cfg['sparsity']}"
        what = f"{cfg['variant']}{f'({opts})' if opts else ''} mask={cfg['mask']}{sp} rho={cfg['rho']}"
    return f"{cfg['dataset']}/{cfg['model']} {what} seed={cfg['seed']}"


try:
    from submitit.helpers import Checkpointable as _Checkpointable
except ImportError:  # bench.train stays usable without submitit (e.g. on the GPU machine)
    class _Checkpointable:  # type: ignore[no-redef]
        pass


class RunJob(_Checkpointable):
    """The job function: train the given run folders one after another.

    ``run_dirs`` are folders holding a config.json (written at submission). ``not_before``
    (a time.time() taken before submission) makes a run whose result.json was written after
    it count as handled (by this job before a requeue, or by another worker). ``worker=(k, n)``
    turns the list into a work queue shared by n workers: worker k first takes runs k, k+n,
    ..., then steals the others from the end; a run's lock is its claim.
    Returns one ``{"run_id", "status", "error"}`` per run.
    """

    def __call__(self, run_dirs: list[str], suite: str | None = None, threads: int | None = None,
                 not_before: float | None = None, worker: tuple[int, int] | None = None) -> list[dict]:
        if threads:
            import torch

            torch.set_num_threads(int(threads))
        dirs = [Path(d) for d in run_dirs]
        if worker is None:
            order = [(d, True) for d in dirs]
        else:
            k, n = worker
            own = dirs[k::n]
            owned = set(own)
            order = [(d, True) for d in own] + [(d, False) for d in reversed(dirs) if d not in owned]
        outcomes = []
        for i, (run_dir, mine) in enumerate(order):
            outcome = self.run_one(run_dir, suite, not_before, retry_locked=mine,
                                   label=f"{i + 1}/{len(order)}")
            if outcome is not None:
                outcomes.append(outcome)
        return outcomes

    @staticmethod
    def run_one(run_dir: Path, suite: str | None, not_before: float | None, retry_locked: bool = True,
                label: str = "") -> dict | None:
        from bench import train

        result_path = run_dir / "result.json"
        try:
            if not_before is not None and result_path.stat().st_mtime >= not_before:
                return None  # already handled in this submission
        except FileNotFoundError:
            pass
        rid = run_dir.name
        try:
            doc = io.read_json(run_dir / "config.json")
            cfg = doc["config"]
            rid = doc.get("run_id", rid)
        except Exception as exc:  # noqa: BLE001
            return _record_failure(run_dir, rid, exc)
        print(f"[sambench] {label} run {rid}: {_describe(cfg)}", flush=True)
        for attempt in range(LOCK_RETRIES if retry_locked else 1):
            try:
                result = train.run(cfg, run_dir, suite=suite, progress=False)
                print(f"[sambench] run {rid}: {result['status']}", flush=True)
                return {"run_id": rid, "status": result["status"], "error": result.get("error")}
            except train.RunLocked:
                if attempt + 1 < (LOCK_RETRIES if retry_locked else 1):
                    time.sleep(LOCK_RETRY_S)
                    continue
                print(f"[sambench] run {rid}: locked by another process, left to it", flush=True)
                return {"run_id": rid, "status": "locked", "error": None}
            except Exception as exc:  # noqa: BLE001 -- one crash never blocks the other runs
                print(f"[sambench] run {rid} failed: {type(exc).__name__}: {exc}", file=sys.stderr, flush=True)
                traceback.print_exc()
                sys.stderr.flush()
                return _record_failure(run_dir, rid, exc)
        return None

    def checkpoint(self, *args: Any, **kwargs: Any):
        """Preempted or timed out: requeue the same runs; each resumes from its checkpoint.pt."""
        from submitit.helpers import DelayedSubmission

        print("[sambench] checkpoint: requeueing; runs resume from their last epoch", flush=True)
        return DelayedSubmission(self, *args, **kwargs)


def _record_failure(run_dir: Path, rid: str, exc: BaseException) -> dict:
    """A failure before train.run could record it (e.g. an unreadable config.json)."""
    from bench import train

    error = f"{type(exc).__name__}: {exc}"
    try:
        with train.run_lock(run_dir):
            if not (run_dir / "result.json").exists():
                io.write_json(run_dir / "result.json", {
                    "status": "failed", "run_id": rid, "error": error,
                    "traceback": traceback.format_exc()[-4000:]})
    except Exception as exc2:  # noqa: BLE001 -- locked by someone else, or the folder is gone
        print(f"[sambench] run {rid}: could not record the failure ({exc2})", file=sys.stderr, flush=True)
    return {"run_id": rid, "status": "failed", "error": error}


# --- executors ---------------------------------------------------------------------------------

def slurm_up() -> bool:
    """Whether a SLURM controller answers (``scontrol ping`` says UP)."""
    if shutil.which("scontrol") is None:
        return False
    try:
        out = subprocess.run(["scontrol", "ping"], capture_output=True, text=True, timeout=10, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return out.returncode == 0 and "is UP" in out.stdout


def cpu_count() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def gpu_count() -> int:
    try:
        import torch

        return torch.cuda.device_count()
    except Exception:  # noqa: BLE001
        return 0


@dataclass
class Submission:
    kind: str
    jobs: list = field(default_factory=list)          # submitit jobs
    runs_of_job: list[list[str]] = field(default_factory=list)  # run ids per job


def submit(kind: str, suite, root: Path, states: list[RunState], not_before: float,
           max_parallel: int | None) -> Submission:
    import submitit

    folder = root / ".submitit"
    dirs = [str(s.dir.resolve()) for s in states]
    rids = [s.rid for s in states]
    sub = Submission(kind)
    job_fn = RunJob()
    name = f"sambench-{suite.name}"
    if kind == "debug":
        ex = submitit.AutoExecutor(folder=folder, cluster="debug")
        ex.update_parameters(name=name)
        for d, rid in zip(dirs, rids):
            sub.jobs.append(ex.submit(job_fn, [d], suite.name, None, not_before, None))
            sub.runs_of_job.append([rid])
    elif kind == "local":
        n_gpus = gpu_count()
        parallel = max_parallel or (n_gpus if n_gpus else min(cpu_count(), MAX_CPU_WORKERS))
        parallel = max(1, min(parallel, len(dirs)))
        threads = max(1, cpu_count() // parallel)
        if os.environ.get("OMP_NUM_THREADS", "").isdigit() and int(os.environ["OMP_NUM_THREADS"]) > 0:
            threads = min(threads, int(os.environ["OMP_NUM_THREADS"]))  # an explicit cap wins
        ex = submitit.LocalExecutor(folder=folder)
        for k in range(parallel):
            params: dict[str, Any] = {"timeout_min": LOCAL_TIMEOUT_MIN}
            if n_gpus:
                params.update(gpus_per_node=1, visible_gpus=(k % n_gpus,))
            ex.update_parameters(**params)
            sub.jobs.append(ex.submit(job_fn, dirs, suite.name, threads, not_before, (k, parallel)))
            sub.runs_of_job.append(rids)
        print(f"local: {parallel} worker process(es), {threads} thread(s) each"
              + (f", one GPU each ({n_gpus} visible)" if n_gpus else ""), flush=True)
    elif kind == "slurm":
        s = suite.slurm
        ex = submitit.AutoExecutor(folder=folder, cluster="slurm")
        params = {
            "name": name,
            "timeout_min": s.get("timeout_min", DEFAULT_SLURM_TIMEOUT_MIN),
            "gpus_per_node": s.get("gpus_per_node"),
            "cpus_per_task": s.get("cpus_per_task"),
            "mem_gb": s.get("mem_gb"),
            "tasks_per_node": 1,
            "slurm_partition": s.get("partition"),
            "slurm_account": s.get("account"),
            "slurm_qos": s.get("qos"),
            "slurm_constraint": s.get("constraint"),
            "slurm_array_parallelism": max_parallel or s.get("array_parallelism"),
            "slurm_additional_parameters": s.get("additional_parameters"),
        }
        ex.update_parameters(**{k: v for k, v in params.items() if v is not None})
        per_job = s.get("runs_per_job", 1)
        threads = s.get("cpus_per_task")
        chunks = [(dirs[i:i + per_job], rids[i:i + per_job]) for i in range(0, len(dirs), per_job)]
        for start in range(0, len(chunks), MAX_ARRAY):  # SLURM's default MaxArraySize is 1001
            with ex.batch():
                for d, _ in chunks[start:start + MAX_ARRAY]:
                    sub.jobs.append(ex.submit(job_fn, d, suite.name, threads, not_before, None))
        sub.runs_of_job = [r for _, r in chunks]
    else:
        raise ValueError(kind)
    host = socket.gethostname()
    by_run: dict[str, list[dict]] = {}
    for job, run_ids in zip(sub.jobs, sub.runs_of_job):
        entry = {"job_id": str(job.job_id), "stdout": str(job.paths.stdout), "stderr": str(job.paths.stderr)}
        for rid in run_ids:
            by_run.setdefault(rid, []).append(entry)
    now = time.time()
    for st in states:
        io.write_json(st.dir / "job.json", {"executor": kind, "host": host, "submitted_at": now,
                                            "suite": suite.name, "jobs": by_run.get(st.rid, [])})
    return sub


# --- waiting and reporting ---------------------------------------------------------------------

class Reporter:
    """One line per finished run (tqdm on a terminal)."""

    def __init__(self, total: int):
        self.total, self.n = total, 0
        self.bar = None
        if total and sys.stdout.isatty():
            try:
                from tqdm import tqdm

                self.bar = tqdm(total=total, unit="run", desc="runs")
            except ImportError:
                pass

    def finished(self, rid: str, cfg: dict, result: dict | None) -> None:
        self.n += 1
        status = (result or {}).get("status", "unfinished")
        if status in FINAL and result.get("test_acc") is not None:
            what = f"{status:<8} test acc {result['test_acc']:6.2f}%  {result.get('wall_time_s', 0):6.1f}s"
        elif status == "failed":
            what = f"failed   {str(result.get('error', ''))[:80]}"
        else:
            what = f"{status:<8}"
        line = f"[{self.n}/{self.total}] {rid}  {what}  {_describe(cfg)}"
        if self.bar is not None:
            self.bar.write(line)
            self.bar.update(1)
        else:
            print(line, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def wait(sub: Submission, watch: list[RunState], elsewhere: list[RunState], not_before: float,
         poll_s: float = 1.0) -> None:
    """Wait until every watched run has a result, or nothing is left that could produce one."""
    reporter = Reporter(len(watch) + len(elsewhere))
    pending = {s.rid: s for s in watch + elsewhere}
    queue = Queue()

    def finished_result(st: RunState) -> dict | None:
        """A result written during this submission, or a final one (done/diverged)."""
        try:
            fresh = (st.dir / "result.json").stat().st_mtime >= not_before
        except FileNotFoundError:
            return None
        res = read_result(st.dir)
        if res is None or not (fresh or res.get("status") in FINAL) or sharpness.pending(st.cfg, res):
            return None
        return None if lock_held(st.dir) else res

    def harvest() -> None:
        for rid, st in list(pending.items()):
            res = finished_result(st)
            if res is not None:
                reporter.finished(rid, st.cfg, res)
                pending.pop(rid)

    try:
        if sub.kind == "debug":
            for job in sub.jobs:
                job.results()  # runs in this process
                harvest()
        last_check = 0.0
        while pending:
            harvest()
            if not pending:
                break
            if time.time() - last_check >= 3 * poll_s:
                last_check = time.time()
                if not _anyone_working(sub, pending, queue):
                    time.sleep(poll_s)  # a result written just as the job ended
                    harvest()
                    break
            time.sleep(poll_s)
        for rid, st in pending.items():
            reporter.finished(rid, st.cfg, read_result(st.dir) if st.dir.is_dir() else None)
    finally:
        reporter.close()


def _anyone_working(sub: Submission, pending: dict[str, RunState], queue: Queue) -> bool:
    if sub.kind == "local":
        if any(not job.done() for job in sub.jobs):
            return True
    elif sub.kind == "slurm":
        alive = queue.alive_ids(max_age=0)
        if alive is None:  # squeue unreachable: fall back on submitit's own view
            with contextlib.suppress(Exception):
                if any(not job.done() for job in sub.jobs):
                    return True
        elif any(str(job.job_id) in alive for job in sub.jobs):
            return True
    for st in pending.values():  # runs trained by someone else (or by a job we did not start)
        if lock_held(st.dir) or job_alive(read_job(st.dir), queue):
            return True
    return False


def final_report(suite, root: Path, t_start: float) -> int:
    states = scan(suite, root)
    c = _counts(states)
    unfinished = c["resume"] + c["new"] + c["running"]
    print(f"{suite.name}: {len(states)} runs: {c['done']} done, {c['diverged']} diverged, "
          f"{c['failed']} failed, {unfinished} unfinished ({time.time() - t_start:.1f} s) -> {root}")
    for st in states:
        if st.state == "failed":
            print(f"  failed {st.rid}: {(st.result or {}).get('error')}")
        elif st.state not in FINAL:
            print(f"  unfinished {st.rid} ({st.state}): {_describe(st.cfg)}")
    return EXIT_OK if c["done"] + c["diverged"] == len(states) else EXIT_FAIL


# --- dry run table ------------------------------------------------------------------------------

def table(suite, states: list[RunState]) -> str:
    rows = [("id", "dataset", "model", "variant", "mask", "sparsity", "rho", "seed", "state")]
    for st in states:
        cfg = st.cfg
        baseline = cfg["variant"] == "none" or cfg["mask"] == "none"
        opts = ",".join(f"{k}={v}" for k, v in sorted(cfg["variant_opts"].items()))
        variant = cfg["variant"] + (f"({opts})" if opts else "")
        sp = cfg["sparsity"]
        if baseline or sp is None:
            sparsity = "-"
        elif st.rid in suite.resolved_sparsity:
            sparsity = f"{sp}={suite.resolved_sparsity[st.rid]:.4f}"
        else:
            sparsity = str(sp)
        rows.append((st.rid, cfg["dataset"], cfg["model"], variant, "-" if baseline else cfg["mask"], sparsity,
                     "-" if baseline else f"{cfg['rho']:g}", str(cfg["seed"]), st.state))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(v.ljust(w) for v, w in zip(r, widths)).rstrip() for r in rows)


# --- commands ------------------------------------------------------------------------------------

def cmd_run(args) -> int:
    from bench.suite import load_suite

    t_start = time.time()
    if args.max_parallel is not None and args.max_parallel < 1:
        raise InvalidInput(f"--max-parallel: must be >= 1, got {args.max_parallel}")
    suite = load_suite(args.suite, parse_set(args.set))
    root = Path(args.out) / suite.name
    kind = args.executor
    if kind == "auto":
        kind = "slurm" if slurm_up() else "local"
        print(f"executor: {kind} (auto)")
    if kind == "slurm" and not args.dry_run and not slurm_up():
        print("sambench run: error: --executor slurm, but no SLURM controller answers "
              "(`scontrol ping`); start one or use --executor local", file=sys.stderr)
        return EXIT_FAIL

    not_before = time.time()  # before the scan: anything finished after it is this submission's
    states = scan(suite, root)
    todo = [s for s in states if s.state in ("resume", "failed", "new")]
    elsewhere = [s for s in states if s.state == "running"]
    if args.dry_run:
        print(table(suite, states))
        print(count_line(states, len(todo)) + " (dry run: nothing written)")
        return EXIT_OK
    print(f"{suite.name}: " + count_line(states, len(todo)), flush=True)
    write_reference(suite, root)  # the suite's published numbers, for table and plot

    if todo:
        try:
            for st in todo:
                st.dir.mkdir(parents=True, exist_ok=True)
                io.write_json(st.dir / "config.json", {"run_id": st.rid, "suite": suite.name, "config": st.cfg})
        except OSError as exc:
            print(f"sambench run: error: cannot write the run folders under {root}: {exc}", file=sys.stderr)
            return EXIT_FAIL
        try:
            sub = submit(kind, suite, root, todo, not_before, args.max_parallel)
        except Exception as exc:  # noqa: BLE001 -- sbatch refused, submitit error, ...
            print(f"sambench run: error: submission failed: {type(exc).__name__}: {exc}", file=sys.stderr)
            return EXIT_FAIL
        ids = sorted({str(j.job_id) for j in sub.jobs})
        shown = ", ".join(ids[:6]) + (f", ... ({len(ids)} jobs)" if len(ids) > 6 else "")
        what = {"slurm": "SLURM array task(s)", "local": "local worker(s)", "debug": "in-process job(s)"}[kind]
        print(f"submitted {len(todo)} runs as {len(sub.jobs)} {what}: {shown}; logs in {root / '.submitit'}",
              flush=True)
    else:
        sub = Submission(kind)
    if args.no_wait and kind != "debug":
        print(f"not waiting; follow with: sambench status {root}")
        return EXIT_OK
    wait(sub, todo, elsewhere, not_before)
    return final_report(suite, root, t_start)


def _log_tail(run_dir: Path, rid: str, n: int = 5) -> list[str]:
    info = read_job(run_dir) or {}
    for job in info.get("jobs", []):
        for key in ("stderr", "stdout"):
            path = Path(job.get(key, ""))
            if not path.is_file():
                continue
            try:
                lines = path.read_text(errors="replace").splitlines()
            except OSError:
                continue
            if len(info.get("jobs", [])) > 1 and not any(rid in ln for ln in lines):
                continue
            tail = [ln for ln in lines if ln.strip()][-n:]
            if tail:
                return [f"{path}:"] + tail
    return []


def status_counts(rows: list[tuple[str, dict | None, Path]]) -> tuple[dict[str, int], list]:
    """rows: (run id, config or None, run dir) -> counts and the failed ones."""
    queue = Queue()
    counts = dict.fromkeys(["done", "running", "pending", "failed", "diverged"], 0)
    failed = []
    for rid, _cfg, run_dir in rows:
        st = run_state(rid, _cfg or {}, run_dir, queue)
        key = {"resume": "pending", "new": "pending"}.get(st.state, st.state)
        counts[key] += 1
        if key == "failed":
            failed.append((rid, run_dir, st.result or {}))
    return counts, failed


RUN_ID_RE = re.compile(r"^[0-9a-f]{12}$")


def _is_run_dir(d: Path) -> bool:
    """A run folder: named by a run id, or holding a run's files (not figures/, .submitit/, ...)."""
    return d.is_dir() and not d.name.startswith(".") and (
        bool(RUN_ID_RE.match(d.name)) or (d / "config.json").exists() or (d / "result.json").exists())


def _suite_dirs(target: Path) -> list[Path]:
    is_run = _is_run_dir
    if any(is_run(d) for d in target.iterdir()):
        return [target]
    return sorted(d for d in target.iterdir() if d.is_dir() and not d.name.startswith(".")
                  and any(is_run(r) for r in d.iterdir()))


def cmd_status(args) -> int:
    target = Path(args.target)
    groups: list[tuple[str, Path, list[tuple[str, dict | None, Path]]]] = []
    if target.is_file():
        from bench.suite import load_suite

        suite = load_suite(target)
        root = Path(args.out) / suite.name
        groups.append((suite.name, root, [(rid, cfg, root / rid) for rid, cfg in suite.items()]))
    elif target.is_dir():
        for sdir in _suite_dirs(target):
            rows = []
            for d in sorted(sdir.iterdir()):
                if _is_run_dir(d):
                    rows.append((d.name, None, d))
            groups.append((sdir.name, sdir, rows))
        if not groups:
            raise InvalidInput(f"{target}: no run folders found (expected <out>/<suite>/<run_id>/)")
    else:
        raise InvalidInput(f"{target}: no such suite file or results folder")
    for name, root, rows in groups:
        counts, failed = status_counts(rows)
        print(f"{name}: {len(rows)} runs: " + ", ".join(f"{v} {k}" for k, v in counts.items()) + f"  ({root})")
        for rid, run_dir, result in failed:
            print(f"  failed {rid}: {result.get('error')}")
            tb = [ln for ln in str(result.get("traceback", "")).splitlines() if ln.strip()][-3:]
            for ln in tb:
                print(f"    | {ln}")
            for ln in _log_tail(run_dir, rid):
                print(f"    > {ln}")
    return EXIT_OK


def dumps(obj: Any) -> str:  # small helper for tests and debugging
    return json.dumps(obj, indent=2, sort_keys=True, default=str)
