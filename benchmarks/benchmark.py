"""Memory and speed of m-RevNet against ResNetV1c, backbones and segmentors.

For every depth, model variant and head it measures, in one process:

1. activation memory: bytes of distinct storages saved for backward in one
   training step (:class:`~benchmarks.memory.SavedTensorCounter`,
   parameters excluded); deterministic, on any device;
2. step peak: the peak of live tensor bytes during one training step
   (forward + backward) above what was live before it, parameters'
   gradients left out (:func:`~benchmarks.memory.step_peak`,
   ``step_peak_mib``); deterministic, on any device;
3. on CUDA, of the same step: ``torch.cuda.max_memory_allocated()``
   after ``reset_peak_memory_stats()``, once as is (``cuda_peak_mib``,
   which includes the weights of every model of the group held on the
   device) and once above what was allocated before the step
   (``cuda_step_peak_mib``: activations, gradients and workspaces of
   this model's step alone), after one untimed step;
4. the time of a training step (forward + backward), median of several
   runs after warm-up, as a ratio to plain ResNetV1c of the same depth and
   head. Variants are timed round-robin (one step of each, then again), so
   drift of the machine's speed affects all of them alike.
"""

import copy
import statistics
import time
from typing import Callable, Dict, List, Optional, Sequence

import torch
from torch import nn

from benchmarks.memory import SavedTensorCounter, step_peak

#: Backbone variants compared: name -> backbone overrides.
VARIANTS = {
    'ResNetV1c': dict(type='ResNetV1c'),
    'ResNetV1c (with_cp)': dict(type='ResNetV1c', with_cp=True),
    'MRevNetV1c (memory_saving=False)': dict(
        type='MRevNetV1c', memory_saving=False
    ),
    'MRevNetV1c': dict(type='MRevNetV1c', memory_saving=True),
}
BASELINE = 'ResNetV1c'

#: Segmentor variants: name -> (backbone variant, what changes in the
#: segmentor). ``'checkpoint'``: mmengine's activation checkpointing
#: (``turn_on_activation_checkpointing``) of every ``ConvModule`` of the
#: heads, where it runs (it is reentrant: a head called with a list of
#: tensors would give the backbone no gradient); ``'head'``/``'module'``:
#: mmseg's EncoderDecoder with the heads recomputed at that granularity
#: and nothing else (what ``MRevNetEncoderDecoder`` did before its
#: concat-free bottlenecks and banded losses); ``'segmentor'``:
#: ``model.type='MRevNetEncoderDecoder'`` with its defaults. Not measured
#: by default; with ``head='backbone'`` they equal the backbone variant.
HEAD_VARIANTS = {
    'ResNetV1c (with_cp) + checkpointed heads': (
        'ResNetV1c (with_cp)',
        'checkpoint',
    ),
    'MRevNetV1c + memory-saving heads': ('MRevNetV1c', 'head'),
    'MRevNetV1c + memory-saving heads (module)': ('MRevNetV1c', 'module'),
    'MRevNetV1c + MRevNetEncoderDecoder': ('MRevNetV1c', 'segmentor'),
}

#: The whole-segmentor grid: plain, with_cp, with_cp + checkpointed heads,
#: the backbone swap, the default segmentor.
SEGMENTOR_VARIANTS = (
    'ResNetV1c',
    'ResNetV1c (with_cp)',
    'ResNetV1c (with_cp) + checkpointed heads',
    'MRevNetV1c',
    'MRevNetV1c + MRevNetEncoderDecoder',
)

_D8 = dict(
    dilations=(1, 1, 2, 4), strides=(1, 2, 1, 1), contract_dilation=True
)
_PLAIN = dict(dilations=(1, 1, 1, 1), strides=(1, 2, 2, 2))

