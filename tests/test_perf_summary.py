"""bench/perf_summary.py: the README's GPU tables from gpu_checks.sh's JSON files."""
import json

from bench.perf import summary as perf_summary


def _records(sgd_ms, ratios, peak_mib=None):
    out = [{"label": "sgd", "ms": sgd_ms, "ratio_vs_sgd": 1.0, "steps": 30, "peak_mem_mib": peak_mib}]
    for i, (label, ratio) in enumerate(ratios.items()):
        out.append({"label": label, "ms": sgd_ms * ratio, "ratio_vs_sgd": ratio, "steps": 30,
                    "peak_mem_mib": None if peak_mib is None else peak_mib + 512 * (i + 1)})
    return out


def _write(folder, name, records):
    (folder / name).write_text(json.dumps(records))


def test_summary_tables_and_targets(tmp_path):
    _write(tmp_path, "wrn28_bf16.json", _records(16.07, {"loop_sam": 2.16, "sam all": 1.91, "sam norm_only": 1.69},
                                                 peak_mib=4096))
    _write(tmp_path, "vit_s_bf16.json", _records(30.29, {"sam all": 1.96, "sam norm_only": 1.70}, peak_mib=2048))
    _write(tmp_path, "epoch_fmnist.json", [{"label": "sgd"}, {
        "benchmark": "epoch", "model": "wrn16_4", "dataset": "fashion_mnist", "amp": True, "steps": 469,
        "epoch_s": 5.2, "sum_step_s": 5.0, "ratio": 1.04, "loader_s": 0.05}])
    _write(tmp_path, "fisher_wrn28.json", [{
        "benchmark": "fisher", "model": "wrn28_10", "num_samples": 1024, "batched_s": 0.8, "loop_s": 12.3,
        "ratio": 15.4, "floor_s": 0.4, "batched_vs_floor": 2.0, "path": "backward", "max_rel_diff": 1e-6}])
    _write(tmp_path, "wrn28_bf16_compiled.json", _records(16.0, {"sam:all": 1.9, "sam:norm_only": 1.75,
                                                                  "sam:all compiled": 1.8,
                                                                  "sam:norm_only compiled": 1.62}, peak_mib=4096))
    (tmp_path / "env.txt").write_text("NVIDIA H200, 143771 MiB, 570.1, torch 2.11.0 (CUDA 13.0)\n")
    text = perf_summary.summarize(tmp_path)
    lines = text.splitlines()
    assert "NVIDIA H200" in lines[0] and "torch 2.11.0" in lines[0] and "medians of 30" in lines[0]
    head = lines.index("| config | WRN-28-10 bf16+CL | WRN-28-10 fp32 | ViT-S/4 bf16 | ViT-S/4 fp32 |")
    assert lines[head + 2] == "| SGD ms/step | 16.07 |  | 30.29 |  |"  # the first row under the header
    assert "| loop_sam | 2.16 |  |  |  |" in lines
    assert "| sam norm_only | 1.69 |  | 1.70 |  |" in lines
    assert "| sgd | 4.00 |  | 2.00 |  |" in lines          # peak memory in GiB
    assert "| sam all | 5.00 |  | 2.50 |  |" in lines and "| sam all | 1.91 |  | 1.96 |  |" in lines
    compiled = lines.index("| config | WRN-28-10 bf16+CL | ViT-S/4 bf16 |")
    assert "The compiled step" in lines[compiled - 2] and lines[compiled + 2] == "| SGD ms/step | 16.00 |  |"
    assert "| sam:norm_only compiled | 1.62 |  |" in lines and "| sam:norm_only | 1.75 |  |" in lines
    assert "ratio 1.040" in text and "the loader alone 0.050 s" in text
    assert "batched 0.80 s (backward path)" in text and "(15.4x)" in text and "(2.00x)" in text
    targets = lines[lines.index("Targets:") + 1:]
    assert targets == [
        "- [x] WRN-28-10 bf16+CL sam norm_only <= 1.70x SGD: 1.69x",
        "- [ ] ViT-S/4 bf16 sam norm_only <= 1.60x SGD: 1.70x",
        "- [ ] WRN-28-10 bf16+CL sam all <= 1.90x SGD: 1.91x",
        "- [ ] ViT-S/4 bf16 sam all <= 1.90x SGD: 1.96x",
        "- [x] WRN-28-10 bf16+CL sam:norm_only compiled <= 1.70x SGD: 1.62x",
        "- [ ] ViT-S/4 bf16 sam:norm_only compiled <= 1.60x SGD (not measured)",
        "- [x] WRN-28-10 bf16+CL sam:all compiled <= 1.90x SGD: 1.80x",
        "- [ ] ViT-S/4 bf16 sam:all compiled <= 1.90x SGD (not measured)",
        "- [x] epoch <= 1.05x the sum of its steps: 1.040x",
        "- [x] Fisher mask >= 10x the per-sample loop and <= 3x its floor: 15.4x, 2.00x",
    ]


def test_summary_of_a_partial_run(tmp_path, capsys):
    _write(tmp_path, "vit_s_fp32.json", _records(35.51, {"sam all": 1.96}))
    (tmp_path / "wrn28_fp32.json").write_text("{not json")
    assert perf_summary.main([str(tmp_path)]) == 0
    text = capsys.readouterr().out
    assert "| SGD ms/step |  |  |  | 35.51 |" in text
    assert "| sgd |  |  |  |  |" in text  # no peak memory recorded (a CPU run)
    assert "Compiled step: not measured." in text
    assert "Epoch check: not measured." in text and "Fisher check: not measured." in text
    assert "- [ ] epoch <= 1.05x the sum of its steps (not measured)" in text
    assert perf_summary.main([str(tmp_path / "missing")]) == 2
