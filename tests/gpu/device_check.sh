#!/usr/bin/env bash
# The GPU check of the trainer issue, for a session that is lent a GPU (no Ray needed there):
# 50 steps each of ResNet-18 and WRN-28-10 in AIR mode, bf16, NHWC, batch 512, printing images/s
# and MFU against the anchors' FLOP counts (goal >= 40%). Writes JSON under ${OUT:-benchmarks}.
set -euo pipefail
cd "$(dirname "$0")/../.."
out="${OUT:-benchmarks}"
mkdir -p "$out"
python -m jobs.benchmark step --device cuda --amp bf16 --modes air --batch 512 --steps 50 --warmup 3 \
    --arch resnet18 --out "$out/gpu_step_resnet18.json"
python -m jobs.benchmark step --device cuda --amp bf16 --modes air --batch 512 --steps 50 --warmup 3 \
    --arch wrn --out "$out/gpu_step_wrn28_10.json"