#: Heads: name -> (mmseg base model config or None for the backbone alone,
#: layout of the backbone).
HEADS = {
    'backbone': (None, _D8),
    'pspnet': ('mmseg::_base_/models/pspnet_r50-d8.py', _D8),
    'deeplabv3': ('mmseg::_base_/models/deeplabv3_r50-d8.py', _D8),
    'upernet': ('mmseg::_base_/models/upernet_r50.py', _PLAIN),
}


def _backbone_cfg(variant: str, depth: int, layout: dict) -> dict:
    cfg = dict(
        depth=depth,
        num_stages=4,
        out_indices=(0, 1, 2, 3),
        norm_cfg=dict(type='BN', requires_grad=True),
        norm_eval=False,
        style='pytorch',
        **layout,
    )
    cfg.update(VARIANTS[HEAD_VARIANTS.get(variant, (variant,))[0]])
    return cfg


def build_benchmark_model(
    variant: str, depth: int, head: str, num_classes: int = 19
) -> nn.Module:
    """A backbone or an mmseg segmentor with the given backbone variant.

    Args:
        variant (str): A key of :data:`VARIANTS` or :data:`HEAD_VARIANTS`.
        depth (int): 50, 101 or 152.
        head (str): A key of :data:`HEADS`.
        num_classes (int): Classes of the segmentation heads.

    Returns:
        nn.Module: The model, in train mode, BN instead of SyncBN.
    """
    from mmengine.hub import get_config
    from mmengine.registry import init_default_scope
    from mmseg.registry import MODELS

    from tools.cli.config import sync_bn_to_bn

    init_default_scope('mmseg')
    base, layout = HEADS[head]
    backbone = _backbone_cfg(variant, depth, layout)
    if base is None:
        model = MODELS.build(backbone)
    else:
        cfg = get_config(base)
        model_cfg = copy.deepcopy(cfg.model.to_dict())
        model_cfg['pretrained'] = None
        model_cfg['backbone'] = backbone
        model_cfg.pop('data_preprocessor', None)
        sync_bn_to_bn(model_cfg)
        for key in ('decode_head', 'auxiliary_head'):
            if model_cfg.get(key):
                model_cfg[key]['num_classes'] = num_classes
        change = HEAD_VARIANTS.get(variant, (None, None))[1]
        if change == 'segmentor':
            model_cfg['type'] = 'MRevNetEncoderDecoder'
        model = MODELS.build(model_cfg)
        if change in ('head', 'module'):
            from mmrevnet.models.segmentors import enable_memory_saving_heads

            enable_memory_saving_heads(model, change)
        elif change == 'checkpoint':
            _checkpoint_heads(model)
    model.train()
    return model


def _checkpoint_heads(model: nn.Module) -> None:
    """mmengine's activation checkpointing of the heads' ConvModules."""
    from mmcv.cnn import ConvModule
    from mmengine.runner.activation_checkpointing import (
        turn_on_activation_checkpointing,
    )

    names = [
        name
        for name, module in model.named_modules()
        if name.split('.')[0] in ('decode_head', 'auxiliary_head')
        and isinstance(module, ConvModule)
    ]
    turn_on_activation_checkpointing(model, names)


def make_step(
    model: nn.Module,
    batch_size: int,
    size: Sequence[int],
    device: str,
    num_classes: int = 19,
    seed: int = 0,
) -> Callable[[], torch.Tensor]:
    """A closure running one forward and returning the scalar loss.

    The backbone alone is trained on the sum of its outputs; a segmentor on
    its own losses (decode and auxiliary heads) with random labels.
    """
    generator = torch.Generator().manual_seed(seed)
    inputs = torch.randn(batch_size, 3, *size, generator=generator).to(device)
    if not hasattr(model, 'loss'):

        def backbone_step():
            return sum(out.float().mean() for out in model(inputs))

        return backbone_step

    from mmengine.structures import PixelData
    from mmseg.structures import SegDataSample

    samples = []
    for _ in range(batch_size):
        labels = torch.randint(
            0, num_classes, (1, *size), generator=generator
        ).to(device)
        sample = SegDataSample(
            metainfo=dict(img_shape=tuple(size), ori_shape=tuple(size))
        )
        sample.gt_sem_seg = PixelData(data=labels)
        samples.append(sample)

    def segmentor_step():
        losses = model.loss(inputs, samples)
        return sum(v for k, v in losses.items() if 'loss' in k)

    return segmentor_step


