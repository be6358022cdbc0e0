"""Time-memory frontiers: ResNetV1c checkpointing against m-RevNet plans.

For one model (a backbone or a segmentor of :data:`~.benchmark.HEADS`) it
measures, in one process, the points a user can choose from:

* ResNetV1c plain, with ``with_cp`` (every block checkpointed), and with
  whole stages checkpointed the way mmengine does it
  (:func:`mmengine.runner.turn_on_activation_checkpointing` on the built
  model, as a config's ``activation_checkpointing=['backbone.layer3']``);
* MRevNetV1c with the plans that :mod:`benchmarks.planner` picks for
  a range of budgets: evenly spaced from the floor to all kept, and each
  ResNetV1c point's measured step peak.

Every point gets its step peak (:func:`~benchmarks.memory.step_peak`)
and saved activations (:class:`~benchmarks.memory.SavedTensorCounter`),
and a step time: median of ``repeats`` steps, all points of the model timed
round-robin (one step of each, then again), as a ratio to plain ResNetV1c.
"""

import copy
import itertools
import statistics
from typing import Callable, Dict, List, Optional, Sequence

import torch

from benchmarks.benchmark import (
    HEADS,
    _backbone_cfg,
    _train_step,
    activation_bytes,
    build_benchmark_model,
)
from benchmarks.memory import step_peak
from benchmarks.planner import (
    ConfigPlanner,
    plan_for_budget,
    synthetic_step,
)

#: Stage subsets checkpointed with mmengine's activation checkpointing.
CHECKPOINT_SUBSETS = (
    ('layer1',),
    ('layer4',),
    ('layer3',),
    ('layer3', 'layer4'),
    ('layer2', 'layer3', 'layer4'),
    ('layer1', 'layer2', 'layer3', 'layer4'),
)


def mrevnet_config(depth: int, head: str, **backbone) -> dict:
    """The benchmark's MRevNetV1c model as a config dict (for the planner)."""
    from mmengine.hub import get_config
    from mmengine.registry import init_default_scope

    init_default_scope('mmseg')
    base, layout = HEADS[head]
    cfg = _backbone_cfg('MRevNetV1c', depth, layout)
    cfg.update(backbone)
    if base is None:
        return cfg
    model = copy.deepcopy(get_config(base).model.to_dict())
    model['backbone'] = cfg
    for key in ('decode_head', 'auxiliary_head'):
        if model.get(key):
            model[key]['num_classes'] = 19
    return dict(model=model)


def _resnet(depth: int, head: str, subset=None, with_cp=False):
    from mmengine.runner import turn_on_activation_checkpointing

    variant = 'ResNetV1c (with_cp)' if with_cp else 'ResNetV1c'
    model = build_benchmark_model(variant, depth, head)
    if subset:
        prefix = '' if head == 'backbone' else 'backbone.'
        turn_on_activation_checkpointing(
            model, [prefix + name for name in subset]
        )
    return model


def pareto(points: List[Dict], x='step_peak_mib', y='time_ratio'):
    """The points not dominated in (x, y), sorted by x."""
    front = []
    for p in sorted(points, key=lambda p: (p[x], p[y])):
        if not front or p[y] < front[-1][y]:
            front.append(p)
    return front


