"""What keeping every block costs against plain ResNet, and where it goes.

A whole mmseg segmentor (the config's heads, losses and SGD) with plain
ResNetV1c and with m-RevNet keeping every block, the stem and the heads
(``stored_blocks`` = every block: nothing is recomputed). Both compute
the same convolutions; m-RevNet adds the momentum update of every block
after the first of a stage (:func:`mmrevnet.reversible.forward_step`) and
the residual ``relu(branch + x) - x``. The step time of each, timed
round-robin, and one profiled step of each, whose operators' own CPU time
is split into the full-width elementwise operators the momentum adds to
and everything else, so that the difference in time can be read as the
sum of its parts.

Example::

    python -m benchmarks.kept_overhead \\
        configs/pspnet/pspnet_mrevnet101-d8_4xb2-80k_cityscapes-512x1024.py \\
        --size 256 512 --rounds 3 --out docs/benchmark/kept_overhead
"""

import argparse
import json
import os
import os.path as osp
import platform
import statistics
import sys
from typing import Dict, List

import torch

from benchmarks.benchmark import _train_step, make_step
from benchmarks.variants import (
    build_with_optimizer,
    load_config,
    variant_model,
)

#: Elementwise operators over full feature maps: the ResNet block's own
#: residual add and ReLU, and what the momentum update and the block
#: residual add to them (forward and backward).
ELEMENTWISE = (
    'aten::add',
    'aten::add_',
    'aten::sub',
    'aten::sub_',
    'aten::mul',
    'aten::mul_',
    'aten::lerp',
    'aten::lerp_',
    'aten::relu',
    'aten::relu_',
    'aten::clamp_min',
    'aten::clamp_min_',
    'aten::ne',
    'aten::gt',
    'aten::neg',
    'aten::threshold_backward',
    'aten::copy_',
    'aten::fill_',
    'aten::zero_',
)

#: The m-RevNet points keep every block and the stem and store the heads;
#: the second computes the heads as mmseg does (concatenation, loss on the
#: whole upsampled logits), the third with MRevNetEncoderDecoder's default
#: concat-free heads and banded loss, which it keeps when the heads store.
POINTS = (
    'ResNetV1c',
    "m-RevNet, everything kept, mmseg's heads",
    'm-RevNet, everything kept, concat-free heads and banded loss',
)


def build_point(model_cfg: dict, optimizer_cfg: dict, point: str):
    """The model of ``point`` (one of :data:`POINTS`) and its optimizer."""
    if point not in POINTS:
        raise ValueError(f'point must be one of {POINTS}, got {point!r}')
    if point == 'ResNetV1c':
        return build_with_optimizer(
            variant_model(model_cfg, 'ResNetV1c'), optimizer_cfg
        )
    cfg = variant_model(model_cfg, 'm-RevNet')
    cfg['memory_saving_heads'] = None
    if "mmseg's heads" in point:
        cfg.update(concat_free=False, loss_bands=None)
    model, optimizer = build_with_optimizer(cfg, optimizer_cfg)
    backbone = model.backbone
    backbone.set_plan(tuple(backbone.stage_blocks), store_stem=True)
    return model, optimizer


def _operator_seconds(model, step) -> Dict[str, float]:
    """Own CPU seconds of every operator in one step."""
    from torch.profiler import ProfilerActivity, profile

    model.zero_grad(set_to_none=True)
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        step().backward()
    return {
        event.key: event.self_cpu_time_total / 1e6
        for event in prof.key_averages()
    }


