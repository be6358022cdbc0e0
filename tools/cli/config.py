"""Turn command-line options into a Runner config (shared by the tools)."""

import logging
import os.path as osp
from typing import Optional

import torch
from mmengine.config import Config

from mmrevnet.engine.distributed import (
    cpu_model_wrapper_cfg,
    init_cpu_process_group,
)


def _config_stem(config: str) -> str:
    return osp.splitext(osp.basename(config))[0]


def _enable_amp(cfg: Config) -> None:
    wrapper = cfg.optim_wrapper.get('type', 'OptimWrapper')
    if wrapper in ('AmpOptimWrapper', 'MRevNetBF16CPUAmpOptimWrapper'):
        return
    if wrapper != 'OptimWrapper':
        raise ValueError(
            f'--amp needs optim_wrapper.type OptimWrapper, got {wrapper!r}'
        )
    if torch.cuda.is_available():
        cfg.optim_wrapper.type = 'AmpOptimWrapper'
        cfg.optim_wrapper.setdefault('loss_scale', 'dynamic')
    else:
        cfg.optim_wrapper.type = 'MRevNetBF16CPUAmpOptimWrapper'


def sync_bn_to_bn(cfg) -> int:
    """Replace every ``SyncBN`` norm config by ``BN``, in place.

    Returns:
        int: How many norm configs were replaced.
    """
    replaced = 0
    if isinstance(cfg, dict):
        if cfg.get('type') == 'SyncBN':
            cfg['type'] = 'BN'
            replaced += 1
        for value in cfg.values():
            replaced += sync_bn_to_bn(value)
    elif isinstance(cfg, (list, tuple)):
        for value in cfg:
            replaced += sync_bn_to_bn(value)
    return replaced


def _load_config(
    config: str, work_dir: Optional[str], cfg_options: Optional[dict]
) -> Config:
    """The config with ``--cfg-options`` and the work dir applied."""
    cfg = Config.fromfile(config)
    if cfg_options:
        cfg.merge_from_dict(cfg_options)
    if work_dir is not None:
        cfg.work_dir = work_dir
    elif cfg.get('work_dir') is None:
        cfg.work_dir = osp.join('./work_dirs', _config_stem(config))
    return cfg


def _use_safe_loading_runner(cfg: Config) -> None:
    # A config that names its own runner keeps it.
    if cfg.get('runner_type') is None:
        cfg.runner_type = 'MRevNetRunner'


def _runs_on_cpu_processes(cfg: Config) -> bool:
    return cfg.launcher != 'none' and not torch.cuda.is_available()


def init_cpu_launcher(cfg: Config) -> None:
    """Create the gloo process group of a multi-process run without GPUs.

    mmengine's ``init_dist`` needs CUDA; its ``Runner`` skips it when a
    process group already exists. Does nothing for ``launcher='none'`` or
    where CUDA is available.

    Args:
        cfg (Config): A config from :func:`build_train_config` or
            :func:`build_test_config`.
    """
    if _runs_on_cpu_processes(cfg):
        init_cpu_process_group(cfg.env_cfg.dist_cfg.backend)


def _prepare_launcher(cfg: Config, launcher: str) -> None:
    cfg.launcher = launcher
    if not _runs_on_cpu_processes(cfg):
        return
    # NCCL needs GPUs; without them gloo is the only choice.
    cfg.setdefault('env_cfg', {}).setdefault('dist_cfg', {})
    cfg.env_cfg.dist_cfg.backend = 'gloo'
    # SyncBatchNorm only runs on GPUs: on CPUs each process normalises with
    # its own batch statistics.
    if sync_bn_to_bn(cfg.model):
        from mmengine.logging import print_log

        print_log(
            'SyncBN is unavailable without CUDA: every SyncBN of the model '
            'config is BN in this multi-process CPU run (each process '
            'normalises with its own batch statistics)',
            logger='current',
            level=logging.WARNING,
        )
    cfg.model_wrapper_cfg = cpu_model_wrapper_cfg(
        cfg.get('model_wrapper_cfg'),
        cfg.get('find_unused_parameters', False),
    )


