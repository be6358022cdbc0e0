"""ResNet weights as a warm start for m-RevNet: what the conversion costs.

The shipped segmentation configs start ``MRevNetV1c`` (``residual_fn=
'block'``, ``gamma=0.9``) from ImageNet ResNet weights. Those weights were
trained for the ResNet, and only ``gamma=0`` with ``'block'`` computes the
ResNet again. This study measures the cost on a task this machine can
train, the handwritten digits of ``docs/classification.md``:

1. **Source**: mmpretrain's ``ResNetV1c`` trained on the digits with the
   recipe of ``configs/digits/resnetv1c18_1xb64-digits.py`` (one seed; the
   depth is a parameter).
2. **Conversion**: its checkpoint goes through the project's converter
   (:func:`tools.model_converters.convert.convert_checkpoint`, mmpretrain
   source, ``strict=True``) into ``MRevNetV1c``; the classifier head is the
   ResNet's, so the converted classifier can be evaluated as it is.
3. **Arms** (:func:`default_arms`): the converted network with
   ``residual_fn='block'`` at gamma 0, 0.5, 0.9, 0.99 and ``'branch'`` at
   0.5, 0.9, 0.99 (``'branch'`` at gamma 0 is not the ResNet: the identity
   is missing); the same network with a linear gamma warm-up from 0 to the
   target over the first fine-tune epoch (:class:`GammaWarmupHook`; on
   the shipped setting, ``'block'`` 0.9, only); the
   ResNet itself, fine-tuned the same way (continuation); and m-RevNet from
   scratch (``'branch'``, gamma 0.9, the project's from-scratch default)
   with the same number of iterations.
4. **Fine-tune** of fixed length for every arm and seed: SGD (momentum 0.9,
   Nesterov, weight decay 5e-4, batch 64, the recipe's augmentation),
   cosine decay from ``finetune_lr`` to 0, no learning-rate warm-up. The
   scratch arm uses the recipe's own schedule (lr 0.1, linear warm-up over
   the first epoch, cosine decay), compressed to the same length: a
   fine-tuning learning rate would handicap a random initialisation.
   Top-1 on the validation split is measured before the first iteration
   ("at conversion") and after every epoch.
5. Several seeds (data order and augmentation; the initialisation too for
   the scratch arm); the table reports every seed and the median.

Every fine-tune runs with ``memory_saving=False``: ``gamma=0`` requires it,
the memory-saving backward gives the same gradients (tested to 1e-10 in
float64), and the plain path is the cheaper one on a CPU.

:func:`run_study` drives mmengine's ``Runner`` in-process and returns the
results; ``tools/analysis_tools/warm_start.py`` is the command line.
"""

import copy
import json
import os
import os.path as osp
import statistics
import subprocess
import time
import uuid
from dataclasses import asdict, dataclass
from typing import Dict, List, Optional, Sequence

import torch
from mmengine.config import Config, ConfigDict
from mmengine.hooks import Hook

REPO = osp.dirname(osp.dirname(osp.abspath(__file__)))
DIGITS_CONFIG = osp.join(
    REPO, 'configs', 'digits', 'resnetv1c18_1xb64-digits.py'
)

__all__ = [
    'Arm',
    'GammaWarmupHook',
    'default_arms',
    'pretrain_source',
    'convert_source',
    'finetune',
    'summarize',
    'format_markdown',
    'plot_curves',
    'run_study',
]


@dataclass(frozen=True)
class Arm:
    """One way of starting the fine-tune.

    Attributes:
        name (str): Label in the tables.
        kind (str): ``'resnet'`` (the source ResNet, continued),
            ``'converted'`` (the converted m-RevNet) or ``'scratch'``
            (m-RevNet, random initialisation).
        gamma (float, optional): Target momentum of m-RevNet arms.
        residual_fn (str, optional): ``'block'`` or ``'branch'``.
        warmup_iters (int): Iterations of the linear gamma warm-up from 0;
            0 is none.
    """

    name: str
    kind: str
    gamma: Optional[float] = None
    residual_fn: Optional[str] = None
    warmup_iters: int = 0


