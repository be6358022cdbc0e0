"""What mmseg's and mmpretrain's ``tools/train.py`` do, in a few lines.

Their ``main()`` loads the config, sets ``cfg.launcher`` from
``--launcher``, applies ``--cfg-options`` and ``--work-dir``, then builds
``Runner.from_cfg(cfg)`` when the config names no ``runner_type`` and
``RUNNERS.build(cfg)`` when it does, and trains. This script makes the
same calls (it does not import mmrevnet; the config's ``custom_imports``
does), so the tests exercise their launch path without their sources.
Run it under ``python -m torch.distributed.run ... --launcher pytorch``.
"""

import argparse
import os

from mmengine.config import Config, DictAction
from mmengine.registry import RUNNERS
from mmengine.runner import Runner


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument('config')
    parser.add_argument('--work-dir')
    parser.add_argument('--cfg-options', nargs='+', action=DictAction)
    parser.add_argument('--launcher', default='none')
    parser.add_argument('--local_rank', '--local-rank', type=int, default=0)
    args = parser.parse_args()
    os.environ.setdefault('LOCAL_RANK', str(args.local_rank))
    cfg = Config.fromfile(args.config)
    cfg.launcher = args.launcher
    if args.cfg_options is not None:
        cfg.merge_from_dict(args.cfg_options)
    cfg.work_dir = args.work_dir
    if 'runner_type' in cfg:
        runner = RUNNERS.build(cfg)
    else:
        runner = Runner.from_cfg(cfg)
    wrapped = type(runner.model).__name__
    print(f'runner: {type(runner).__name__}, model: {wrapped}')
    runner.train()


if __name__ == '__main__':
    main()
