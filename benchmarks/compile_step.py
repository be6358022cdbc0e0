"""Training step under ``torch.compile`` against eager, per backbone.

For each variant (mmseg's ``ResNetV1c`` in an ``EncoderDecoder``; the
m-RevNet with memory saving in an ``MRevNetEncoderDecoder``) with a PSPNet
head and an FCN auxiliary head at their mmseg widths, one process builds the
model once, compiles its forward-and-loss with the default inductor backend
(what mmengine's ``compile=True`` does to ``train_step``), then times
``loss.backward()`` steps of the eager and the compiled model round-robin,
and measures each one's step peak (:func:`benchmarks.memory.
step_peak`, gradients excluded). The graph breaks of the compiled step are
counted with ``torch._dynamo.explain``.

Example:
    python -m benchmarks.compile_step --depth 50 --size 64 64 \\
        --out docs/benchmark/compile
"""

import argparse
import json
import os
import os.path as osp
import statistics
import time
from typing import Dict, List

import torch

import mmrevnet  # noqa: F401  (shims and registration before mmseg)
from benchmarks.memory import step_peak

VARIANTS = {
    'ResNetV1c': ('EncoderDecoder', 'ResNetV1c', {}),
    'MRevNetV1c': (
        'MRevNetEncoderDecoder',
        'MRevNetV1c',
        dict(memory_saving=True),
    ),
}


def build_segmentor(variant: str, depth: int, size, num_classes: int):
    """A PSPNet (mmseg widths) with the variant's backbone, BN, train mode."""
    from mmengine.registry import DefaultScope
    from mmseg.registry import MODELS

    segmentor, backbone, extra = VARIANTS[variant]
    norm = dict(type='BN', requires_grad=True)
    cfg = dict(
        type=segmentor,
        data_preprocessor=dict(
            type='SegDataPreProcessor',
            mean=[123.675, 116.28, 103.53],
            std=[58.395, 57.12, 57.375],
            size=tuple(size),
        ),
        backbone=dict(
            type=backbone,
            depth=depth,
            dilations=(1, 1, 2, 4),
            strides=(1, 2, 1, 1),
            contract_dilation=True,
            norm_cfg=norm,
            **extra,
        ),
        decode_head=dict(
            type='PSPHead',
            in_channels=2048,
            in_index=3,
            channels=512,
            pool_scales=(1, 2, 3, 6),
            dropout_ratio=0.1,
            num_classes=num_classes,
            norm_cfg=norm,
            align_corners=False,
            loss_decode=dict(type='CrossEntropyLoss', loss_weight=1.0),
        ),
        auxiliary_head=dict(
            type='FCNHead',
            in_channels=1024,
            in_index=2,
            channels=256,
            num_convs=1,
            concat_input=False,
            dropout_ratio=0.1,
            num_classes=num_classes,
            norm_cfg=norm,
            align_corners=False,
            loss_decode=dict(type='CrossEntropyLoss', loss_weight=0.4),
        ),
    )
    with DefaultScope.overwrite_default_scope('mmseg'):
        return MODELS.build(cfg).train()


def make_batch(batch_size: int, size, num_classes: int, seed: int = 0):
    """Processed inputs and data samples of one generated batch."""
    from mmengine.structures import PixelData
    from mmseg.structures import SegDataSample

    generator = torch.Generator().manual_seed(seed)
    height, width = size
    inputs = torch.randn(batch_size, 3, height, width, generator=generator)
    samples = []
    for _ in range(batch_size):
        sample = SegDataSample()
        sample.gt_sem_seg = PixelData(
            data=torch.randint(
                0, num_classes, (1, height, width), generator=generator
            )
        )
        sample.set_metainfo(
            dict(img_shape=(height, width), ori_shape=(height, width))
        )
        samples.append(sample)
    return inputs, samples


def loss_function(model, inputs, samples):
    """The loss of one forward (what ``train_step`` computes)."""

    def loss():
        losses = model(inputs, samples, mode='loss')
        total, _ = model.parse_losses(losses)
        return total

    return loss