def activation_bytes(model: nn.Module, step: Callable) -> int:
    """Bytes saved for backward by one training forward (params excluded)."""
    with SavedTensorCounter(exclude=model.parameters()) as counter:
        loss = step()
    del loss
    return counter.bytes


def _live_summary(tensors, top: int = 12) -> List[Dict]:
    """The largest live allocations at the peak, then the rest summed."""
    summary = [
        dict(mib=t.nbytes / 2**20, phase=t.phase, module=t.module, op=t.op)
        for t in tensors[:top]
    ]
    rest = tensors[top:]
    if rest:
        summary.append(
            dict(
                mib=sum(t.nbytes for t in rest) / 2**20,
                phase='',
                module=f'{len(rest)} smaller allocations',
                op='',
            )
        )
    return summary


def _train_step(model: nn.Module, step: Callable, device: str) -> float:
    model.zero_grad(set_to_none=True)
    if device.startswith('cuda'):
        torch.cuda.synchronize()
    start = time.perf_counter()
    step().backward()
    if device.startswith('cuda'):
        torch.cuda.synchronize()
    return time.perf_counter() - start


def run_benchmark(
    depths: Sequence[int] = (50, 101, 152),
    heads: Sequence[str] = ('backbone', 'pspnet', 'deeplabv3', 'upernet'),
    variants: Sequence[str] = tuple(VARIANTS),
    batch_size: int = 2,
    size: Sequence[int] = (128, 256),
    device: str = 'cpu',
    warmup: int = 1,
    repeats: int = 5,
    measure_time: bool = True,
    log: Optional[Callable[[str], None]] = print,
    num_classes: int = 19,
    trace: bool = False,
) -> List[Dict]:
    """Measure every (depth, head, variant); returns one row each.

    Args:
        depths (Sequence[int]): Network depths.
        heads (Sequence[str]): Keys of :data:`HEADS`.
        variants (Sequence[str]): Keys of :data:`VARIANTS` or
            :data:`HEAD_VARIANTS`; must include
            :data:`BASELINE` when ``measure_time``.
        batch_size (int): Batch size. Defaults to 2.
        size (Sequence[int]): Input ``(H, W)``. Defaults to (128, 256).
        device (str): 'cpu' or 'cuda'. Defaults to 'cpu'.
        warmup (int): Untimed steps per model. Defaults to 1.
        repeats (int): Timed steps per model. Defaults to 5.
        measure_time (bool): Time the steps. Defaults to True.
        log (Callable, optional): Progress printer. Defaults to print.
        num_classes (int): Classes of the segmentation heads (19 for
            Cityscapes, 150 for ADE20K). Defaults to 19.
        trace (bool): Trace the step peak to a module
            (``step_peak(trace_modules=True)``): rows get ``peak_site``
            and ``live_at_peak``. Defaults to False.

    Returns:
        list[dict]: Rows with ``depth, head, variant, activation_mib``,
        ``step_peak_mib`` and ``step_grad_mib`` (the parameters' gradients
        it leaves out), ``cuda_peak_mib`` and ``cuda_step_peak_mib`` of
        the same step (None on CPU),
        ``step_seconds`` (median),
        ``time_ratio`` (to the baseline of the same depth and head),
        ``step_times``.
    """
    if measure_time and BASELINE not in variants:
        raise ValueError(f'variants must include {BASELINE!r} for timing')
    rows = []
    for depth in depths:
        for head in heads:
            models, steps, group = {}, {}, []
            for variant in variants:
                torch.manual_seed(0)
                model = build_benchmark_model(
                    variant, depth, head, num_classes
                ).to(device)
                step = make_step(model, batch_size, size, device, num_classes)
                row = dict(
                    depth=depth,
                    head=head,
                    variant=variant,
                    batch_size=batch_size,
                    size=list(size),
                    device=device,
                    activation_mib=activation_bytes(model, step) / 2**20,
                    step_peak_mib=None,
                    step_grad_mib=None,
                    cuda_peak_mib=None,
                    cuda_step_peak_mib=None,
                    step_seconds=None,
                    time_ratio=None,
                    step_times=[],
                )
                if device.startswith('cuda'):
                    # One step first: cuDNN/cuBLAS allocate their
                    # workspaces (and benchmark algorithms) lazily.
                    step().backward()
                peak = step_peak(model, step, trace_modules=trace)
                row['step_peak_mib'] = peak.peak_bytes / 2**20
                if trace:
                    row['peak_site'] = peak.peak_site
                    row['live_at_peak'] = _live_summary(peak.live_at_peak)
                row['step_grad_mib'] = peak.excluded_bytes / 2**20
                if peak.cuda_step_peak_bytes is not None:
                    row['cuda_peak_mib'] = (
                        peak.cuda_start_bytes + peak.cuda_step_peak_bytes
                    ) / 2**20
                    row['cuda_step_peak_mib'] = (
                        peak.cuda_step_peak_bytes / 2**20
                    )
                model.zero_grad(set_to_none=True)
                models[variant], steps[variant] = model, step
                group.append(row)
                if log:
                    log(
                        f'{head:9s} depth {depth:3d} {variant:34s} '
                        f'activations {row["activation_mib"]:8.1f} MiB, '
                        f'step peak {row["step_peak_mib"]:8.1f} MiB'
                    )
            if measure_time:
                for variant in variants:
                    for _ in range(warmup):
                        _train_step(models[variant], steps[variant], device)
                for _ in range(repeats):
                    for row in group:
                        variant = row['variant']
                        row['step_times'].append(
                            _train_step(
                                models[variant], steps[variant], device
                            )
                        )
                base = statistics.median(
                    next(r for r in group if r['variant'] == BASELINE)[
                        'step_times'
                    ]
                )
                for row in group:
                    row['step_seconds'] = statistics.median(row['step_times'])
                    row['time_ratio'] = row['step_seconds'] / base
                    if log:
                        log(
                            f'{head:9s} depth {depth:3d} {row["variant"]:34s} '
                            f'step {row["step_seconds"]:.3f} s '
                            f'({row["time_ratio"]:.3f}x)'
                        )
            del models, steps
            rows.extend(group)
    return rows


