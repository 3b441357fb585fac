"""Suites of 100,000 runs (issue 21), on small folders: what each cache keeps, that a command
reads only what changed, and that the answer is the one a full read gives.

- the cache of validated suites stores one config per grid point (pack/unpack), exactly;
- status keeps the status of finished runs keyed by (inode, size, mtime in ns) of result.json;
- collect's results index (analysis/index.py) re-reads only changed runs and gives the frame a
  collect from the files gives (dtypes, column order, skipped files), when runs change, go, or come.

No torch, no training (analysis_fixtures writes the files). The timings at 1,000 / 10,000 / 100,000
runs: ``sambench perf --orchestration`` (tests/test_suite_cache.py runs it at 100).
"""
from __future__ import annotations

import json
import os
import shutil
import warnings

import pandas as pd
import pytest
from analysis_fixtures import make_results

import analysis
from analysis import index, loading
from bench import io, rundir
from bench.cli import app as cli
from bench.orchestration import suite_cache
from bench.orchestration.suite import load_suite


def test_the_suite_cache_keeps_one_config_per_grid_point(write_file):
    s = load_suite(write_file("s.yaml", "name: s\ndefaults: {dataset: digits, model: resnet_ci, epochs: 1}\n"
                                        "grid: {rho: [1, 1.0, 0.5], mask: [all, norm_only]}\nseeds: [0, 1, 2, 3]\n"))
    expansion = {"runs": s.runs, "run_ids": s.run_ids, "resolved_sparsity": s.resolved_sparsity,
                 "variant_defaults": s.variant_defaults}
    packed = suite_cache.pack(expansion)
    assert len(packed["runs"]) == len(s.runs) and len(packed["configs"]) == len(s.runs) // 4  # 4 seeds a point
    back = suite_cache.unpack(json.loads(json.dumps(packed)))
    assert back == expansion
    assert [json.dumps(r, sort_keys=True) for r in back["runs"]] == [json.dumps(r, sort_keys=True) for r in s.runs]
    back["runs"][0]["base"]["lr"] = 99.0  # every run its own copy
    assert back["runs"][1]["base"]["lr"] != 99.0


def test_status_reads_a_finished_result_once(tmp_path, capsys):
    root = make_results(tmp_path / "res") / "s1"
    for path in root.glob("*/result.json"):  # finished a while ago (a result younger than 2 s is not kept yet)
        os.utime(path, (path.stat().st_mtime - 60, path.stat().st_mtime - 60))
    assert cli.main(["status", str(root)]) == 0
    first = capsys.readouterr().out
    cache = io.read_json(root / rundir.ResultCache.NAME)["entries"]
    finished = [name for name, entry in cache.items() if entry[3]["status"] in ("done", "diverged")]
    assert finished and set(cache) == set(finished)
    # the same bytes count, the same inode and time: taken from the cache, the file is not read
    victim = root / finished[0] / "result.json"
    st = victim.stat()
    with open(victim, "r+b") as f:
        f.write(b"x" * st.st_size)
    os.utime(victim, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert cli.main(["status", str(root)]) == 0
    assert capsys.readouterr().out == first
    os.utime(victim)  # any other time (older, newer): read again
    assert cli.main(["status", str(root)]) == 0
    assert f"corrupt {finished[0]}: result.json" in capsys.readouterr().out


def _plain(folder):
    os.environ["SAMBENCH_NO_INDEX"] = "1"
    try:
        return analysis.collect(folder)
    finally:
        del os.environ["SAMBENCH_NO_INDEX"]


def _same(a: pd.DataFrame, b: pd.DataFrame) -> None:
    pd.testing.assert_frame_equal(a, b, check_dtype=True)
    assert a.attrs["config_columns"] == b.attrs["config_columns"] and a.attrs["skipped"] == b.attrs["skipped"]


@pytest.mark.filterwarnings("ignore:analysis.collect")
def test_collect_reads_only_changed_runs_and_gives_what_a_full_read_gives(tmp_path, monkeypatch):
    root = make_results(tmp_path / "res")
    reads: list[str] = []
    real = loading._load_run

    def counted(run_dir, skipped):
        reads.append(run_dir.name)
        return real(run_dir, skipped)

    monkeypatch.setattr(loading, "_load_run", counted)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        whole = _plain(root)
    n = len(reads)
    assert n > len(whole)  # (some runs' files are unreadable: skipped, listed)
    reads.clear()
    _same(whole, analysis.collect(root))  # builds the index of each suite folder
    assert len(reads) == n and (root / "s1" / index.NAME).is_file()
    reads.clear()
    _same(whole, analysis.collect(root))
    assert reads == []  # nothing changed: nothing read
    for suite in ("s1", "adhoc"):  # labels for one suite alone: reused rows, labelled again, then as stored
        _same(_plain(root / suite), analysis.collect(root / suite))
        reads.clear()
        _same(_plain(root / suite), analysis.collect(root / suite))
    reads.clear()
    s1 = sorted(d for d in (root / "s1").iterdir() if (d / "result.json").is_file())
    doc = io.read_json(s1[0] / "result.json")
    io.write_json(s1[0] / "result.json", {**doc, "test_acc": 12.5})  # a run changed
    shutil.rmtree(s1[1])                                              # one gone
    shutil.copytree(s1[2], root / "s1" / "aaaa00000000")              # one new (a copy, another folder)
    got = analysis.collect(root / "s1")
    assert sorted(reads) == sorted([s1[0].name, "aaaa00000000"])
    reads.clear()
    _same(_plain(root / "s1"), got)
    assert 12.5 in set(got["test_acc"]) and str(s1[1]) not in set(got["path"])
    moved = tmp_path / "moved"
    shutil.move(str(root / "s1"), moved)  # a moved folder: the index follows, the paths are the new ones
    reads.clear()
    again = analysis.collect(moved)
    assert reads == [] and all(p.startswith(str(moved)) for p in again["path"])
    _same(_plain(moved), again)
