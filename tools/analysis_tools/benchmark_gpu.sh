#!/usr/bin/env bash
# The GPU measurements, one command on one CUDA device (about 4 minutes on
# one H100):
#   1. memory and step time, backbone alone and PSPNet, 512x1024, batch 2,
#      depths 50/101/152, cudnn.benchmark on (as mmseg's configs set it):
#      benchmark.{json,md,png}; the step peak is printed twice, for the
#      same profiled step: the profiler's allocator replay (parameter
#      gradients left out, as on the CPU) and torch.cuda's
#      max_memory_allocated above the start (gradients included);
#   2. memory-saving vs plain gradients of MRevNetV1c-50 at 512x1024 in
#      fp32 (deterministic cuDNN, then cudnn.benchmark), fp16 and bf16
#      autocast, and an overflowing fp16 loss scale: precision.{json,md}.
# Usage: bash tools/analysis_tools/benchmark_gpu.sh [OUT_DIR]
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/../.." && pwd)"
OUT_DIR=${1:-"$ROOT/docs/benchmark/gpu"}
PYTHON=${PYTHON:-python}
cd "$ROOT"
export PYTHONPATH="$ROOT:${PYTHONPATH:-}"
"$PYTHON" -c 'import torch; assert torch.cuda.is_available(), "no CUDA"'
status=0
"$PYTHON" tools/analysis_tools/benchmark_memory.py \
    --device cuda --cudnn-benchmark --heads backbone pspnet \
    --depths 50 101 152 --batch-size 2 --size 512 1024 \
    --warmup 1 --repeats 5 --out-dir "$OUT_DIR" || status=1
"$PYTHON" tools/analysis_tools/benchmark_memory.py \
    --compare-peaks "$OUT_DIR/benchmark.json" || status=1
"$PYTHON" tools/analysis_tools/check_precision.py \
    --device cuda --depth 50 --batch-size 2 --size 512 1024 \
    --out-dir "$OUT_DIR" || status=1
exit $status
