"""Train a segmentor or classifier from an mmseg / mmpretrain config.

Example:
    python tools/train.py configs/demo/<config>.py
    python tools/train.py CONFIG --work-dir work_dirs/x --resume --amp
"""

import argparse
import os
import os.path as osp
import sys

_REPO = osp.dirname(osp.dirname(osp.abspath(__file__)))
if _REPO not in sys.path:
    sys.path.insert(0, _REPO)

from mmengine.config import DictAction  # noqa: E402
from mmengine.registry import RUNNERS  # noqa: E402

import mmrevnet  # noqa: E402,F401  (shims, registration before mmseg)
from mmrevnet.engine import UntrustedCheckpointError  # noqa: E402
from tools.cli.config import build_train_config, init_cpu_launcher  # noqa: E402
from tools.cli.data_check import (  # noqa: E402
    DataCheckError,
    check_segmentation_data,
)
from tools.cli.strict_loading import (  # noqa: E402
    CheckpointMismatchError,
    run_loading_strictly,
)


def parse_args():
    parser = argparse.ArgumentParser(description='Train a model')
    parser.add_argument('config', help='train config file path')
    parser.add_argument('--work-dir', help='the dir to save logs and models')
    parser.add_argument(
        '--resume',
        nargs='?',
        type=str,
        const='auto',
        help='resume from the latest checkpoint in the work_dir, or from '
        'the given checkpoint',
    )
    parser.add_argument(
        '--non-strict',
        action='store_true',
        help='accept a load_from / resume checkpoint that does not fill the '
        'model exactly (e.g. another number of classes)',
    )
    parser.add_argument(
        '--skip-data-check',
        action='store_true',
        help='do not read the label maps of a segmentation training set '
        'before training (empty set, missing label file, label value '
        'outside the classes)',
    )
    parser.add_argument(
        '--amp',
        action='store_true',
        default=False,
        help='mixed precision: fp16 with loss scaling on CUDA, bf16 on CPU',
    )
    parser.add_argument(
        '--cfg-options',
        nargs='+',
        action=DictAction,
        help='override settings in the config, key=value pairs',
    )
    parser.add_argument(
        '--launcher',
        choices=['none', 'pytorch', 'slurm', 'mpi'],
        default='none',
        help='job launcher',
    )
    parser.add_argument('--local_rank', '--local-rank', type=int, default=0)
    args = parser.parse_args()
    if 'LOCAL_RANK' not in os.environ:
        os.environ['LOCAL_RANK'] = str(args.local_rank)
    return args


def main():
    args = parse_args()
    resume = True if args.resume == 'auto' else (args.resume or False)
    cfg = build_train_config(
        args.config,
        work_dir=args.work_dir,
        resume=resume,
        amp=args.amp,
        cfg_options=args.cfg_options,
        launcher=args.launcher,
    )
    if not args.skip_data_check:
        try:
            check_segmentation_data(cfg)
        except DataCheckError as error:
            sys.exit(f'error: {error} (--skip-data-check to train anyway)')
    init_cpu_launcher(cfg)
    runner = RUNNERS.build(cfg)
    try:
        run_loading_strictly(
            runner,
            'train',
            strict=not args.non_strict,
            name=cfg.get('load_from') or '',
        )
    except (CheckpointMismatchError, UntrustedCheckpointError) as error:
        sys.exit(f'error: {error}')


if __name__ == '__main__':
    main()
