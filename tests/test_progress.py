"""Progress people see: `sambench train`'s live line on a terminal (a real pseudo-terminal) and
nothing in pipes; `sambench run`'s suite line (done/running/failed/pending, ETA) and its plain
lines; `sambench status --watch` until no run is running, and Ctrl-C (exit 130)."""
import io
import json
import os
import pty
import signal
import subprocess
import sys
import threading
import time

import pytest

from bench import config, rundir
from bench.console import LiveLine, duration
from bench.engine import train
from bench.orchestration import runner
from bench.orchestration.suite_summary import Reporter

RUN = {"dataset": "synthetic", "model": "resnet_ci", "epochs": 2, "batch_size": 128, "variant": "sam",
       "mask": "norm_only", "rho": 0.5, "device": "cpu", "logging": {"tensorboard": False}}


class Terminal:
    """A pseudo-terminal: ``stream`` (its slave end, a text file) is a tty; what was written to it
    is read from the master end by a thread (so the writer never blocks on a full buffer)."""

    def __init__(self):
        self.master, slave = pty.openpty()
        self.stream = open(slave, "w", buffering=1, closefd=True)
        self.chunks: list[bytes] = []
        self.reader = threading.Thread(target=self._drain, daemon=True)
        self.reader.start()

    def _drain(self):
        while True:
            try:
                data = os.read(self.master, 4096)
            except OSError:
                return
            if not data:
                return
            self.chunks.append(data)

    def text(self) -> str:
        self.stream.flush()
        time.sleep(0.2)
        return b"".join(self.chunks).decode(errors="replace")

    def close(self):
        self.stream.close()
        os.close(self.master)


@pytest.fixture
def terminal():
    t = Terminal()
    yield t
    t.close()


def test_duration_format():
    assert [duration(s) for s in (None, float("nan"), 0, 42.4, 187, 3723)] == ["?", "?", "0s", "42s", "3:07", "1:02:03"]


def test_train_live_line_on_a_terminal_and_silent_in_a_pipe(terminal, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(sys, "stderr", terminal.stream)
    train.run(RUN, tmp_path / "tty")
    shown = terminal.text()
    first = shown.split("\r")[1]  # the first drawing of the line, after its carriage return
    rid = config.run_id(config.resolve(RUN))
    assert first.startswith(f"{rid} epoch 1/2 step 1/") and " loss " in first and " acc " in first
    assert " it/s  ETA " in first and first.endswith("\x1b[K")
    assert f"{rid} epoch 2/2 step " in shown and shown.rstrip().endswith("\r\x1b[K")  # erased at the end
    out = capsys.readouterr().out
    assert f"[{rid}] epoch 1/2  train loss" in out and f"[{rid}] epoch 2/2  train loss" in out  # the log lines stay

    read_fd, write_fd = os.pipe()
    pipe = open(write_fd, "w")
    monkeypatch.setattr(sys, "stderr", pipe)
    train.run({**RUN, "epochs": 1}, tmp_path / "pipe")
    pipe.close()
    with open(read_fd) as f:
        assert f.read() == ""  # nothing but the log lines, which go to stdout
    assert "epoch 1/1  train loss" in capsys.readouterr().out


def _result(status="done", acc=90.0, wall=10.0):
    return {"status": status, "test_acc": acc, "wall_time_s": wall} if status != "failed" else \
        {"status": "failed", "error": "RuntimeError: boom"}


CFG = {"dataset": "digits", "model": "resnet_ci", "variant": "sam", "mask": "all", "rho": 0.1, "seed": 0,
       "base": {"name": "sgd"}, "sparsity": None, "variant_opts": {}, "mask_opts": {}}


def test_suite_reporter_live_line_on_a_terminal(terminal):
    rep = Reporter(6, stream=terminal.stream, count_every=0)
    rep.update(lambda: 2)
    rep.finished("aaaaaaaaaaaa", CFG, _result(wall=10.0))
    rep.update(lambda: 2)
    rep.finished("bbbbbbbbbbbb", CFG, _result("failed"))
    rep.finished("cccccccccccc", CFG, _result(wall=20.0))
    assert rep.eta_s() == pytest.approx(15.0 * 3 / 2)  # mean of the finished runs x runs left / workers
    rep.close()
    shown = terminal.text()
    assert "runs: 0/6 finished (0 done, 0 failed), 2 running, 4 pending  ETA after the first run" in shown
    assert "runs: 2/6 finished (1 done, 1 failed), 1 running, 3 pending  ETA ~20s" in shown
    assert "[1/6] aaaaaaaaaaaa  done     test acc  90.00%" in shown
    assert "[2/6] bbbbbbbbbbbb  failed   RuntimeError: boom" in shown
    assert shown.rstrip().endswith("\r\x1b[K")


def test_suite_reporter_plain_lines_elsewhere():
    out = io.StringIO()
    rep = Reporter(3, stream=out)
    counted = []
    for _ in range(3):  # the locks are read at most every 5 s off a terminal
        rep.update(lambda: counted.append(1) or 1)
    assert counted == [1] and rep.running == 1
    rep.finished("aaaaaaaaaaaa", CFG, _result(wall=30.0))
    rep.finished("bbbbbbbbbbbb", CFG, _result(wall=10.0))
    rep.finished("cccccccccccc", CFG, _result(wall=20.0))
    rep.close()
    lines = out.getvalue().splitlines()
    assert len(lines) == 3 and "\r" not in out.getvalue() and "running" not in out.getvalue()
    assert lines[0].startswith("[1/3] aaaaaaaaaaaa  done") and lines[0].endswith("(ETA ~1:00)")
    assert lines[1].endswith("(ETA ~20s)") and "ETA" not in lines[2]


def _running_run(root):
    d = root / "s" / "0123456789ab"
    d.mkdir(parents=True)
    (d / "config.json").write_text(json.dumps({"run_id": d.name, "config": {}}))
    return d


def test_status_watch_refreshes_until_no_run_is_running(tmp_path):
    d = _running_run(tmp_path)
    out = io.StringIO()
    with rundir.run_lock(d):
        watcher = threading.Thread(target=lambda: out.write(f"rc={runner.watch_status(tmp_path / 's', tmp_path, 0.1, stream=out)}"))
        watcher.start()
        time.sleep(0.5)
        assert watcher.is_alive() and "1 running" in out.getvalue()
        (d / "result.json").write_text(json.dumps({"status": "done", "test_acc": 50.0}))
    watcher.join(10)
    text = out.getvalue()
    assert not watcher.is_alive() and text.endswith("rc=0")
    assert text.count("0123456789ab") == 0 and text.count("s: 1 runs:") == 2  # printed again only when it changed
    assert text.index("s: 1 runs: 0 done") < text.index("s: 1 runs: 1 done")


def test_status_watch_stops_on_ctrl_c_with_130(tmp_path, sambench_env):
    d = _running_run(tmp_path)
    with rundir.run_lock(d):
        proc = subprocess.Popen([sys.executable, "-m", "bench", "status", "--watch", "0.2", str(tmp_path / "s")],
                                env=sambench_env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        first = proc.stdout.readline() + proc.stdout.readline()  # [time] and the summary: it is watching
        proc.send_signal(signal.SIGINT)
        rc = proc.wait(30)
    assert "1 running" in first and rc == 130, (first, proc.stderr.read())


def test_live_line_writes_nothing_off_a_terminal():
    out = io.StringIO()
    line = LiveLine(out)
    line.show("x", force=True)
    line.print("kept")
    line.clear()
    assert out.getvalue() == "kept\n" and not line.enabled
