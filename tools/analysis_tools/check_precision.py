"""Memory-saving vs plain gradients of MRevNetV1c at fp32 / fp16 / bf16.

Runs :func:`benchmarks.precision.compare_gradients` for each
precision (fp32 twice on CUDA: deterministic cuDNN, then
``cudnn.benchmark=True`` as mmseg's configs set it) and an fp16 loss-scale
overflow check, and writes ``precision.json`` and ``precision.md``.

With ``--table``, writes instead the precision table of docs/numerics.md
(:func:`benchmarks.precision.tensor_errors` over depths, gammas and
precisions, every parameter tensor against the plain path in float64):
``precision_table.json``, ``precision_table.md`` and one
``tensors_depth<D>.md`` per depth.

Examples:
    python tools/analysis_tools/check_precision.py --device cuda \
        --out-dir docs/benchmark/gpu
    python tools/analysis_tools/check_precision.py --table --device cpu \
        --out-dir docs/precision
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
    TABLE_DEPTHS,
    TABLE_GAMMAS,
    TABLE_PRECISIONS,
    compare_gradients,
    loss_scale_overflow,
    markdown_table,
    ratio_summary,
    summary_table,
    tensor_errors,
    tensor_table,
)


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        '--device', default=None, help='default cuda; with --table cpu'
    )
    parser.add_argument('--depth', type=int, default=50)
    parser.add_argument('--base-channels', type=int, default=64)
    parser.add_argument('--batch-size', type=int, default=2)
    parser.add_argument(
        '--size',
        type=int,
        nargs=2,
        default=None,
        help='input H W (default 256 512; with --table 64 64)',
    )
    parser.add_argument(
        '--precisions',
        nargs='+',
        default=None,
        choices=['fp32', 'fp16', 'bf16'],
        help='default fp32 fp16 bf16; with --table fp32 bf16',
    )
    parser.add_argument(
        '--table',
        action='store_true',
        help='write the float64 precision table (every tensor) instead',
    )
    parser.add_argument(
        '--depths', type=int, nargs='+', default=list(TABLE_DEPTHS)
    )
    parser.add_argument(
        '--gammas', type=float, nargs='+', default=list(TABLE_GAMMAS)
    )
    parser.add_argument(
        '--float64-reference',
        action='store_true',
        help='fp32 rows: also compare both paths with plain float64',
    )
    parser.add_argument('--out-dir', default='work_dirs/precision')
    return parser.parse_args()


def write_table(args):
    """The precision table: every depth, gamma and precision."""
    precisions = args.precisions or list(TABLE_PRECISIONS)
    size = args.size or [64, 64]
    args.device = args.device or 'cpu'
    results = []
    for depth in args.depths:
        for gamma in args.gammas:
            result = tensor_errors(
                depth,
                gamma,
                precisions=precisions,
                base_channels=args.base_channels,
                batch_size=args.batch_size,
                size=size,
                device=args.device,
            )
            results.append(result)
            for precision in precisions:
                summary = ratio_summary(result, precision)
                print(
                    json.dumps(
                        dict(depth=depth, gamma=gamma, precision=precision)
                        | summary
                    ),
                    flush=True,
                )
    device_name = (
        torch.cuda.get_device_name()
        if args.device.startswith('cuda')
        else f'{args.device} (CPU)'
    )
    os.makedirs(args.out_dir, exist_ok=True)
    with open(osp.join(args.out_dir, 'precision_table.json'), 'w') as f:
        json.dump(
            dict(
                device=device_name,
                torch=torch.__version__,
                settings=vars(args),
                results=results,
            ),
            f,
            indent=1,
        )
    heading = (
        f'Device: {device_name}; torch {torch.__version__}; MRevNetV1c '
        f'(base width {args.base_channels}), batch {args.batch_size}, '
        f'{size[0]}x{size[1]}, default settings. Error of a tensor: '
        '`||g - g64|| / ||g64||` (2-norm over the tensor) against the plain '
        'path in float64 with the same weights and input; ratio: '
        'memory-saving error over plain error at the same precision.\n\n'
    )
    table = summary_table(results)
    with open(osp.join(args.out_dir, 'precision_table.md'), 'w') as f:
        f.write(heading + table)
    for depth in args.depths:
        of_depth = [r for r in results if r['depth'] == depth]
        name = osp.join(args.out_dir, f'tensors_depth{depth}.md')
        with open(name, 'w') as f:
            f.write(
                heading + 'Each cell: memory-saving error / plain error.\n\n'
            )
            f.write(tensor_table(of_depth))
    print(table)


def main():
    args = parse_args()
    if args.table:
        write_table(args)
        return
    args.device = args.device or 'cuda'
    args.size = args.size or [256, 512]
    args.precisions = args.precisions or ['fp32', 'fp16', 'bf16']
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
