#!/usr/bin/env bash
# The whole-segmentor step-peak grid on the CPU (docs/benchmark/segmentor.md):
# mmseg's PSPNet, DeepLabV3 and UPerNet configs with only the backbone
# swapped, depths 50 and 101, Cityscapes-like (19 classes, 256x512, batch 2)
# and ADE20K-like (150 classes, 256x256, batch 4), six variants each. Each
# (dataset, depth, head) group is measured in its own process, in the order
# depth 50 (both datasets), then depth 101; the rows are then written out
# together, one table per dataset.
#
# Environment: DEPTHS (default "50 101"), HEADS (default "pspnet deeplabv3
# upernet"), DATASETS (default "cityscapes ade20k"), REPEATS (timed steps
# per variant, default 1) and PSP_REPEATS (timed steps of the PSPNet-50
# Cityscapes-like group, on which the time limit is checked; default 3).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
PYTHON=${PYTHON:-python}
TOOL=tools/analysis_tools/benchmark_memory.py
ROWS=work_dirs/segmentor_rows
DEPTHS=${DEPTHS:-50 101}
HEADS=${HEADS:-pspnet deeplabv3 upernet}
DATASETS=${DATASETS:-cityscapes ade20k}
REPEATS=${REPEATS:-1}
PSP_REPEATS=${PSP_REPEATS:-3}
mkdir -p "$ROWS"
VARIANTS=(
    ResNetV1c
    "ResNetV1c (with_cp)"
    "ResNetV1c (with_cp) + checkpointed heads"
    MRevNetV1c
    "MRevNetV1c + memory-saving heads"
    "MRevNetV1c + MRevNetEncoderDecoder"
)
COMMON=(--segmentor --in-process --warmup 0 --variants "${VARIANTS[@]}")
settings() {
    case $1 in
    cityscapes) echo --size 256 512 --batch-size 2 --num-classes 19 ;;
    ade20k) echo --size 256 256 --batch-size 4 --num-classes 150 ;;
    *)
        echo "unknown dataset $1 (cityscapes, ade20k)" >&2
        exit 2
        ;;
    esac
}
for depth in $DEPTHS; do
    for dataset in $DATASETS; do
        for head in $HEADS; do
            repeats=$REPEATS
            if [ "$depth-$dataset-$head" = 50-cityscapes-pspnet ]; then
                repeats=$PSP_REPEATS
            fi
            # shellcheck disable=SC2046
            "$PYTHON" "$TOOL" "${COMMON[@]}" $(settings "$dataset") \
                --depths "$depth" --heads "$head" --repeats "$repeats" \
                --rows-out "$ROWS/${dataset}_${depth}_${head}.json"
        done
    done
done
for dataset in $DATASETS; do
    ROW_FILES=()
    for depth in $DEPTHS; do
        for head in $HEADS; do
            ROW_FILES+=("$ROWS/${dataset}_${depth}_${head}.json")
        done
    done
    # shellcheck disable=SC2046
    "$PYTHON" "$TOOL" --segmentor $(settings "$dataset") \
        --rows-in "${ROW_FILES[@]}" \
        --out-dir "docs/benchmark/segmentor_$dataset"
done