def ratios(rows: List[Dict], head: str, depth: int) -> Dict[str, float]:
    """Memory ratios of MRevNetV1c for one head and depth.

    Keys ``vs <variant>`` compare activation memory, ``peak vs <variant>``
    the step peak (when measured).
    """
    by_variant = {
        r['variant']: r
        for r in rows
        if r['head'] == head and r['depth'] == depth
    }
    ours = by_variant['MRevNetV1c']
    out = {}
    for other in ('ResNetV1c', 'ResNetV1c (with_cp)'):
        if other in by_variant:
            theirs = by_variant[other]
            out[f'vs {other}'] = (
                ours['activation_mib'] / theirs['activation_mib']
            )
            if ours.get('step_peak_mib') and theirs.get('step_peak_mib'):
                out[f'peak vs {other}'] = (
                    ours['step_peak_mib'] / theirs['step_peak_mib']
                )
    return out


def markdown_table(rows: List[Dict]) -> str:
    """The rows as a markdown table (one line per head, depth, variant)."""
    has_cuda = any(r['cuda_peak_mib'] is not None for r in rows)
    has_time = any(r['time_ratio'] is not None for r in rows)
    has_peak = any(r.get('step_peak_mib') is not None for r in rows)
    header = ['head', 'depth', 'backbone', 'activations (MiB)', 'vs plain']
    if has_peak:
        header += [
            'step peak (MiB)',
            'transient (MiB)',
            'peak vs plain',
            'peak vs with_cp',
        ]
    if has_cuda:
        header.append('CUDA step peak (MiB)')
    if has_time:
        header += ['step (s)', 'time vs plain']
    lines = [
        '| ' + ' | '.join(header) + ' |',
        '|' + '---|' * len(header),
    ]
    plain = {
        (r['head'], r['depth']): r['activation_mib']
        for r in rows
        if r['variant'] == BASELINE
    }
    peaks = {
        (r['head'], r['depth'], r['variant']): r.get('step_peak_mib')
        for r in rows
    }
    for r in rows:
        base = plain.get((r['head'], r['depth']))
        cells = [
            r['head'],
            str(r['depth']),
            r['variant'],
            f'{r["activation_mib"]:.1f}',
            f'{r["activation_mib"] / base:.3f}x' if base else '-',
        ]
        if has_peak:
            peak = r.get('step_peak_mib')
            cells.append('-' if peak is None else f'{peak:.1f}')
            # What the step holds beyond the saved activations.
            cells.append(
                '-' if peak is None else f'{peak - r["activation_mib"]:.1f}'
            )
            for other in (BASELINE, 'ResNetV1c (with_cp)'):
                theirs = peaks.get((r['head'], r['depth'], other))
                cells.append(
                    f'{peak / theirs:.3f}x' if peak and theirs else '-'
                )
        if has_cuda:
            peak = r.get('cuda_step_peak_mib')
            cells.append('-' if peak is None else f'{peak:.0f}')
        if has_time:
            cells += [
                '-'
                if r['step_seconds'] is None
                else f'{r["step_seconds"]:.3f}',
                '-' if r['time_ratio'] is None else f'{r["time_ratio"]:.3f}x',
            ]
        lines.append('| ' + ' | '.join(cells) + ' |')
    return '\n'.join(lines) + '\n'