def default_arms(warmup_iters: int) -> List[Arm]:
    """The arms of the protocol.

    Args:
        warmup_iters (int): Length of the gamma warm-up of the warm-up arms
            (the protocol uses one fine-tune epoch).

    Returns:
        list[Arm]: ResNet continuation, ``'block'`` at gamma 0, 0.5, 0.9,
        0.99, ``'branch'`` at 0.5, 0.9, 0.99, ``'block'`` 0.9 with the
        gamma warm-up, m-RevNet from scratch.
    """
    arms = [Arm('ResNet (continued)', 'resnet')]
    for gamma in (0.0, 0.5, 0.9, 0.99):
        arms.append(Arm(f'block {gamma:g}', 'converted', gamma, 'block'))
    for gamma in (0.5, 0.9, 0.99):
        arms.append(Arm(f'branch {gamma:g}', 'converted', gamma, 'branch'))
    # The warm-up is tried on the shipped setting only (compute budget).
    arms.append(
        Arm('block 0.9 + warm-up', 'converted', 0.9, 'block', warmup_iters)
    )
    arms.append(Arm('m-RevNet scratch (branch 0.9)', 'scratch', 0.9, 'branch'))
    return arms


class GammaWarmupHook(Hook):
    """Raise every momentum stage's gamma linearly from 0 to the target.

    Before training iteration ``i`` (0-based) each stage gets ``gamma =
    target * min(1, i / warmup_iters)`` through ``stage.configure`` (the
    validated way to change a stage's settings, which also re-plans the
    stored states of a memory-saving stage). With ``memory_saving=True``
    gamma must stay above 0, so the schedule starts at ``min_gamma``.

    Args:
        target (float): Gamma after the warm-up.
        warmup_iters (int): Iterations of the ramp.
        min_gamma (float): Smallest gamma set (0 is allowed only without
            memory saving). Defaults to 0.
    """

    priority = 'HIGH'

    def __init__(self, target: float, warmup_iters: int, min_gamma=0.0):
        if warmup_iters < 1:
            raise ValueError(f'warmup_iters must be >= 1, got {warmup_iters}')
        self.target = float(target)
        self.warmup_iters = int(warmup_iters)
        self.min_gamma = float(min_gamma)
        self.history: List[float] = []

    def gamma_at(self, iteration: int) -> float:
        """Gamma for training iteration ``iteration`` (0-based)."""
        ramp = self.target * min(1.0, iteration / self.warmup_iters)
        return max(self.min_gamma, ramp)

    def before_train_iter(self, runner, batch_idx, data_batch=None):
        from mmrevnet.engine import momentum_stages

        gamma = self.gamma_at(runner.iter)
        for stage in momentum_stages(runner.model).values():
            if stage.gamma != gamma:
                stage.configure(gamma=gamma)
        self.history.append(gamma)


class _StartHook(Hook):
    """Load the starting weights, then record top-1 before any update.

    Loading happens in ``before_train`` because ``Runner.train``
    initialises the model's weights first; ``strict=True`` makes any
    converter mistake an error instead of a silently random tensor.
    """

    priority = 'VERY_HIGH'

    def __init__(self, state_dict: Optional[dict]):
        self.state_dict = state_dict
        self.top1: List[float] = []

    def before_train(self, runner):
        if self.state_dict is not None:
            model = runner.model
            model.load_state_dict(self.state_dict, strict=True)
        runner.val_loop.run()

    def after_val_epoch(self, runner, metrics=None):
        self.top1.append(float(metrics['accuracy/top1']))


def _backbone(arm: Arm, depth: int) -> dict:
    if arm.kind == 'resnet':
        return dict(
            type='ResNetV1c',
            depth=depth,
            num_stages=4,
            out_indices=(3,),
            style='pytorch',
        )
    return dict(
        type='MRevNetV1c',
        depth=depth,
        num_stages=4,
        out_indices=(3,),
        style='pytorch',
        gamma=arm.gamma,
        residual_fn=arm.residual_fn,
        memory_saving=False,
    )


