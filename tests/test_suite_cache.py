"""The cache of validated suite expansions (bench.orchestration.suite_cache) and `sambench perf --orchestration`.

Each command runs in its own process, as a user's does (a test process has loaded the
registries and so never uses the cache itself)."""
import json
import subprocess
import sys

from conftest import REPO

from bench.orchestration import suite_cache

SUITE = """
name: cached
defaults: {dataset: digits, model: resnet_ci, epochs: 1, batch_size: 64}
grid:
  mask: [all, norm_only]
  rho: [RHOS]
seeds: [0, 1]
"""
# runs `sambench run SUITE --dry-run` and reports whether torch was imported
DRIVER = ("import sys; from bench.cli.app import main; rc = main(['run', sys.argv[1], '--dry-run', '--out', sys.argv[2]]);"
          "print('TORCH-IMPORTED' if 'torch' in sys.modules else 'NO-TORCH'); sys.exit(rc)")


def dry_run(suite, out, env):
    proc = subprocess.run([sys.executable, "-c", DRIVER, str(suite), str(out)], env=env, cwd=REPO,
                          capture_output=True, text=True, timeout=300, check=False)
    lines = proc.stdout.splitlines()
    return proc.returncode, [ln for ln in lines[:-1] if "s)" not in ln], lines[-1] if lines else "", proc.stderr


def entries(cache):
    return sorted((cache / "suites").glob("*.json")) if (cache / "suites").exists() else []


def test_a_second_dry_run_takes_the_expansion_from_the_cache_without_torch(tmp_path, sambench_env, write_file):
    cache = tmp_path / "cache"
    env = {**sambench_env, "SAMBENCH_CACHE_DIR": str(cache)}
    suite = write_file("s.yaml", SUITE.replace("RHOS", "0.05, 0.1"))
    rc, first, torch_first, err = dry_run(suite, tmp_path / "out", env)
    assert rc == 0, err
    assert torch_first == "TORCH-IMPORTED" and len(entries(cache)) == 1
    rc, second, torch_second, err = dry_run(suite, tmp_path / "out", env)
    assert rc == 0, err
    assert torch_second == "NO-TORCH"            # models and masks were not built again
    assert second == first and len(entries(cache)) == 1
    assert sum("resnet_ci" in ln for ln in first) >= 8   # 2 masks x 2 rhos x 2 seeds listed

    # a changed grid is another entry, with other runs
    write_file("s.yaml", SUITE.replace("RHOS", "0.05, 0.2"))
    rc, third, torch_third, err = dry_run(suite, tmp_path / "out", env)
    assert rc == 0 and torch_third == "TORCH-IMPORTED" and len(entries(cache)) == 2
    assert third != first


def test_a_corrupt_entry_is_a_miss_and_an_invalid_suite_is_never_stored(tmp_path, sambench_env, write_file):
    cache = tmp_path / "cache"
    env = {**sambench_env, "SAMBENCH_CACHE_DIR": str(cache)}
    suite = write_file("s.yaml", SUITE.replace("RHOS", "0.05"))
    rc, first, _, err = dry_run(suite, tmp_path / "out", env)
    assert rc == 0, err
    (entry,) = entries(cache)
    entry.write_text(f'{{"format": {suite_cache.FORMAT}, "runs": [')  # cut short
    rc, again, torch_again, err = dry_run(suite, tmp_path / "out", env)
    assert rc == 0 and again == first and torch_again == "TORCH-IMPORTED", err
    assert json.loads(entry.read_text())["format"] == suite_cache.FORMAT  # written again, whole

    bad = write_file("bad.yaml", SUITE.replace("RHOS", "0.05").replace("norm_only", "no_such_mask"))
    for _ in range(2):                                      # refused every time, from the check itself
        rc, _, _, err = dry_run(bad, tmp_path / "out", env)
        assert rc == 2 and "no_such_mask" in err and "Traceback" not in err
    assert len(entries(cache)) == 1


def test_an_edited_plugin_mask_is_a_miss_and_an_empty_cache_dir_turns_it_off(tmp_path, sambench_env, write_file):
    plugin = tmp_path / "plugins"
    mask_file = write_file(plugin / "halfmask.py", """
        from masks.base import register_mask
        from masks.basic import NormOnlyMask

        @register_mask("halfmask")
        class HalfMask(NormOnlyMask):
            '''The normalization layers' parameters (a plugin for the cache test).'''
        """)
    cache = tmp_path / "cache"
    env = {**sambench_env, "SAMBENCH_CACHE_DIR": str(cache), "SAMBENCH_MASK_PATH": str(plugin)}
    suite = write_file("s.yaml", SUITE.replace("RHOS", "0.05").replace("norm_only", "halfmask"))
    rc, first, _, err = dry_run(suite, tmp_path / "out", env)
    assert rc == 0, err
    assert dry_run(suite, tmp_path / "out", env)[2] == "NO-TORCH"
    mask_file.write_text(mask_file.read_text() + "\n# edited\n")
    rc, _, torch_after_edit, err = dry_run(suite, tmp_path / "out", env)
    assert rc == 0 and torch_after_edit == "TORCH-IMPORTED" and len(entries(cache)) == 2, err

    off = {**env, "SAMBENCH_CACHE_DIR": ""}
    rc, same, torch_off, err = dry_run(suite, tmp_path / "out", off)
    assert rc == 0 and same == first and torch_off == "TORCH-IMPORTED", err


def test_perf_orchestration_times_each_command(tmp_path, run_sambench, sambench_env):
    env = {**sambench_env, "SAMBENCH_NO_SLURM": "1"}
    out = tmp_path / "scale.json"
    proc = run_sambench("perf", "--orchestration", "100", "--json", out, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr
    records = json.loads(out.read_text())
    steps = {r["step"]: r for r in records}
    assert {"dry_run_cold", "dry_run", "status", "status_cached", "collect", "collect_indexed",
            "collect_changed"} <= set(steps), steps
    assert all(r["runs"] == 100 and r["seconds"] > 0 and r["cpu_s"] > 0 and r["max_rss_mb"] > 20 for r in records)
    assert steps["dry_run_cold"]["max_rss_mb"] > steps["dry_run"]["max_rss_mb"]  # torch and timm: cold only
    bad = run_sambench("perf", "--orchestration", "150", env=env)
    assert bad.returncode == 2 and "multiple of 100" in bad.stderr
