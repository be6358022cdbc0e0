"""Memory-saving vs plain gradients of MRevNetV1c at fp32 / fp16 / bf16.

Runs :func:`benchmarks.precision.compare_gradients` for each
precision (fp32 twice on CUDA: deterministic cuDNN, then
``cudnn.benchmark=True`` as mmseg's configs set it) and an fp16 loss-scale
overflow check, and writes ``precision.json`` and ``precision.md``.

Example:
    python tools/analysis_tools/check_precision.py --device cuda \
        --out-dir docs/benchmark/gpu
"""

import argparse
import json
import os
import os.path as osp
import sys

import torch

# benchmarks/ is not installed with mmrevnet: import it from the checkout
# this script belongs to.
_REPO = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
if _REPO not in sys.path:
    sys.path.insert(0, _REPO)

import mmrevnet  # noqa: E402,F401  (registration and shims)
from benchmarks.precision import (  # noqa: E402
    compare_gradients,
    loss_scale_overflow,
    markdown_table,
)


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--device', default='cuda')
    parser.add_argument('--depth', type=int, default=50)
    parser.add_argument('--base-channels', type=int, default=64)
    parser.add_argument('--batch-size', type=int, default=2)
    parser.add_argument('--size', type=int, nargs=2, default=[256, 512])
    parser.add_argument(
        '--precisions',
        nargs='+',
        default=['fp32', 'fp16', 'bf16'],
        choices=['fp32', 'fp16', 'bf16'],
    )
    parser.add_argument(
        '--float64-reference',
        action='store_true',
        help='fp32 rows: also compare both paths with plain float64',
    )
    parser.add_argument('--out-dir', default='work_dirs/precision')
    return parser.parse_args()


def main():
    args = parse_args()
    cuda = args.device.startswith('cuda')
    common = dict(
        depth=args.depth,
        base_channels=args.base_channels,
        batch_size=args.batch_size,
        size=args.size,
        device=args.device,
    )
    settings = [(p, False) for p in args.precisions]
    if cuda and 'fp32' in args.precisions:
        settings.insert(1, ('fp32', True))
    rows = []
    for precision, benchmark in settings:
        if cuda:
            torch.backends.cudnn.benchmark = benchmark
            torch.backends.cudnn.deterministic = not benchmark
            # Plain fp32 matmuls/convs, so fp32 means fp32 (TF32 off).
            torch.backends.cuda.matmul.allow_tf32 = False
            torch.backends.cudnn.allow_tf32 = False
        row = compare_gradients(
            precision,
            float64_reference=args.float64_reference and precision == 'fp32',
            **common,
        )
        row['cudnn_benchmark'] = benchmark if cuda else '-'
        rows.append(row)
        print(json.dumps(row), flush=True)
    overflow = None
    if cuda and 'fp16' in args.precisions:
        overflow = loss_scale_overflow(
            depth=args.depth,
            base_channels=args.base_channels,
            size=args.size,
            device=args.device,
        )
        print('fp16 loss-scale overflow:', json.dumps(overflow))
    device_name = (
        torch.cuda.get_device_name() if cuda else f'{args.device} (CPU)'
    )
    os.makedirs(args.out_dir, exist_ok=True)
    with open(osp.join(args.out_dir, 'precision.json'), 'w') as f:
        json.dump(
            dict(
                device=device_name,
                torch=torch.__version__,
                settings=vars(args),
                rows=rows,
                fp16_loss_scale_overflow=overflow,
            ),
            f,
            indent=2,
        )
    table = markdown_table(rows)
    with open(osp.join(args.out_dir, 'precision.md'), 'w') as f:
        f.write(
            f'Device: {device_name}; torch {torch.__version__}; '
            f'MRevNetV1c-{args.depth}, batch {args.batch_size}, '
            f'{args.size[0]}x{args.size[1]}; TF32 off.\n\n'
        )
        f.write(table)
        if overflow is not None:
            f.write(
                f'\nfp16 loss scale {overflow["scale"]:.3g}: error '
                f'{overflow["error"]}, parameters with non-finite grads '
                f'{overflow["nonfinite_grads"]}.\n'
            )
    print(table)


if __name__ == '__main__':
    main()