def segmentor_table(rows: List[Dict]) -> str:
    """Whole-segmentor rows: step peak, saved bytes and step time, each
    against ResNetV1c and ResNetV1c with_cp, and where the peak sits."""
    header = [
        'head',
        'depth',
        'variant',
        'step peak (MiB)',
        'peak vs ResNetV1c',
        'peak vs with_cp',
        'saved (MiB)',
        'step (s)',
        'time vs ResNetV1c',
        'time vs with_cp',
        'peak sits in',
    ]
    lines = ['| ' + ' | '.join(header) + ' |', '|' + '---|' * len(header)]
    by_key = {(r['head'], r['depth'], r['variant']): r for r in rows}

    def ratio(row, other, key):
        theirs = by_key.get((row['head'], row['depth'], other))
        if not theirs or row.get(key) is None or not theirs.get(key):
            return '-'
        return f'{row[key] / theirs[key]:.3f}x'

    for r in rows:
        seconds = r.get('step_seconds')
        cells = [
            r['head'],
            str(r['depth']),
            r['variant'],
            f'{r["step_peak_mib"]:.1f}',
            ratio(r, BASELINE, 'step_peak_mib'),
            ratio(r, 'ResNetV1c (with_cp)', 'step_peak_mib'),
            f'{r["activation_mib"]:.1f}',
            '-' if seconds is None else f'{seconds:.2f}',
            ratio(r, BASELINE, 'step_seconds'),
            ratio(r, 'ResNetV1c (with_cp)', 'step_seconds'),
            f'`{r.get("peak_site") or "-"}`',
        ]
        lines.append('| ' + ' | '.join(cells) + ' |')
    return '\n'.join(lines) + '\n'