def _schedule(epochs: int, warmup: bool) -> list:
    cosine_begin = 1 if warmup else 0
    schedule = []
    if warmup:
        schedule.append(
            dict(
                type='LinearLR',
                start_factor=0.1,
                by_epoch=True,
                begin=0,
                end=1,
                convert_to_iter_based=True,
            )
        )
    if epochs <= cosine_begin:
        return schedule
    schedule.append(
        dict(
            type='CosineAnnealingLR',
            T_max=max(1, epochs - cosine_begin),
            eta_min=0.0,
            by_epoch=True,
            begin=cosine_begin,
            end=epochs,
            convert_to_iter_based=True,
        )
    )
    return schedule


def _config(
    data_root: str,
    work_dir: str,
    backbone: dict,
    epochs: int,
    lr: float,
    lr_warmup: bool,
    seed: int,
    val_interval: int,
    save_checkpoint: bool,
    base_config: str = DIGITS_CONFIG,
) -> Config:
    from tools.cli.config import build_train_config

    cfg = build_train_config(base_config, work_dir=work_dir)
    cfg.model.backbone = ConfigDict(backbone)
    for loader in (cfg.train_dataloader, cfg.val_dataloader):
        loader.dataset.data_root = data_root
    cfg.test_dataloader = cfg.test_evaluator = cfg.test_cfg = None
    cfg.optim_wrapper.optimizer.lr = lr
    cfg.param_scheduler = _schedule(epochs, lr_warmup)
    cfg.train_cfg = ConfigDict(
        by_epoch=True, max_epochs=epochs, val_interval=val_interval
    )
    cfg.randomness = ConfigDict(seed=seed, deterministic=False)
    cfg.default_hooks.logger.interval = 10**6
    if save_checkpoint:
        cfg.default_hooks.checkpoint = ConfigDict(
            type='CheckpointHook', interval=epochs, max_keep_ckpts=1
        )
    else:
        cfg.default_hooks.checkpoint = None
    # Many runners live in one process: unique names keep their loggers,
    # message hubs and visualizers apart (mmengine keys them by name).
    cfg.experiment_name = f'warm_start_{uuid.uuid4().hex[:12]}'
    cfg.log_level = 'WARNING'
    return cfg


def _train(cfg: Config, hooks: Sequence[Hook]) -> float:
    from mmengine.registry import RUNNERS

    runner = RUNNERS.build(cfg)
    for hook in hooks:
        runner.register_hook(hook)
    start = time.perf_counter()
    runner.train()
    seconds = time.perf_counter() - start
    # Close the file handlers of this run's logger: dozens of runs share
    # the process.
    for handler in list(runner.logger.handlers):
        if hasattr(handler, 'baseFilename'):
            handler.close()
            runner.logger.removeHandler(handler)
    return seconds


