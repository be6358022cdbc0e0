#!/usr/bin/env bash
# The GPU benchmark: PSPNet at 512x1024, batch 2, depths 50 and 101, on the
# first CUDA device (about 2-3 minutes on one H100). Writes
# docs/benchmark/gpu/benchmark.{json,md,png}.
# Usage: bash tools/analysis_tools/benchmark_gpu.sh [OUT_DIR]
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/../.." && pwd)"
OUT_DIR=${1:-"$ROOT/docs/benchmark/gpu"}
PYTHON=${PYTHON:-python}
cd "$ROOT"
"$PYTHON" -c 'import torch; assert torch.cuda.is_available(), "no CUDA"'
PYTHONPATH="$ROOT:${PYTHONPATH:-}" "$PYTHON" \
    tools/analysis_tools/benchmark_memory.py \
    --device cuda --heads pspnet --depths 50 101 \
    --batch-size 2 --size 512 1024 --warmup 2 --repeats 5 \
    --out-dir "$OUT_DIR"
