#!/usr/bin/env bash
# The whole-segmentor step-peak grid on the CPU (docs/benchmark/segmentor.md):
# mmseg's PSPNet, DeepLabV3 and UPerNet configs with only the backbone
# swapped, depth 50, Cityscapes-like (19 classes, 256x512, batch 2) and
# ADE20K-like (150 classes, 256x256, batch 4; PSPNet).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
PYTHON=${PYTHON:-python}
VARIANTS=(
    ResNetV1c
    "ResNetV1c (with_cp)"
    "ResNetV1c (with_cp) + checkpointed heads"
    MRevNetV1c
    "MRevNetV1c + memory-saving heads"
    "MRevNetV1c + MRevNetEncoderDecoder"
)
"$PYTHON" tools/analysis_tools/benchmark_memory.py --segmentor --depths 50 \
    --heads pspnet deeplabv3 upernet --size 256 512 --batch-size 2 \
    --warmup 0 --repeats 3 --variants "${VARIANTS[@]}" \
    --out-dir docs/benchmark/segmentor_cityscapes
"$PYTHON" tools/analysis_tools/benchmark_memory.py --segmentor --depths 50 \
    --heads pspnet --size 256 256 --batch-size 4 --num-classes 150 \
    --warmup 0 --repeats 3 --variants "${VARIANTS[@]}" \
    --out-dir docs/benchmark/segmentor_ade20k