def pretrain_source(
    data_root: str,
    work_dir: str,
    depth: int,
    epochs: int,
    seed: int = 0,
    lr: float = 0.1,
) -> dict:
    """Train the source ResNetV1c with the digits recipe.

    A checkpoint already in ``work_dir`` (same settings, recorded in
    ``source.json``) is reused.

    Returns:
        dict: ``checkpoint``, ``top1`` (after each epoch), ``seconds``,
        ``reused`` and the settings.
    """
    settings = dict(depth=depth, epochs=epochs, seed=seed, lr=lr)
    record = osp.join(work_dir, 'source.json')
    checkpoint = osp.join(work_dir, f'epoch_{epochs}.pth')
    if osp.isfile(record) and osp.isfile(checkpoint):
        with open(record, encoding='utf-8') as f:
            saved = json.load(f)
        if saved.get('settings') == settings:
            return dict(saved, reused=True)
    cfg = _config(
        data_root,
        work_dir,
        _backbone(Arm('ResNet', 'resnet'), depth),
        epochs,
        lr,
        True,
        seed,
        val_interval=max(1, epochs // 3),
        save_checkpoint=True,
    )
    recorder = _StartHook(None)
    seconds = _train(cfg, [recorder])
    result = dict(
        settings=settings,
        checkpoint=checkpoint,
        top1=recorder.top1[1:],
        seconds=seconds,
    )
    with open(record, 'w', encoding='utf-8') as f:
        json.dump(result, f, indent=1)
    return dict(result, reused=False)


def convert_source(checkpoint: str, depth: int, dst: str) -> Dict:
    """Whole-classifier state dicts for the ResNet and the converted m-RevNet.

    The backbone goes through the project's converter (mmpretrain source,
    ``MRevNetV1c``, strict); the head is the ResNet's, unchanged.

    Returns:
        dict: ``resnet`` and ``mrevnet`` state dicts (``backbone.*`` and
        ``head.*``) and the converter's ``report``.
    """
    from mmrevnet.engine import load_runner_checkpoint
    from tools.model_converters.convert import convert_checkpoint

    source = load_runner_checkpoint(checkpoint)['state_dict']
    result = convert_checkpoint(
        checkpoint,
        dst,
        depth=depth,
        variant='v1c',
        source='mmpretrain',
        strict=True,
        overwrite=True,
    )
    head = {k: v for k, v in source.items() if k.startswith('head.')}
    mrevnet = {f'backbone.{k}': v for k, v in result.state_dict.items()}
    mrevnet.update(head)
    return dict(
        resnet=dict(source),
        mrevnet=mrevnet,
        report=dict(
            dropped=len(result.dropped_keys),
            renamed=len(result.renamed),
            missing=len(result.missing_keys),
            unexpected=len(result.unexpected_keys),
        ),
    )


def finetune(
    arm: Arm,
    seed: int,
    data_root: str,
    work_dir: str,
    depth: int,
    epochs: int,
    lr: float,
    weights: Dict[str, dict],
    scratch_lr: float = 0.1,
) -> dict:
    """Fine-tune one arm with one seed.

    Returns:
        dict: ``top1`` (before training, then after every epoch),
        ``seconds`` and, for warm-up arms, the gamma of every iteration.
    """
    state = None
    if arm.kind == 'resnet':
        state = copy.deepcopy(weights['resnet'])
    elif arm.kind == 'converted':
        state = copy.deepcopy(weights['mrevnet'])
    backbone = _backbone(arm, depth)
    if arm.warmup_iters:
        backbone['gamma'] = 0.0
    scratch = arm.kind == 'scratch'
    cfg = _config(
        data_root,
        work_dir,
        backbone,
        epochs,
        scratch_lr if scratch else lr,
        scratch,
        seed,
        val_interval=1,
        save_checkpoint=False,
    )
    recorder = _StartHook(state)
    hooks = [recorder]
    warmup = None
    if arm.warmup_iters:
        warmup = GammaWarmupHook(arm.gamma, arm.warmup_iters)
        hooks.append(warmup)
    seconds = _train(cfg, hooks)
    result = dict(top1=recorder.top1, seconds=seconds)
    if warmup is not None:
        result['gamma_schedule'] = warmup.history
    return result


def _median(values: Sequence[float]) -> float:
    return float(statistics.median(values))


def summarize(results: dict) -> List[dict]:
    """Per-arm rows: top-1 at conversion and after each epoch, per seed.

    Returns:
        list[dict]: ``arm``, ``per_seed`` (seed -> top-1 list) and
        ``median`` (the median over seeds at each evaluation).
    """
    rows = []
    for arm in results['arms']:
        runs = {
            run['seed']: run['top1']
            for run in results['runs']
            if run['arm'] == arm['name']
        }
        if not runs:
            continue
        points = len(next(iter(runs.values())))
        median = [
            _median([top1[i] for top1 in runs.values()]) for i in range(points)
        ]
        rows.append(dict(arm=arm['name'], per_seed=runs, median=median))
    return rows


def format_markdown(results: dict) -> str:
    """The tables of ``results.md``."""
    rows = summarize(results)
    seeds = results['settings']['seeds']
    epochs = results['settings']['finetune_epochs']
    source = results['source']
    lines = [
        '### Fine-tune: top-1 (%) on the digits validation split',
        '',
        f'Source: ResNetV1c-{results["settings"]["depth"]}, '
        f'{results["settings"]["pretrain_epochs"]} epochs, top-1 '
        + ', '.join(f'{v:.2f}' for v in source['top1'])
        + f' (final {source["top1"][-1]:.2f}). Fine-tune: '
        f'{epochs} epoch(s), seeds {seeds}.',
        '',
        '| start | at conversion | '
        + ' | '.join(f'seed {s}: final' for s in seeds)
        + ' | median after epoch '
        + ', '.join(str(e) for e in range(1, epochs + 1))
        + ' | median final |',
        '|---|---|' + '---|' * len(seeds) + '---|---|',
    ]
    for row in rows:
        at_start = sorted({top1[0] for top1 in row['per_seed'].values()})
        start = ' / '.join(f'{v:.2f}' for v in at_start)
        finals = ' | '.join(
            f'{row["per_seed"][s][-1]:.2f}' if s in row['per_seed'] else '-'
            for s in seeds
        )
        curve = ', '.join(f'{v:.2f}' for v in row['median'][1:])
        lines.append(
            f'| {row["arm"]} | {start} | {finals} | {curve} '
            f'| **{row["median"][-1]:.2f}** |'
        )
    lines.append('')
    lines.append(
        f'Wall time of the study: {results["seconds"]:.0f} s '
        f'(source training {source["seconds"]:.0f} s'
        + (', reused' if source.get('reused') else '')
        + ').'
    )
    return '\n'.join(lines) + '\n'


def plot_curves(results: dict, path: str) -> None:
    """Median top-1 against fine-tune epoch for every arm (PNG)."""
    import matplotlib

    matplotlib.use('Agg')
    import matplotlib.pyplot as plt

    rows = summarize(results)
    fig, (full, zoom) = plt.subplots(1, 2, figsize=(12, 4.5))
    styles = {'block': '-', 'branch': '--'}
    for row in rows:
        name = row['arm']
        style = ':' if 'warm-up' in name else '-'
        for key, value in styles.items():
            if name.startswith(key) and 'warm-up' not in name:
                style = value
        marker = 'o' if name.startswith(('ResNet', 'm-RevNet')) else '.'
        epochs = list(range(len(row['median'])))
        for axis in (full, zoom):
            axis.plot(epochs, row['median'], style, marker=marker, label=name)
    source = results['source']['top1'][-1]
    for axis in (full, zoom):
        axis.axhline(source, color='grey', lw=0.8)
        axis.set_xlabel('fine-tune epoch (0 = at conversion)')
        axis.set_ylabel('top-1 (%), median over seeds')
        axis.grid(alpha=0.3)
    full.set_title('all arms')
    zoom.set_title('zoom: near the source ResNet (grey line)')
    zoom.set_ylim(source - 6, min(100.5, source + 1.5))
    full.legend(fontsize=7, loc='lower right')
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _git_state() -> dict:
    def git(*args):
        try:
            return subprocess.run(
                ['git', *args],
                cwd=REPO,
                capture_output=True,
                text=True,
                check=True,
            ).stdout.strip()
        except (OSError, subprocess.CalledProcessError):
            return None

    status = git('status', '--porcelain', '--untracked-files=no')
    return dict(commit=git('rev-parse', 'HEAD'), dirty=bool(status))


def run_study(
    data_root: str,
    work_dir: str,
    out_dir: Optional[str] = None,
    depth: int = 18,
    pretrain_epochs: int = 15,
    finetune_epochs: int = 2,
    finetune_lr: float = 0.01,
    seeds: Sequence[int] = (0, 1, 2),
    arms: Optional[Sequence[Arm]] = None,
    warmup_iters: Optional[int] = None,
    plot: bool = True,
    log=print,
) -> dict:
    """Run the protocol and return (and write) its results.

    Args:
        data_root (str): The exported digits (``train``/``val`` folders).
        work_dir (str): Source checkpoint, converted checkpoint, run logs.
        out_dir (str, optional): Where ``results.json``, ``results.md`` and
            ``curves.png`` go; None writes nothing. Defaults to None.
        depth (int): Depth of ResNetV1c / MRevNetV1c. Defaults to 18.
        pretrain_epochs (int): Epochs of the source training.
            Defaults to 15.
        finetune_epochs (int): Epochs of every fine-tune. Defaults to 2.
        finetune_lr (float): Peak learning rate of the fine-tunes.
            Defaults to 0.01.
        seeds (Sequence[int]): Fine-tune seeds. Defaults to (0, 1, 2).
        arms (Sequence[Arm], optional): None runs :func:`default_arms`.
        warmup_iters (int, optional): Gamma warm-up length of the default
            warm-up arms; None is one fine-tune epoch.
        plot (bool): Write ``curves.png``. Defaults to True.
        log (callable): Progress messages. Defaults to ``print``.

    Returns:
        dict: ``settings``, ``source``, ``conversion``, ``arms``, ``runs``
        (one entry per arm and seed), ``seconds`` and ``git``.
    """
    start = time.perf_counter()
    os.makedirs(work_dir, exist_ok=True)
    source_dir = osp.join(work_dir, f'source_resnetv1c{depth}')
    source = pretrain_source(data_root, source_dir, depth, pretrain_epochs)
    log(
        f'source ResNetV1c-{depth}: top-1 {source["top1"]} '
        f'({source["seconds"]:.0f} s{", reused" if source["reused"] else ""})'
    )
    weights = convert_source(
        source['checkpoint'],
        depth,
        osp.join(work_dir, f'mrevnetv1c{depth}_converted.pth'),
    )
    if warmup_iters is None:
        images = sum(
            len(files) for _, _, files in os.walk(osp.join(data_root, 'train'))
        )
        warmup_iters = max(1, -(-images // 64))  # one epoch of batch 64
    arms = list(arms) if arms is not None else default_arms(warmup_iters)
    runs = []
    for seed in seeds:
        for arm in arms:
            run = finetune(
                arm,
                seed,
                data_root,
                osp.join(work_dir, 'runs'),
                depth,
                finetune_epochs,
                finetune_lr,
                weights,
            )
            run = dict(arm=arm.name, seed=seed, **run)
            runs.append(run)
            log(
                f'seed {seed} {arm.name}: top-1 '
                + ', '.join(f'{v:.2f}' for v in run['top1'])
                + f' ({run["seconds"]:.0f} s)'
            )
    results = dict(
        settings=dict(
            depth=depth,
            pretrain_epochs=pretrain_epochs,
            finetune_epochs=finetune_epochs,
            finetune_lr=finetune_lr,
            seeds=list(seeds),
            warmup_iters=warmup_iters,
            memory_saving=False,
            torch=torch.__version__,
            threads=torch.get_num_threads(),
        ),
        source={k: v for k, v in source.items() if k != 'checkpoint'},
        conversion=weights['report'],
        arms=[asdict(arm) for arm in arms],
        runs=runs,
        seconds=time.perf_counter() - start,
        git=_git_state(),
    )
    if out_dir is not None:
        os.makedirs(out_dir, exist_ok=True)
        with open(osp.join(out_dir, 'results.json'), 'w') as f:
            json.dump(results, f, indent=1)
        with open(osp.join(out_dir, 'results.md'), 'w') as f:
            f.write(format_markdown(results))
        if plot:
            plot_curves(results, osp.join(out_dir, 'curves.png'))
    return results
