"""CPU step peak of a segmentor: plain heads vs memory-saving heads.

Saved-for-backward bytes (the project's counter) say what a step keeps
between its forward and its backward. Recomputation also rebuilds a graph
in the backward, so the *peak* of a step can sit inside the backward. On
the CPU there is no allocator statistic like
``torch.cuda.max_memory_allocated``; this tool samples glibc's
``mallinfo2()`` (bytes in use, heap and mmapped) after every aten
operator of one training step (forward and backward, through a
``TorchDispatchMode``) and reports the highest value above the level
before the step. Operator granularity: a temporary allocated and freed
inside one operator is not seen. Linux/glibc only.

Example:
    python tools/analysis_tools/heads_peak_memory.py --depth 101 \
        --heads pspnet deeplabv3 upernet --out docs/benchmark/heads_peak.json
"""

import argparse
import ctypes
import gc
import json
import os.path as osp
import sys

import torch
from torch.utils._python_dispatch import TorchDispatchMode

# benchmarks/ is not installed with mmrevnet: import it from the checkout.
_REPO = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
if _REPO not in sys.path:
    sys.path.insert(0, _REPO)

import mmrevnet  # noqa: E402,F401  (shims and registration before mmseg loads)
from benchmarks.benchmark import (  # noqa: E402
    build_benchmark_model,
    make_step,
)
from mmrevnet.analysis.memory import SavedTensorCounter  # noqa: E402


class _MallInfo2(ctypes.Structure):
    _fields_ = [
        (name, ctypes.c_size_t)
        for name in (
            'arena',
            'ordblks',
            'smblks',
            'hblks',
            'hblkhd',
            'usmblks',
            'fsmblks',
            'uordblks',
            'fordblks',
            'keepcost',
        )
    ]


_LIBC = ctypes.CDLL('libc.so.6')
_LIBC.mallinfo2.restype = _MallInfo2


def malloc_in_use() -> int:
    """Bytes glibc has handed out and not yet got back (heap + mmap)."""
    info = _LIBC.mallinfo2()
    return info.uordblks + info.hblkhd


class _PeakSampler(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.peak = malloc_in_use()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        self.peak = max(self.peak, malloc_in_use())
        return out


def step_peak(model, step) -> int:
    """Peak bytes in use above the pre-step level, forward + backward."""
    model.zero_grad(set_to_none=True)
    step().backward()  # gradients allocated: the peak is then the step's
    gc.collect()
    base = malloc_in_use()
    with _PeakSampler() as sampler:
        step().backward()
    return sampler.peak - base


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--depth', type=int, default=101)
    parser.add_argument(
        '--heads', nargs='+', default=['pspnet', 'deeplabv3', 'upernet']
    )
    parser.add_argument(
        '--variants',
        nargs='+',
        default=[
            'ResNetV1c',
            'ResNetV1c (with_cp)',
            'MRevNetV1c',
            'MRevNetV1c + memory-saving heads',
            'MRevNetV1c + memory-saving heads (module)',
        ],
    )
    parser.add_argument('--size', type=int, nargs=2, default=[128, 256])
    parser.add_argument('--batch-size', type=int, default=2)
    parser.add_argument('--out')
    args = parser.parse_args()
    rows = []
    for head in args.heads:
        for variant in args.variants:
            torch.manual_seed(0)
            model = build_benchmark_model(variant, args.depth, head)
            step = make_step(model, args.batch_size, args.size, 'cpu')
            with SavedTensorCounter(exclude=model.parameters()) as counter:
                loss = step()
            del loss
            peak = step_peak(model, step)
            row = dict(
                head=head,
                depth=args.depth,
                variant=variant,
                size=args.size,
                batch_size=args.batch_size,
                activation_mib=counter.bytes / 2**20,
                cpu_step_peak_mib=peak / 2**20,
            )
            rows.append(row)
            print(
                f'{head:9s} {variant:42s} saved '
                f'{row["activation_mib"]:7.1f} MiB  step peak '
                f'{row["cpu_step_peak_mib"]:7.1f} MiB',
                flush=True,
            )
            del model, step
            gc.collect()
    if args.out:
        with open(args.out, 'w') as f:
            json.dump(rows, f, indent=2)


if __name__ == '__main__':
    main()
