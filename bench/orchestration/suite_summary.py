"""What the user reads about a suite: one summary of run states, the problems, the dry-run table,
one line per finished run while waiting."""
from __future__ import annotations

import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from bench import config
from bench.rundir import FINAL, STATES, RunState, read_job

_LABELS = {"done": "done", "diverged": "diverged", "failed": "failed", "corrupt": "corrupt",
           "resume": "to resume", "new": "new", "running": "running"}


@dataclass
class Summary:
    """How many runs are in each state (rundir.STATES)."""

    counts: dict[str, int]

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    @property
    def finished(self) -> bool:
        return self.counts["done"] + self.counts["diverged"] == self.total

    def line(self) -> str:
        """``4 runs: 3 done, 0 diverged, 1 failed, 0 corrupt, 0 to resume, 0 new, 0 running``."""
        return f"{self.total} runs: " + ", ".join(f"{self.counts[s]} {_LABELS[s]}" for s in STATES)


def summarize(states: list[RunState]) -> Summary:
    """The one status summary (sambench run before and after, sambench status)."""
    counts = dict.fromkeys(STATES, 0)
    for st in states:
        counts[st.state] += 1
    return Summary(counts)


def problems(states: list[RunState], details: bool = False) -> list[str]:
    """Lines for every run that is not finished: failed (error; with ``details`` the traceback
    tail and the job log's tail), corrupt (what happens to it), unfinished."""
    lines = []
    for st in states:
        if st.state in FINAL:
            continue
        data = (st.result.data if st.result is not None else None) or {}
        if st.state == "failed":
            lines.append(f"  failed {st.rid}: {data.get('error')}")
            if details:
                tb = [ln for ln in str(data.get("traceback", "")).splitlines() if ln.strip()][-3:]
                lines += [f"    | {ln}" for ln in tb]
                lines += [f"    > {ln}" for ln in log_tail(st.dir, st.rid)]
        elif st.state == "corrupt":
            lines.append(f"  corrupt {st.rid}: result.json {st.result.problem}; the next `sambench run` keeps "
                         f"it as result.json.corrupt and trains the run again")
        else:
            lines.append(f"  unfinished {st.rid} ({_LABELS[st.state]})"
                         + (f": {config.describe(st.cfg)}" if st.cfg else ""))
    return lines


def log_tail(run_dir: Path, rid: str, n: int = 5) -> list[str]:
    """The last lines of the job log that trained a run (its stderr first)."""
    info = read_job(run_dir) or {}
    jobs = info.get("jobs") or []
    for job in jobs:
        for key in ("stderr", "stdout"):
            path = Path(job.get(key, ""))
            if not path.is_file():
                continue
            try:
                lines = path.read_text(errors="replace").splitlines()
            except OSError:
                continue
            if len(jobs) > 1 and not any(rid in ln for ln in lines):
                continue
            tail = [ln for ln in lines if ln.strip()][-n:]
            if tail:
                return [f"{path}:"] + tail
    return []


def _options(opts: dict) -> str:
    """``(num_samples=256,update_every=5)`` for an option map, ``""`` for an empty one."""
    text = ",".join(f"{k}={v}" for k, v in sorted(opts.items()))
    return f"({text})" if text else ""


def table(states: list[RunState], resolved_sparsity: dict[str, float]) -> str:
    """The dry run's table: one row per run."""
    rows = [("id", "dataset", "model", "base", "variant", "mask", "sparsity", "rho", "seed", "state")]
    for st in states:
        cfg = st.cfg
        baseline = config.is_baseline(cfg)
        variant = cfg["variant"] + _options(cfg["variant_opts"])
        sp = cfg["sparsity"]
        if baseline or sp is None:
            sparsity = "-"
        elif st.rid in resolved_sparsity:
            sparsity = f"{sp}={resolved_sparsity[st.rid]:.4f}"
        else:
            sparsity = str(sp)
        rows.append((st.rid, cfg["dataset"], cfg["model"], cfg["base"]["name"], variant, "-" if baseline else cfg["mask"] + _options(cfg["mask_opts"]), sparsity,
                     "-" if baseline else f"{cfg['rho']:g}", str(cfg["seed"]), st.state))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(v.ljust(w) for v, w in zip(r, widths)).rstrip() for r in rows)


class Reporter:
    """While ``sambench run`` waits: one line per finished run, printed for good (all that pipes and
    logs get, each with the ETA), and on a terminal a live line under them::

        runs: 5/21 finished (4 done, 1 failed), 2 running, 14 pending  ETA ~1:20

    The ETA is the mean wall time of the runs finished so far, times the runs left, over the most
    runs seen training at once (the workers); rough when the runs differ in length."""

    def __init__(self, total: int, stream=None, count_every: float | None = None):
        from bench.console import LiveLine

        self.total, self.n, self.failed, self.running, self.slots = total, 0, 0, 0, 1
        self.durations: list[float] = []
        self._counted_at = float("-inf")
        self.live = LiveLine(sys.stdout if stream is None else stream, interval=0.5)
        self.count_every = count_every if count_every is not None else 0.5 if self.live.enabled else 5.0

    def finished(self, rid: str, cfg: dict, result: dict | None) -> None:
        self.n += 1
        status = (result or {}).get("status", "unfinished")
        if status in FINAL and result.get("test_acc") is not None:
            what = f"{status:<8} test acc {result['test_acc']:6.2f}%  {result.get('wall_time_s', 0):6.1f}s"
        elif status == "failed":
            what = f"failed   {str(result.get('error', ''))[:80]}"
        else:
            what = f"{status:<8}"
        if status in FINAL and isinstance(result.get("wall_time_s"), (int, float)):
            self.durations.append(float(result["wall_time_s"]))
        self.failed += status not in FINAL
        self.running = max(0, self.running - 1)
        line = f"[{self.n}/{self.total}] {rid}  {what}  {config.describe(cfg)}"
        if not self.live.enabled and self.n < self.total:
            line += f"  (ETA {self._eta()})"
        self.live.print(line, then=self._status())

    def update(self, count_running: Callable[[], int]) -> None:
        """Called while waiting: ``count_running()`` says how many of the runs not finished yet
        train now (it reads every run's lock, so it is called at most every ``count_every`` seconds:
        0.5 on a terminal, 5 otherwise)."""
        now = time.monotonic()
        if now - self._counted_at < self.count_every:
            return
        self._counted_at = now
        self.running = count_running()
        self.slots = max(self.slots, self.running)
        self._draw()

    def eta_s(self) -> float | None:
        """Seconds until every run is finished, roughly; None before any run finished."""
        left = self.total - self.n
        if not left:
            return 0.0
        if not self.durations:
            return None
        return sum(self.durations) / len(self.durations) * left / self.slots

    def _eta(self) -> str:
        from bench.console import duration

        eta = self.eta_s()
        return "after the first run" if eta is None else f"~{duration(eta)}"

    def _status(self) -> str:
        """The live line's text ('' once every run is finished)."""
        if self.n >= self.total:
            return ""
        done, pending = self.n - self.failed, max(0, self.total - self.n - self.running)
        return (f"runs: {self.n}/{self.total} finished ({done} done, {self.failed} failed), "
                f"{self.running} running, {pending} pending  ETA {self._eta()}")

    def _draw(self) -> None:
        if self.live.enabled and self.n < self.total:
            self.live.show(self._status())

    def close(self) -> None:
        self.live.clear()