def live_set_markdown(rows: List[Dict]) -> str:
    """Per row, the allocations live at the step peak, largest first."""
    parts = []
    for r in rows:
        if not r.get('live_at_peak'):
            continue
        parts.append(
            f'### {r["head"]}-{r["depth"]}, {r["variant"]}: '
            f'{r["step_peak_mib"]:.1f} MiB at `{r["peak_site"]}`\n\n'
            '| MiB | made in | module | operator |\n|---|---|---|---|'
        )
        for t in r['live_at_peak']:
            parts.append(
                f'| {t["mib"]:.1f} | {t["phase"]} | '
                f'{t["module"] or "(outside modules)"} | {t["op"]} |'
            )
        parts.append('')
    return '\n'.join(parts) + '\n'


def peak_comparison(rows: List[Dict]) -> str:
    """The two step peaks of each row side by side, as a markdown table.

    ``step_peak_mib`` leaves the parameters' gradients out;
    ``cuda_step_peak_mib`` (``torch.cuda.max_memory_allocated`` of the
    same step above its start) holds those allocated so far. Both count
    caching-allocator blocks, so the CUDA figure is expected between the
    step peak and the step peak plus all gradients (``step_grad_mib``),
    the two middle columns.
    """
    lines = [
        '| head | depth | backbone | step peak (MiB) | + all gradients (MiB) '
        '| CUDA step peak (MiB) |',
        '|---|---|---|---|---|---|',
    ]

    def fmt(value):
        return '-' if value is None else f'{value:.1f}'

    for r in rows:
        peak, grads = r.get('step_peak_mib'), r.get('step_grad_mib')
        both = None if peak is None or grads is None else peak + grads
        cells = [r['head'], str(r['depth']), r['variant'], fmt(peak)]
        cells += [fmt(both), fmt(r.get('cuda_step_peak_mib'))]
        lines.append('| ' + ' | '.join(cells) + ' |')
    return '\n'.join(lines) + '\n'


def plot(rows: List[Dict], out_file: str) -> str:
    """Activation memory vs depth per variant and head; time ratios."""
    import matplotlib

    matplotlib.use('Agg')
    import matplotlib.pyplot as plt

    heads = list(dict.fromkeys(r['head'] for r in rows))
    variants = list(dict.fromkeys(r['variant'] for r in rows))
    has_time = any(r['time_ratio'] is not None for r in rows)
    columns = len(heads) + (1 if has_time else 0)
    fig, axes = plt.subplots(1, columns, figsize=(4.2 * columns, 3.6))
    axes = [axes] if columns == 1 else list(axes)
    for ax, head in zip(axes, heads):
        for variant in variants:
            points = sorted(
                (r['depth'], r['activation_mib'])
                for r in rows
                if r['head'] == head and r['variant'] == variant
            )
            ax.plot(*zip(*points), marker='o', label=variant)
        ax.set_title(f'{head}: activation memory')
        ax.set_xlabel('depth')
        ax.set_ylabel('MiB saved for backward')
        ax.set_yscale('log')
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7)
    if has_time:
        ax = axes[-1]
        keys = [
            (h, d)
            for h in heads
            for d in sorted({r['depth'] for r in rows if r['head'] == h})
        ]
        width = 0.8 / len(variants)
        for i, variant in enumerate(variants):
            values = []
            for head, depth in keys:
                match = [
                    r['time_ratio']
                    for r in rows
                    if (r['head'], r['depth'], r['variant'])
                    == (head, depth, variant)
                ]
                values.append(match[0] if match else 0.0)
            ax.bar(
                [k + i * width for k in range(len(keys))],
                values,
                width,
                label=variant,
            )
        ax.set_xticks([k + 0.4 - width / 2 for k in range(len(keys))])
        ax.set_xticklabels(
            [f'{h}\n{d}' for h, d in keys], fontsize=6, rotation=90
        )
        ax.axhline(1.0, color='k', lw=0.5)
        ax.set_title('training-step time / ResNetV1c')
    fig.tight_layout()
    fig.savefig(out_file, dpi=110)
    plt.close(fig)
    return out_file