def run(config: str, size, batch_size: int, rounds: int) -> Dict:
    """Time both points round-robin; profile one step of each."""
    model_cfg, _, _, optimizer_cfg = load_config(config)
    models = {}
    for point in POINTS:
        model, _ = build_point(model_cfg, optimizer_cfg, point)
        step = make_step(model, batch_size, size, 'cpu')
        _train_step(model, step, 'cpu')  # warm-up
        models[point] = (model, step)
    seconds: Dict[str, List[float]] = {point: [] for point in POINTS}
    for _ in range(rounds):
        for point, (model, step) in models.items():
            seconds[point].append(_train_step(model, step, 'cpu'))
    operators = {
        point: _operator_seconds(model, step)
        for point, (model, step) in models.items()
    }
    rows = []
    for point in POINTS:
        ops = operators[point]
        elementwise = sum(ops.get(name, 0.0) for name in ELEMENTWISE)
        rows.append(
            dict(
                point=point,
                step_seconds=seconds[point],
                median_seconds=statistics.median(seconds[point]),
                profiled_seconds=sum(ops.values()),
                elementwise_seconds=elementwise,
                other_seconds=sum(ops.values()) - elementwise,
                elementwise_by_operator={
                    name: ops[name] for name in ELEMENTWISE if name in ops
                },
            )
        )
    base = rows[0]
    for row in rows:
        row['time_ratio'] = row['median_seconds'] / base['median_seconds']
    return dict(
        config=osp.basename(config),
        input=[batch_size, 3, *size],
        rounds=rounds,
        threads=torch.get_num_threads(),
        device=f'{platform.machine()} CPU',
        torch=torch.__version__,
        rows=rows,
    )


def markdown(result: Dict) -> str:
    """The result as a table and the decomposition of the difference."""
    lines = [
        f'{result["config"]}, input {"x".join(map(str, result["input"]))}, '
        f'{result["device"]}, {result["threads"]} thread(s), torch '
        f'{result["torch"]}; median of {result["rounds"]} steps timed '
        'round-robin, then one profiled step each.',
        '',
        '| point | step (s), median | time vs plain | profiled step: '
        'elementwise operators (s) | other operators (s) |',
        '|---|---|---|---|---|',
    ]
    for row in result['rows']:
        lines.append(
            f'| {row["point"]} | {row["median_seconds"]:.3f} | '
            f'{row["time_ratio"]:.3f}x | {row["elementwise_seconds"]:.3f} | '
            f'{row["other_seconds"]:.3f} |'
        )
    lines.append('')
    for before, after in zip(result['rows'], result['rows'][1:]):
        extra = after['elementwise_seconds'] - before['elementwise_seconds']
        other = after['other_seconds'] - before['other_seconds']
        total = before['profiled_seconds']
        lines.append(
            f'- {after["point"]} against {before["point"]}: profiled '
            f'elementwise operators {extra:+.3f} s ({extra / total:+.1%}), '
            f'other operators {other:+.3f} s ({other / total:+.1%}); step '
            f'time {after["median_seconds"] / before["median_seconds"]:.3f}x'
        )
    lines += [
        '',
        '| elementwise operator (s) | '
        + ' | '.join(row['point'] for row in result['rows'])
        + ' |',
        '|---' * (len(result['rows']) + 1) + '|',
    ]
    names = sorted(
        {n for row in result['rows'] for n in row['elementwise_by_operator']}
    )
    for name in names:
        lines.append(
            f'| {name} | '
            + ' | '.join(
                f'{row["elementwise_by_operator"].get(name, 0.0):.3f}'
                for row in result['rows']
            )
            + ' |'
        )
    return '\n'.join(lines) + '\n'


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('config')
    parser.add_argument('--size', type=int, nargs=2, default=(256, 512))
    parser.add_argument('--batch-size', type=int, default=2)
    parser.add_argument('--rounds', type=int, default=3)
    parser.add_argument('--threads', type=int, default=1)
    parser.add_argument('--out', required=True)
    args = parser.parse_args(argv)
    if args.rounds < 1:
        parser.error(f'--rounds must be >= 1, got {args.rounds}')
    torch.set_num_threads(args.threads)
    result = run(args.config, tuple(args.size), args.batch_size, args.rounds)
    os.makedirs(args.out, exist_ok=True)
    with open(osp.join(args.out, 'results.json'), 'w') as f:
        json.dump(result, f, indent=2)
    text = markdown(result)
    with open(osp.join(args.out, 'results.md'), 'w') as f:
        f.write(text)
    print(text)
    return 0


if __name__ == '__main__':
    sys.exit(main())
