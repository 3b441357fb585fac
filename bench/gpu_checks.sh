#!/usr/bin/env bash
# The GPU numbers the performance and mask issues ask for, in one call on the lent GPU machine:
#   bash bench/gpu_checks.sh OUTDIR       (data: Fashion-MNIST's four .gz files in data/fashion-mnist/)
# That machine has torch/timm but no submitit; nothing here needs it. About 6-8 minutes on an H100.
set -euo pipefail
out=${1:-${OUT:-/tmp/sambench-gpu}}
mkdir -p "$out"
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1
py=${PYTHON:-python3}
perf() { "$py" -m bench perf --device cuda "$@"; }

nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$out/gpu.txt"
# WRN-28-10, batch 128: bf16 + channels_last, then fp32 (the README's GPU table), CIFAR-100 shapes
perf --model wrn28_10 --batch-size 128 --amp --channels-last --configs paper --steps 30 --json "$out/wrn28_bf16.json"
perf --model wrn28_10 --batch-size 128 --channels-last --configs paper --steps 20 --json "$out/wrn28_fp32.json"
# ViT-S/4 on 32x32
perf --model vit_s --batch-size 128 --amp --configs default --steps 30 --json "$out/vit_s_bf16.json"
perf --model vit_s --batch-size 128 --configs default --steps 20 --json "$out/vit_s_fp32.json"
# an epoch of Fashion-MNIST against the sum of its steps (data handling must not dominate)
perf --model wrn16_4 --dataset fashion_mnist --batch-size 128 --amp --configs sam:norm_only --steps 5 --epoch \
  --json "$out/epoch_fmnist.json" || echo "epoch check skipped (no Fashion-MNIST under data/)"
# the Fisher mask: batched per-sample gradients vs one backward per sample
perf --model wrn28_10 --dataset cifar100 --fisher --fisher-samples 1024 --json "$out/fisher_wrn28.json"