def run_frontier(
    depth: int = 101,
    head: str = 'backbone',
    batch_size: int = 2,
    size: Sequence[int] = (128, 256),
    num_budgets: int = 8,
    repeats: int = 5,
    warmup: int = 1,
    block_repeats: int = 3,
    subsets: Sequence[Sequence[str]] = CHECKPOINT_SUBSETS,
    log: Optional[Callable[[str], None]] = print,
) -> Dict:
    """Measure the ResNetV1c and m-RevNet points of one model.

    Returns:
        dict: ``rows`` (one per point: ``family``, ``name``,
        ``step_peak_mib``, ``activation_mib``, ``step_seconds``,
        ``time_ratio``, ``step_times``, and for plans ``plan``,
        ``budget_mib``, ``predicted_peak_mib``, ``predicted_saved_mib``,
        ``recompute_seconds``), ``figures`` of the planner and the
        settings.
    """
    shape = (batch_size, 3, *size)
    models, rows = {}, []

    def add(family, name, model, **extra):
        torch.manual_seed(0)
        step = synthetic_step(model, shape)
        peak = step_peak(model, step).peak_bytes / 2**20
        model.zero_grad(set_to_none=True)
        row = dict(
            family=family,
            name=name,
            step_peak_mib=peak,
            activation_mib=activation_bytes(model, step) / 2**20,
            step_times=[],
            **extra,
        )
        models[name] = (model, step)
        rows.append(row)
        if log:
            log(
                f'{head} {name:46s} step peak {peak:8.1f} MiB, saved '
                f'{row["activation_mib"]:8.1f} MiB'
            )
        return row

    torch.manual_seed(0)
    add('ResNetV1c', 'ResNetV1c', _resnet(depth, head))
    add('ResNetV1c', 'ResNetV1c with_cp', _resnet(depth, head, with_cp=True))
    for subset in subsets:
        name = 'ResNetV1c checkpoint ' + '+'.join(subset)
        add('ResNetV1c', name, _resnet(depth, head, subset=subset))

    planner = ConfigPlanner(mrevnet_config(depth, head))
    figures = planner.measure(shape, repeats=block_repeats, log=log)
    floor = figures.floor_peak_bytes
    top = figures.predict_peak(figures.all_kept())
    budgets = [
        floor + (top - floor) * i / (num_budgets - 1)
        for i in range(num_budgets)
    ]
    budgets += [
        r['step_peak_mib'] * 2**20
        for r in rows
        if floor <= r['step_peak_mib'] * 2**20 < top
    ]
    planned = {}
    for budget in sorted(budgets):
        result = plan_for_budget(figures, int(budget))
        planned.setdefault(result.plan, result)
    for plan, result in planned.items():
        add(
            'MRevNetV1c',
            f'MRevNetV1c {plan}',
            planner.build(plan),
            plan=dict(
                stored_blocks=list(plan.stored_blocks),
                store_stem=plan.store_stem,
            ),
            cfg_options=plan.cfg_options(planner.prefix),
            budget_mib=result.budget_bytes / 2**20,
            predicted_peak_mib=result.predicted_peak_mib,
            predicted_saved_mib=result.predicted_saved_bytes / 2**20,
            recompute_seconds=result.recompute_seconds,
        )

    for name, (model, step) in models.items():
        for _ in range(warmup):
            _train_step(model, step, 'cpu')
    for index in range(repeats):
        for row in rows:
            model, step = models[row['name']]
            row['step_times'].append(_train_step(model, step, 'cpu'))
            model.zero_grad(set_to_none=True)
        if log:
            log(f'{head}: timed round {index + 1}/{repeats}')
    base = statistics.median(rows[0]['step_times'])
    for row in rows:
        row['step_seconds'] = statistics.median(row['step_times'])
        row['time_ratio'] = row['step_seconds'] / base
        if log:
            log(
                f'{head} {row["name"]:46s} step {row["step_seconds"]:.3f} s '
                f'({row["time_ratio"]:.3f}x)'
            )
    models.clear()
    return dict(
        depth=depth,
        head=head,
        shape=list(shape),
        repeats=repeats,
        figures=_figures_dict(figures),
        rows=rows,
        checks=check_targets(rows),
    )


def _figures_dict(figures) -> dict:
    return dict(
        floor_peak_mib=figures.floor_peak_bytes / 2**20,
        floor_saved_mib=figures.floor_saved_bytes / 2**20,
        stem_mib=figures.stem_bytes / 2**20,
        stem_seconds=figures.stem_seconds,
        last_stage_peaks_mib=[b / 2**20 for b in figures.last_stage_peaks],
        stages=[
            dict(
                num_blocks=s.num_blocks,
                kept_mib=[b / 2**20 for b in s.kept_bytes_table],
                transition_seconds=s.transition_seconds,
                momentum_seconds=s.momentum_seconds,
            )
            for s in figures.stages
        ],
    )


def check_targets(rows: List[Dict], tolerance: float = 1.03) -> Dict:
    """The issue's targets, evaluated on the measured rows."""
    resnet = [r for r in rows if r['family'] == 'ResNetV1c']
    plans = [r for r in rows if r['family'] == 'MRevNetV1c']
    dominance = []
    for point in pareto(resnet):
        fits = [
            p for p in plans if p['step_peak_mib'] <= point['step_peak_mib']
        ]
        best = min(fits, key=lambda p: p['time_ratio'], default=None)
        dominance.append(
            dict(
                resnet=point['name'],
                resnet_peak_mib=point['step_peak_mib'],
                resnet_time_ratio=point['time_ratio'],
                plan=None if best is None else best['name'],
                plan_peak_mib=None if best is None else best['step_peak_mib'],
                time_vs_resnet=None
                if best is None
                else best['time_ratio'] / point['time_ratio'],
                met=best is not None
                and best['time_ratio'] <= tolerance * point['time_ratio'],
            )
        )
    with_cp = next(r for r in rows if r['name'] == 'ResNetV1c with_cp')
    # The planner's choice for a budget of with_cp's step peak: least
    # predicted recomputation among the plans predicted to fit (that
    # budget was planned, so its choice is among the rows).
    at_cp = sorted(
        (
            p
            for p in plans
            if p['predicted_peak_mib'] <= with_cp['step_peak_mib']
        ),
        key=lambda p: (p['recompute_seconds'], p['predicted_peak_mib']),
    )
    prediction = [
        dict(
            name=p['name'],
            predicted_peak_mib=p['predicted_peak_mib'],
            measured_peak_mib=p['step_peak_mib'],
            error=p['step_peak_mib'] / p['predicted_peak_mib'] - 1,
            predicted_saved_mib=p['predicted_saved_mib'],
            measured_saved_mib=p['activation_mib'],
        )
        for p in plans
    ]
    pairs = list(itertools.combinations(plans, 2))
    discordant = [
        (a['name'], b['name'])
        for a, b in pairs
        if (a['recompute_seconds'] - b['recompute_seconds'])
        * (a['step_seconds'] - b['step_seconds'])
        < 0
    ]
    return dict(
        dominance=dominance,
        dominance_met=all(d['met'] for d in dominance),
        at_with_cp_peak=None
        if not at_cp
        else dict(
            plan=at_cp[0]['name'],
            peak_mib=at_cp[0]['step_peak_mib'],
            with_cp_peak_mib=with_cp['step_peak_mib'],
            time_vs_with_cp=at_cp[0]['time_ratio'] / with_cp['time_ratio'],
        ),
        prediction=prediction,
        max_abs_prediction_error=max(
            (abs(p['error']) for p in prediction), default=0.0
        ),
        plan_pairs=len(pairs),
        discordant_pairs=discordant,
    )


