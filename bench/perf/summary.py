"""The README's GPU tables from the JSON that ``bench/gpu_checks.sh`` writes (reads files only).

    python -m bench.perf.summary OUTDIR          # markdown on stdout (gpu_checks.sh: OUTDIR/summary.md)

OUTDIR holds ``sambench perf --json`` record lists: one step-time table per column below, the
epoch check and the Fisher check, plus ``env.txt`` (GPU, torch). Anything missing is shown as
not measured, so a partial run still summarizes.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

COLUMNS = [  # (file, column title)
    ("wrn28_bf16.json", "WRN-28-10 bf16+CL"),
    ("wrn28_fp32.json", "WRN-28-10 fp32"),
    ("vit_s_bf16.json", "ViT-S/4 bf16"),
    ("vit_s_fp32.json", "ViT-S/4 fp32"),
]
COMPILED_COLUMNS = [  # the bf16 steps through bench.engine.fast_step's compiled step, beside their reference
    ("wrn28_bf16_compiled.json", "WRN-28-10 bf16+CL"),
    ("vit_s_bf16_compiled.json", "ViT-S/4 bf16"),
]
EPOCH_FILE, FISHER_FILE = "epoch_fmnist.json", "fisher_wrn28.json"

# the targets: (column, configuration label, bound on the ratio to SGD)
STEP_TARGETS = [
    ("WRN-28-10 bf16+CL", "sam norm_only", 1.70),
    ("ViT-S/4 bf16", "sam norm_only", 1.60),
    ("WRN-28-10 bf16+CL", "sam all", 1.90),
    ("ViT-S/4 bf16", "sam all", 1.90),
]
COMPILED_TARGETS = [(title, f"{label.replace(' ', ':')} compiled", bound) for title, label, bound in STEP_TARGETS]
EPOCH_TARGET = 1.05                       # epoch time / sum of its step times
FISHER_SPEEDUP, FISHER_FLOOR = 10.0, 3.0  # x faster than the per-sample loop; x its floor


def load_records(path: Path) -> list[dict] | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _labels(columns: list[list[dict] | None]) -> list[str]:
    out: list[str] = []
    for recs in columns:
        for r in recs or []:
            if "label" in r and r["label"] not in out:
                out.append(r["label"])
    return out


def _cell(recs: list[dict] | None, label: str, field: str, fmt: str) -> str:
    for r in recs or []:
        if r.get("label") == label and r.get(field) is not None:
            return format(r[field], fmt)
    return ""


def step_table(titles: list[str], columns: list[list[dict] | None]) -> str:
    """Ratios to SGD per configuration, with SGD's ms per step on top (the README's table)."""
    lines = ["| config | " + " | ".join(titles) + " |", "|---|" + "---:|" * len(titles)]
    labels = _labels(columns)
    for label in labels:
        if label == "sgd":
            cells = [_cell(recs, label, "ms", ".2f") for recs in columns]
            lines.insert(2, "| SGD ms/step | " + " | ".join(cells) + " |")
        else:
            cells = [_cell(recs, label, "ratio_vs_sgd", ".2f") for recs in columns]
            lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def memory_table(titles: list[str], columns: list[list[dict] | None]) -> str:
    """Peak GPU memory (GiB) of one step of each configuration, measured alone."""
    lines = ["| peak memory, GiB | " + " | ".join(titles) + " |", "|---|" + "---:|" * len(titles)]
    for label in _labels(columns):
        cells = []
        for recs in columns:
            mib = next((r.get("peak_mem_mib") for r in recs or [] if r.get("label") == label), None)
            cells.append(f"{mib / 1024:.2f}" if mib is not None else "")
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _ratio(recs: list[dict] | None, label: str) -> float | None:
    return next((r.get("ratio_vs_sgd") for r in recs or [] if r.get("label") == label), None)


def _check(ok: bool | None, text: str) -> str:
    return f"- [{'x' if ok else ' '}] {text}" + ("" if ok is not None else " (not measured)")


def step_target_lines(by_title: dict[str, list[dict] | None], targets: list[tuple[str, str, float]]) -> list[str]:
    out = []
    for title, label, bound in targets:
        r = _ratio(by_title.get(title), label)
        out.append(_check(None if r is None else r <= bound,
                          f"{title} {label} <= {bound:.2f}x SGD" + ("" if r is None else f": {r:.2f}x")))
    return out


def target_lines(by_title: dict[str, list[dict] | None], epoch: dict | None, fisher: dict | None,
                 compiled: dict[str, list[dict] | None] | None = None) -> list[str]:
    out = step_target_lines(by_title, STEP_TARGETS) + step_target_lines(compiled or {}, COMPILED_TARGETS)
    r = epoch.get("ratio") if epoch else None
    out.append(_check(None if r is None else r <= EPOCH_TARGET,
                      f"epoch <= {EPOCH_TARGET:.2f}x the sum of its steps" + ("" if r is None else f": {r:.3f}x")))
    if fisher:
        ok = fisher["ratio"] >= FISHER_SPEEDUP and fisher["batched_vs_floor"] <= FISHER_FLOOR
        out.append(_check(ok, f"Fisher mask >= {FISHER_SPEEDUP:.0f}x the per-sample loop and <= "
                              f"{FISHER_FLOOR:.0f}x its floor: {fisher['ratio']:.1f}x, "
                              f"{fisher['batched_vs_floor']:.2f}x"))
    else:
        out.append(_check(None, f"Fisher mask >= {FISHER_SPEEDUP:.0f}x the per-sample loop and <= "
                                f"{FISHER_FLOOR:.0f}x its floor"))
    return out


def _first(records: list[dict] | None, kind: str) -> dict | None:
    return next((r for r in records or [] if r.get("benchmark") == kind), None)


def summarize(outdir: str | Path) -> str:
    outdir = Path(outdir)
    titles = [t for _, t in COLUMNS]
    columns = [load_records(outdir / f) for f, _ in COLUMNS]
    epoch = _first(load_records(outdir / EPOCH_FILE), "epoch")
    fisher = _first(load_records(outdir / FISHER_FILE), "fisher")
    env = (outdir / "env.txt").read_text().strip() if (outdir / "env.txt").exists() else "unknown machine"
    steps = next((r.get("steps") for recs in columns for r in recs or [] if r.get("steps")), None)
    parts = [f"Measured on {env} with `bash bench/gpu_checks.sh OUTDIR` (batch 128; ratios to SGD "
             f"in the same process, medians of {steps or '?'} interleaved steps).", "",
             step_table(titles, columns), "", memory_table(titles, columns), ""]
    compiled_titles = [t for _, t in COMPILED_COLUMNS]
    compiled = [load_records(outdir / f) for f, _ in COMPILED_COLUMNS]
    if any(compiled):
        parts += ["The compiled step (bench.engine.fast_step, `sambench perf --compile-step`), each beside its "
                  "reference rows in one process:", "", step_table(compiled_titles, compiled), "",
                  memory_table(compiled_titles, compiled), ""]
    else:
        parts += ["Compiled step: not measured.", ""]
    if epoch:
        parts.append(f"Epoch of {epoch['dataset']} ({epoch['model']}, SAM-ON, {'bf16' if epoch['amp'] else 'fp32'}, "
                     f"{epoch['steps']} steps): {epoch['epoch_s']:.2f} s, sum of its step times "
                     f"{epoch['sum_step_s']:.2f} s, ratio {epoch['ratio']:.3f}; the loader alone "
                     f"{epoch.get('loader_s', float('nan')):.3f} s.")
    else:
        parts.append("Epoch check: not measured.")
    if fisher:
        parts.append(f"Fisher mask, {fisher['model']}, {fisher['num_samples']} samples: batched "
                     f"{fisher['batched_s']:.2f} s ({fisher.get('path', '?')} path), per-sample loop "
                     f"{fisher['loop_s']:.2f} s ({fisher['ratio']:.1f}x), floor (one batched "
                     f"forward+backward) {fisher['floor_s']:.2f} s ({fisher['batched_vs_floor']:.2f}x); "
                     f"largest difference to the loop {fisher['max_rel_diff']:.1e} of the largest score.")
    else:
        parts.append("Fisher check: not measured.")
    parts += ["", "Targets:", *target_lines(dict(zip(titles, columns)), epoch, fisher,
                                            dict(zip(compiled_titles, compiled)))]
    return "\n".join(parts) + "\n"


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1 or not Path(argv[0]).is_dir():
        print("usage: python -m bench.perf.summary OUTDIR (the folder bench/gpu_checks.sh wrote)", file=sys.stderr)
        return 2
    print(summarize(argv[0]), end="")
    return 0


if __name__ == "__main__":
    sys.exit(main())