def count_breaks(model, inputs, samples) -> Dict:
    """``torch._dynamo.explain`` of the forward-and-loss."""
    explanation = torch._dynamo.explain(
        loss_function(model, inputs, samples)
    )()
    torch._dynamo.reset()
    reasons: Dict[str, int] = {}
    for reason in explanation.break_reasons:
        key = reason.reason.split('\n')[0]
        reasons[key] = reasons.get(key, 0) + 1
    return dict(
        graphs=explanation.graph_count,
        graph_breaks=explanation.graph_break_count,
        listed_reasons=reasons,
    )


def _step(loss_fn, model):
    loss = loss_fn()
    loss.backward()
    for param in model.parameters():
        param.grad = None


def run_variant(variant: str, args) -> Dict:
    torch.manual_seed(0)
    model = build_segmentor(variant, args.depth, args.size, args.num_classes)
    inputs, samples = make_batch(args.batch_size, args.size, args.num_classes)
    breaks = count_breaks(model, inputs, samples)
    eager = loss_function(model, inputs, samples)
    compiled = torch.compile(eager)
    start = time.perf_counter()
    _step(compiled, model)
    compile_s = time.perf_counter() - start
    _step(eager, model)
    times: Dict[str, List[float]] = {'eager': [], 'compiled': []}
    for _ in range(args.rounds):
        for name, fn in (('eager', eager), ('compiled', compiled)):
            start = time.perf_counter()
            _step(fn, model)
            times[name].append(time.perf_counter() - start)
    peaks = {
        name: step_peak(model, fn).peak_bytes / 2**20
        for name, fn in (('eager', eager), ('compiled', compiled))
    }
    median = {name: statistics.median(t) for name, t in times.items()}
    return dict(
        variant=variant,
        first_compiled_step_s=compile_s,
        step_s=times,
        median_step_s=median,
        compiled_over_eager_time=median['compiled'] / median['eager'],
        step_peak_mib=peaks,
        compiled_over_eager_peak=peaks['compiled'] / peaks['eager'],
        **breaks,
    )


def render(results: List[Dict], args) -> str:
    lines = [
        '# Training step: torch.compile (inductor) against eager',
        '',
        f'CPU, PSPNet + FCN auxiliary head, depth {args.depth}, batch '
        f'{args.batch_size}, {args.size[0]}x{args.size[1]}, '
        f'{args.rounds} round-robin steps each (median); step peak by '
        '`benchmarks.memory.step_peak` (gradients excluded).',
        '',
        '| backbone | eager step (s) | compiled step (s) | compiled / '
        'eager time | eager peak (MiB) | compiled peak (MiB) | compiled / '
        'eager peak | first compiled step (s) | graphs | graph breaks |',
        '|---|---|---|---|---|---|---|---|---|---|',
    ]
    for r in results:
        lines.append(
            f'| {r["variant"]} | {r["median_step_s"]["eager"]:.3f} | '
            f'{r["median_step_s"]["compiled"]:.3f} | '
            f'{r["compiled_over_eager_time"]:.3f} | '
            f'{r["step_peak_mib"]["eager"]:.1f} | '
            f'{r["step_peak_mib"]["compiled"]:.1f} | '
            f'{r["compiled_over_eager_peak"]:.3f} | '
            f'{r["first_compiled_step_s"]:.0f} | {r["graphs"]} | '
            f'{r["graph_breaks"]} |'
        )
    lines += ['', 'Graph-break reasons listed by `torch._dynamo.explain`:']
    for r in results:
        lines.append(f'- {r["variant"]}: {r["listed_reasons"]}')
    return '\n'.join(lines) + '\n'


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--depth', type=int, default=50)
    parser.add_argument('--size', type=int, nargs=2, default=(64, 64))
    parser.add_argument('--batch-size', type=int, default=2)
    parser.add_argument('--num-classes', type=int, default=19)
    parser.add_argument('--rounds', type=int, default=5)
    parser.add_argument(
        '--variants', nargs='+', default=list(VARIANTS), choices=VARIANTS
    )
    parser.add_argument('--out', help='directory for results.json/.md')
    return parser.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    results = [run_variant(v, args) for v in args.variants]
    text = render(results, args)
    print(text)
    if args.out:
        os.makedirs(args.out, exist_ok=True)
        with open(osp.join(args.out, 'results.json'), 'w') as f:
            json.dump(dict(args=vars(args), results=results), f, indent=2)
        with open(osp.join(args.out, 'results.md'), 'w') as f:
            f.write(text)


if __name__ == '__main__':
    main()