def markdown(results: List[Dict]) -> str:
    """A table of every point, then the targets, per model."""
    lines = []
    for res in results:
        model = f'{res["head"]}-{res["depth"]}'
        lines += [
            f'### {model} (input {"x".join(map(str, res["shape"]))}, median '
            f'of {res["repeats"]} steps)',
            '',
            '| point | step peak (MiB) | predicted (MiB) | saved (MiB) '
            '| step (s) | time vs plain |',
            '|---|---|---|---|---|---|',
        ]
        for r in sorted(res['rows'], key=lambda r: r['step_peak_mib']):
            pred = r.get('predicted_peak_mib')
            lines.append(
                f'| {r["name"]} | {r["step_peak_mib"]:.1f} | '
                f'{"-" if pred is None else f"{pred:.1f}"} | '
                f'{r["activation_mib"]:.1f} | {r["step_seconds"]:.3f} | '
                f'{r["time_ratio"]:.3f}x |'
            )
        checks = res['checks']
        lines += ['', 'Dominance (each ResNetV1c frontier point):', '']
        for d in checks['dominance']:
            verdict = 'met' if d['met'] else 'missed'
            ratio = d['time_vs_resnet']
            lines.append(
                f'- {d["resnet"]} ({d["resnet_peak_mib"]:.1f} MiB, '
                f'{d["resnet_time_ratio"]:.3f}x): '
                + (
                    'no plan fits'
                    if d['plan'] is None
                    else f'{d["plan"]} ({d["plan_peak_mib"]:.1f} MiB) at '
                    f'{ratio:.3f}x its time: {verdict}'
                )
            )
        at_cp = checks['at_with_cp_peak']
        if at_cp:
            lines.append(
                f"- at with_cp's step peak: {at_cp['plan']} "
                f'({at_cp["peak_mib"]:.1f} MiB) at '
                f"{at_cp['time_vs_with_cp']:.3f}x with_cp's time"
            )
        lines.append(
            f'- predicted step peak vs measured: largest error '
            f'{checks["max_abs_prediction_error"] * 100:.1f}%'
        )
        lines.append(
            f'- time ordering: {len(checks["discordant_pairs"])} of '
            f'{checks["plan_pairs"]} plan pairs ordered differently by the '
            'prediction and the measurement'
        )
        lines.append('')
    return '\n'.join(lines)


def plot(results: List[Dict], out_file: str) -> str:
    """Step time against step peak, both families, one panel per model."""
    import matplotlib

    matplotlib.use('Agg')
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(
        1, len(results), figsize=(6 * len(results), 4.4), squeeze=False
    )
    for ax, res in zip(axes[0], results):
        for family, color in (('ResNetV1c', 'C0'), ('MRevNetV1c', 'C3')):
            points = [r for r in res['rows'] if r['family'] == family]
            ax.scatter(
                [p['step_peak_mib'] for p in points],
                [p['time_ratio'] for p in points],
                color=color,
                s=18,
                label=family,
            )
            front = pareto(points)
            ax.step(
                [p['step_peak_mib'] for p in front],
                [p['time_ratio'] for p in front],
                where='post',
                color=color,
                lw=1,
            )
        for p in res['rows']:
            if p['family'] == 'ResNetV1c':
                label = p['name'].replace('ResNetV1c', '').strip() or 'plain'
                ax.annotate(
                    label.replace('checkpoint ', 'cp '),
                    (p['step_peak_mib'], p['time_ratio']),
                    fontsize=6,
                    xytext=(3, 3),
                    textcoords='offset points',
                )
        ax.set_title(
            f'{res["head"]}-{res["depth"]}-D8, batch {res["shape"][0]}, '
            f'{res["shape"][2]}x{res["shape"][3]}, CPU'
        )
        ax.set_xlabel('step peak (MiB)')
        ax.set_ylabel('step time / plain ResNetV1c')
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out_file, dpi=110)
    plt.close(fig)
    return out_file