def _add_output(cfg: Config, out: str) -> None:
    evaluators = cfg.test_evaluator
    if isinstance(evaluators, dict) and evaluators.get('type') == 'IoUMetric':
        evaluators['output_dir'] = out
        evaluators['keep_results'] = True
        return
    # Only mmseg's IoUMetric takes output_dir; mmpretrain's tools dump the
    # predictions with DumpResults instead.
    if not out.endswith(('.pkl', '.pickle')):
        raise ValueError(
            f'--out must be a .pkl or .pickle file for the evaluator(s) '
            f'{evaluators!r} (a directory only for IoUMetric), got {out!r}'
        )
    if isinstance(evaluators, dict):
        evaluators = [evaluators]
    cfg.test_evaluator = list(evaluators) + [
        dict(type='DumpResults', out_file_path=out)
    ]


def build_train_config(
    config: str,
    work_dir: Optional[str] = None,
    resume=False,
    amp: bool = False,
    cfg_options: Optional[dict] = None,
    launcher: str = 'none',
) -> Config:
    """Config for ``tools/train.py`` (mmseg / mmpretrain conventions).

    Args:
        config (str): Config file.
        work_dir (str, optional): Overrides ``cfg.work_dir``; else
            ``./work_dirs/<config name>``. Defaults to None.
        resume (bool | str): True resumes from the latest checkpoint in the
            work dir, a path resumes from that checkpoint. Defaults to False.
        amp (bool): Mixed precision (fp16 + loss scaling on CUDA, bf16 on
            CPU). Defaults to False.
        cfg_options (dict, optional): Overrides, as ``--cfg-options``.
        launcher (str): 'none', 'pytorch', 'slurm' or 'mpi'.
            Defaults to 'none'.

    Returns:
        Config: Ready for ``RUNNERS.build`` (``runner_type`` defaults to
        ``'MRevNetRunner'``), after :func:`init_cpu_launcher` for a
        multi-process run without GPUs. Building it has no side effect.
    """
    cfg = _load_config(config, work_dir, cfg_options)
    if amp:
        _enable_amp(cfg)
    if resume is True:
        from mmengine.runner import find_latest_checkpoint

        # mmengine would log "Auto resumed from the latest checkpoint None"
        # and start from scratch; say what happens instead.
        if find_latest_checkpoint(cfg.work_dir) is None:
            print(
                f'--resume: no checkpoint found in {cfg.work_dir} (no '
                f'last_checkpoint file); training starts from scratch'
            )
        cfg.resume = True
        cfg.load_from = None
    elif resume:
        cfg.resume = True
        cfg.load_from = resume
    _use_safe_loading_runner(cfg)
    _prepare_launcher(cfg, launcher)
    return cfg


def build_test_config(
    config: str,
    checkpoint: str,
    work_dir: Optional[str] = None,
    out: Optional[str] = None,
    show_dir: Optional[str] = None,
    cfg_options: Optional[dict] = None,
    launcher: str = 'none',
) -> Config:
    """Config for ``tools/test.py``.

    Args:
        config (str): Config file.
        checkpoint (str): Checkpoint to evaluate.
        work_dir (str, optional): Where logs and metrics go.
        out (str, optional): Segmentation (``IoUMetric``): directory for
            the predictions as PNG (``output_dir``, format only off).
            Other evaluators (classification): a ``.pkl`` file of the
            predictions, written by mmengine's ``DumpResults``.
        show_dir (str, optional): Directory for painted predictions.
        cfg_options (dict, optional): Overrides, as ``--cfg-options``.
        launcher (str): 'none', 'pytorch', 'slurm' or 'mpi'.

    Returns:
        Config: Ready for ``RUNNERS.build(cfg).test()``.
    """
    cfg = _load_config(config, work_dir, cfg_options)
    cfg.load_from = checkpoint
    if show_dir is not None:
        hooks = cfg.default_hooks
        if 'visualization' not in hooks:
            raise ValueError(
                '--show-dir needs a "visualization" hook in default_hooks'
            )
        hooks.visualization.draw = True
        hooks.visualization.interval = 1
        cfg.visualizer.save_dir = show_dir
    if out is not None:
        _add_output(cfg, out)
    _use_safe_loading_runner(cfg)
    _prepare_launcher(cfg, launcher)
    return cfg
