#!/usr/bin/env bash
# The whole-segmentor step-peak grid on the CPU (docs/benchmark/segmentor.md):
# mmseg's PSPNet, DeepLabV3 and UPerNet configs with only the backbone
# swapped, depth 50, Cityscapes-like (19 classes, 256x512, batch 2) and
# ADE20K-like (150 classes, 256x256, batch 4; PSPNet). Each model is one
# group measured in its own process (the groups may run concurrently), then
# the rows are written out together.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
PYTHON=${PYTHON:-python}
TOOL=tools/analysis_tools/benchmark_memory.py
ROWS=work_dirs/segmentor_rows
mkdir -p "$ROWS"
VARIANTS=(
    ResNetV1c
    "ResNetV1c (with_cp)"
    "ResNetV1c (with_cp) + checkpointed heads"
    MRevNetV1c
    "MRevNetV1c + memory-saving heads"
    "MRevNetV1c + MRevNetEncoderDecoder"
)
COMMON=(--segmentor --in-process --depths 50 --warmup 0 --repeats 3
    --variants "${VARIANTS[@]}")
CITYSCAPES=(--size 256 512 --batch-size 2 --num-classes 19)
ADE20K=(--size 256 256 --batch-size 4 --num-classes 150)
# PSPNet only: the committed run had no CPU time for the DeepLabV3 and
# UPerNet groups; HEADS="pspnet deeplabv3 upernet" measures them too.
HEADS=${HEADS:-pspnet}
for head in $HEADS; do
    "$PYTHON" "$TOOL" "${COMMON[@]}" "${CITYSCAPES[@]}" --heads "$head" \
        --rows-out "$ROWS/cityscapes_$head.json"
done
"$PYTHON" "$TOOL" "${COMMON[@]}" "${ADE20K[@]}" --heads pspnet \
    --out-dir docs/benchmark/segmentor_ade20k
ROW_FILES=()
for head in $HEADS; do ROW_FILES+=("$ROWS/cityscapes_$head.json"); done
"$PYTHON" "$TOOL" --segmentor "${CITYSCAPES[@]}" --rows-in "${ROW_FILES[@]}" \
    --out-dir docs/benchmark/segmentor_cityscapes
