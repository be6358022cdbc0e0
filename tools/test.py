"""Evaluate a checkpoint with the config's test split and metric.

Example:
    python tools/test.py CONFIG CHECKPOINT --show-dir vis --work-dir out
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
from tools.cli.config import build_test_config, init_cpu_launcher  # noqa: E402
from tools.cli.strict_loading import (  # noqa: E402
    CheckpointMismatchError,
    run_loading_strictly,
)


def parse_args():
    parser = argparse.ArgumentParser(description='Test a checkpoint')
    parser.add_argument('config', help='test config file path')
    parser.add_argument('checkpoint', help='checkpoint file')
    parser.add_argument(
        '--non-strict',
        action='store_true',
        help='accept a checkpoint that does not fill the model exactly '
        '(missing, unexpected or size-mismatched keys are only logged)',
    )
    parser.add_argument('--work-dir', help='the dir to save logs and metrics')
    parser.add_argument(
        '--out',
        help='segmentation: directory where predictions are saved as PNG; '
        'classification: a .pkl file of the predictions',
    )
    parser.add_argument(
        '--show-dir', help='directory where painted images are saved'
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
    cfg = build_test_config(
        args.config,
        args.checkpoint,
        work_dir=args.work_dir,
        out=args.out,
        show_dir=args.show_dir,
        cfg_options=args.cfg_options,
        launcher=args.launcher,
    )
    init_cpu_launcher(cfg)
    runner = RUNNERS.build(cfg)
    try:
        run_loading_strictly(
            runner, 'test', strict=not args.non_strict, name=args.checkpoint
        )
    except (CheckpointMismatchError, UntrustedCheckpointError) as error:
        sys.exit(f'error: {error}')


if __name__ == '__main__':
    main()
