"""The main job: train and evaluate a PSPNet-m-RevNet on generated data.

Generates a Cityscapes-layout data set, trains the demo config on the CPU,
evaluates mIoU on the val split with mmseg's IoUMetric, paints prediction
overlays and prints where everything is. ``--compare`` also trains the
same PSPNet with mmseg's ResNetV1c-34.
"""

import argparse
import json
import os
import os.path as osp
import shutil
import sys

# The demo code (tools/demo/) is not installed: import it from the checkout
# this script belongs to.
_REPO = osp.dirname(osp.dirname(osp.abspath(__file__)))
if _REPO not in sys.path:
    sys.path.insert(0, _REPO)

import mmrevnet  # noqa: E402,F401  (shims and registration before mmseg)
from tools.demo.segmentation_demo import run_segmentation_demo  # noqa: E402


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--work-dir', default='work_dirs/demo')
    parser.add_argument('--data-root', default='data/synthetic_cityscapes')
    parser.add_argument(
        '--compare',
        action='store_true',
        help='also train the ResNetV1c-34 baseline',
    )
    parser.add_argument(
        '--max-iters', type=int, help='override the training iterations'
    )
    parser.add_argument(
        '--results-dir',
        help='also copy the metrics (summary.json), the training curve and '
        'the first overlay here (docs/demo for the committed figures)',
    )
    return parser.parse_args()


def _copy_results(report: dict, results_dir: str) -> None:
    """The figures and metrics the README quotes, without the paths."""
    os.makedirs(results_dir, exist_ok=True)
    shutil.copy(
        report['training_curve'], osp.join(results_dir, 'training_curve.png')
    )
    shutil.copy(report['overlays'][0], osp.join(results_dir, 'overlay.png'))
    metrics = {
        name: {k: run[k] for k in ('mIoU', 'aAcc', 'mAcc', 'train_seconds')}
        for name, run in report['runs'].items()
    }
    with open(osp.join(results_dir, 'summary.json'), 'w') as f:
        json.dump(
            dict(
                num_train=report['num_train'],
                num_val=report['num_val'],
                runs=metrics,
            ),
            f,
            indent=2,
            default=float,
        )
        f.write('\n')


def main():
    args = parse_args()
    summary = run_segmentation_demo(
        work_dir=args.work_dir,
        data_root=args.data_root,
        compare=args.compare,
        max_iters=args.max_iters,
    )
    report = {
        'data_root': summary['data']['root'],
        'num_train': summary['data']['num_train'],
        'num_val': summary['data']['num_val'],
        'overlays': summary['overlays'],
        'training_curve': summary['curve'],
        'runs': {
            name: dict(
                mIoU=run['metrics'].get('mIoU'),
                aAcc=run['metrics'].get('aAcc'),
                mAcc=run['metrics'].get('mAcc'),
                train_seconds=round(run['train_seconds'], 1),
                checkpoint=run['checkpoint'],
                log_dir=run['work_dir'],
            )
            for name, run in summary['runs'].items()
        },
    }
    out = osp.join(args.work_dir, 'summary.json')
    with open(out, 'w') as f:
        json.dump(report, f, indent=2, default=float)  # np.float32 metrics
    if args.results_dir:
        _copy_results(report, args.results_dir)
    print('\n==== mmrevnet demo ====')
    for name, run in report['runs'].items():
        print(
            f'{name}: mIoU {run["mIoU"]:.2f}  aAcc {run["aAcc"]:.2f}  '
            f'(trained in {run["train_seconds"]:.0f} s)  '
            f'checkpoint {run["checkpoint"]}'
        )
    print(
        f'data:      {report["data_root"]} ({report["num_train"]} train, '
        f'{report["num_val"]} val images)'
    )
    print(f'overlays:  {", ".join(report["overlays"])}')
    print(f'curve:     {report["training_curve"]}')
    print(f'summary:   {out}')


if __name__ == '__main__':
    main()
