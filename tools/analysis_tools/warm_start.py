"""ResNet weights as a warm start for m-RevNet, on the handwritten digits.

Runs the protocol of benchmarks/warm_start.py (docs/warm_start.md): trains
the source ResNetV1c (reused from --work-dir when present), converts it
with the project's converter, fine-tunes every arm for every seed and
writes results.json, results.md and curves.png under --out-dir.

    python tools/dataset_converters/export_digits.py data/digits
    python tools/analysis_tools/warm_start.py --out-dir docs/warm_start
"""

import argparse
import os.path as osp
import sys
import time

# benchmarks/ is not installed with mmrevnet: import it from the checkout
# this script belongs to.
_REPO = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
if _REPO not in sys.path:
    sys.path.insert(0, _REPO)

import mmrevnet  # noqa: E402,F401  (registers the backbones and shims)
from benchmarks import warm_start  # noqa: E402


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument('--out-dir', default='work_dirs/warm_start')
    parser.add_argument(
        '--work-dir',
        default='work_dirs/warm_start_runs',
        help='source and converted checkpoints, run logs',
    )
    parser.add_argument('--data-root', default='data/digits')
    parser.add_argument('--depth', type=int, default=18)
    parser.add_argument('--pretrain-epochs', type=int, default=15)
    parser.add_argument('--finetune-epochs', type=int, default=2)
    parser.add_argument('--finetune-lr', type=float, default=0.01)
    parser.add_argument('--seeds', type=int, nargs='+', default=[0, 1, 2])
    parser.add_argument(
        '--warmup-iters',
        type=int,
        help='gamma warm-up length (default: one fine-tune epoch)',
    )
    parser.add_argument('--no-plot', action='store_true')
    return parser.parse_args(argv)


def main(argv=None) -> dict:
    args = parse_args(argv)
    if not osp.isdir(osp.join(args.data_root, 'train')):
        sys.exit(
            f'{args.data_root}/train not found; export the digits first: '
            f'python tools/dataset_converters/export_digits.py '
            f'{args.data_root}'
        )
    start = time.perf_counter()
    results = warm_start.run_study(
        data_root=args.data_root,
        work_dir=args.work_dir,
        out_dir=args.out_dir,
        depth=args.depth,
        pretrain_epochs=args.pretrain_epochs,
        finetune_epochs=args.finetune_epochs,
        finetune_lr=args.finetune_lr,
        seeds=args.seeds,
        warmup_iters=args.warmup_iters,
        plot=not args.no_plot,
        log=lambda message: print(message, flush=True),
    )
    print(warm_start.format_markdown(results))
    print(
        f'wrote {args.out_dir}/results.json, results.md'
        + ('' if args.no_plot else ', curves.png')
        + f' in {time.perf_counter() - start:.0f} s'
    )
    return results


if __name__ == '__main__':
    main()
