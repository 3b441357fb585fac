#!/usr/bin/env bash
# Every GPU number the performance issue asks for, in one call on a CUDA machine:
#   bash bench/gpu_checks.sh OUTDIR            (at most 10 minutes; see GPU_CHECKS_BUDGET)
# - the four step-time tables (WRN-28-10 bf16+channels_last and fp32, ViT-S/4 bf16 and fp32),
#   ratios to SGD and the peak memory of each configuration;
# - the bf16 SAM and SAM-ON steps compiled (bench.engine.fast_step, `sambench perf --compile-step`) beside
#   the reference steps, WRN-28-10 and ViT-S/4;
# - an epoch of Fashion-MNIST (wrn16_4, SAM-ON, bf16) against the sum of its step times;
# - the Fisher mask on wrn28_10 (1,024 samples): batched vs the per-sample loop, and its floor.
# Writes OUTDIR/*.json (sambench perf records), OUTDIR/env.txt, OUTDIR/log.txt and
# OUTDIR/summary.md (the README's tables and the targets, by bench/perf_summary.py).
# Needs torch and timm only (no submitit, no network). The epoch check reads Fashion-MNIST's four
# .gz files from data/fashion-mnist/ or $SAMBENCH_DATA_ROOT; without them it is skipped.
# Each part has its own time limit, cut to what is left of $GPU_CHECKS_BUDGET seconds (default 570),
# so the script and its summary end within 10 minutes; a part that fails or is out of time is noted,
# never stops the others. Where pytest is installed, the suite's CUDA cases run last.
set -uo pipefail
out=${1:-${OUT:-/tmp/sambench-gpu}}
mkdir -p "$out"
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1
py=${PYTHON:-python3}
budget=${GPU_CHECKS_BUDGET:-570}
failed=0

time_left() {  # time_left SECONDS: the limit, cut to the rest of the budget
  local left=$((budget - SECONDS))
  echo $(($1 < left ? $1 : left))
}

part() {  # part SECONDS NAME sambench-perf-arguments...
  local limit name=$2
  limit=$(time_left "$1")
  shift 2
  echo "== $name" | tee -a "$out/log.txt"
  if [ "$limit" -lt 20 ]; then
    echo "!! $name skipped: the time budget (${budget}s) is spent" | tee -a "$out/log.txt"
    failed=1
    return
  fi
  local t0=$SECONDS
  if ! timeout "$limit" "$py" -m bench perf --device cuda "$@" 2>&1 | tee -a "$out/log.txt"; then
    echo "!! $name failed or ran past ${limit}s" | tee -a "$out/log.txt"
    failed=1
  fi
  echo "-- $name: $((SECONDS - t0)) s" | tee -a "$out/log.txt"
}

{
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | head -1 | tr -d '\n'
  "$py" -c "import torch; print(f', torch {torch.__version__} (CUDA {torch.version.cuda})', end='')"
  echo
} > "$out/env.txt" 2>>"$out/log.txt"
cat "$out/env.txt"

# WRN-28-10 and ViT-S/4 at batch 128 on CIFAR-100 shapes (3x32x32)
part 90 "WRN-28-10 bf16+CL" --model wrn28_10 --batch-size 128 --amp --channels-last --configs paper \
  --steps 30 --json "$out/wrn28_bf16.json"
part 90 "WRN-28-10 fp32" --model wrn28_10 --batch-size 128 --channels-last --configs paper \
  --steps 20 --json "$out/wrn28_fp32.json"
part 75 "ViT-S/4 bf16" --model vit_s --batch-size 128 --amp --configs default --steps 30 \
  --json "$out/vit_s_bf16.json"
part 75 "ViT-S/4 fp32" --model vit_s --batch-size 128 --configs default --steps 20 \
  --json "$out/vit_s_fp32.json"
# an epoch of Fashion-MNIST against the sum of its steps (the loader must not cost more than 5%)
part 90 "epoch" --model wrn16_4 --dataset fashion_mnist --batch-size 128 --amp --configs sam:norm_only \
  --steps 5 --epoch --json "$out/epoch_fmnist.json"
# the Fisher mask: batched per-sample gradient squares vs one backward per sample, and the floor
part 100 "Fisher" --model wrn28_10 --dataset cifar100 --fisher --fisher-samples 1024 \
  --json "$out/fisher_wrn28.json"

# the CUDA cases of the test suite (loader, Fisher mask, peak memory), where pytest is installed
tests_limit=$(time_left 90)
if [ "$tests_limit" -lt 20 ]; then
  echo "!! CUDA tests skipped: the time budget (${budget}s) is spent" | tee -a "$out/log.txt"
elif "$py" -c "import pytest" 2>/dev/null; then
  echo "== CUDA tests" | tee -a "$out/log.txt"
  timeout "$tests_limit" "$py" -m pytest -q -p no:cacheprovider tests/test_data.py tests/test_masks.py tests/test_perf.py \
    tests/test_fast_step.py -k "cuda or peak_memory" -p no:logging --tb=short 2>&1 | tail -40 | tee "$out/cuda_tests.txt" | tee -a "$out/log.txt" || failed=1
fi


# the bf16 SAM-ON step compiled (bench.engine.fast_step) beside the reference, one process each; last,
# because compiling WRN-28-10 or ViT-S/4 takes 2-3 minutes on an H200 (torch 2.11)
part 200 "WRN-28-10 bf16+CL compiled step" --model wrn28_10 --batch-size 128 --amp --channels-last \
  --configs sam:norm_only --compile-step --steps 20 --json "$out/wrn28_bf16_compiled.json"
part 200 "ViT-S/4 bf16 compiled step" --model vit_s --batch-size 128 --amp --configs sam:norm_only \
  --compile-step --steps 20 --json "$out/vit_s_bf16_compiled.json"

"$py" -m bench.perf.summary "$out" > "$out/summary.md" && cat "$out/summary.md"
exit $failed
