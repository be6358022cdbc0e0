"""Time-memory frontier of a whole segmentor: ResNetV1c's options against
the plans that m-RevNet's ``memory_budget`` chooses.

For the segmentor of an mmseg config (its heads, losses and optimizer) it
measures, in one process, the points a user can choose from:

* ResNetV1c, in mmseg's ``EncoderDecoder`` with the config's depth and
  layout: plain; ``with_cp`` (every block checkpointed); ``with_cp`` with
  the heads' ConvModules checkpointed by mmengine; and whole stages
  checkpointed with mmengine's activation checkpointing
  (:func:`mmengine.runner.turn_on_activation_checkpointing`, as a config's
  ``activation_checkpointing=['backbone.layer3']``);
* m-RevNet in ``MRevNetEncoderDecoder`` with ``memory_budget`` set to
  with_cp's measured step peak: the runtime planner
  (:func:`~mmrevnet.engine.memory_budget.plan_for_memory_budget`, what
  ``MRevNetMemoryBudgetHook`` runs before the first iteration) measures
  the model once at the batch and applies its choice; every other budget
  gets the planner's choice from the same measurements
  (:func:`~mmrevnet.engine.memory_budget.choose_plan`, deterministic given
  them): each ResNetV1c point's measured step peak, and budgets evenly
  spaced from the floor's predicted peak to everything kept.

Every point gets its whole step peak: parameters, buffers, gradients,
activations, heads and loss (:func:`~mmrevnet.engine.step_memory.
step_peak`), plus the optimizer state its first ``step()`` allocates,
as the planner counts it. Step time (forward and backward of the
summed losses) is the median of ``repeats`` steps, with every point timed
round-robin (one step of each, then again), as a ratio to plain ResNetV1c.
The m-RevNet points share one model whose plan is switched
(:func:`~mmrevnet.engine.memory_budget.apply_plan`) before each step.
"""

import itertools
import statistics
import time
from typing import Callable, Dict, List, Optional, Sequence

import torch

from benchmarks.benchmark import _checkpoint_heads, _train_step, make_step

#: Stage subsets checkpointed with mmengine's activation checkpointing.
CHECKPOINT_SUBSETS = (
    ('layer1',),
    ('layer3',),
    ('layer4',),
    ('layer1', 'layer2', 'layer3', 'layer4'),
)
MIB = float(2**20)
#: The issue's targets (CPU, same run).
AT_WITH_CP_TARGET = 0.90
AT_PLAIN_TARGET = 1.01
PREDICTION_TARGET = 0.03


def resnet_options(subsets: Sequence[Sequence[str]]) -> List[Dict]:
    """The ResNetV1c points: name, ``with_cp``, heads, stages."""
    options = [
        dict(name='ResNetV1c', with_cp=False),
        dict(name='ResNetV1c with_cp', with_cp=True),
        dict(
            name='ResNetV1c with_cp + checkpointed heads',
            with_cp=True,
            heads=True,
        ),
    ]
    for subset in subsets:
        options.append(
            dict(
                name='ResNetV1c checkpoint ' + '+'.join(subset),
                with_cp=False,
                subset=tuple(subset),
            )
        )
    return options


def pareto(points: List[Dict], x='step_peak_mib', y='time_ratio'):
    """The points not dominated in (x, y), sorted by x."""
    front = []
    for p in sorted(points, key=lambda p: (p[x], p[y])):
        if not front or p[y] < front[-1][y]:
            front.append(p)
    return front


def run_frontier(
    config: str,
    batch_size: int = 2,
    size: Sequence[int] = (256, 512),
    num_budgets: int = 5,
    repeats: int = 4,
    subsets: Sequence[Sequence[str]] = CHECKPOINT_SUBSETS,
    log: Optional[Callable[[str], None]] = print,
) -> Dict:
    """Measure the ResNetV1c and m-RevNet points of one config's model.

    Returns:
        dict: ``rows`` (one per point: ``family``, ``name``,
        ``step_peak_mib``, ``step_times``, ``step_seconds``,
        ``time_ratio``; for m-RevNet also ``plan``, ``budgets`` (the
        budgets it was chosen for), ``predicted_peak_mib`` and
        ``recompute_seconds``), ``budgets`` (name, MiB, chosen plan),
        ``planning`` (what the runtime planner measured and its time),
        the settings and ``checks`` (:func:`check_targets`).
    """
    from mmengine.runner import turn_on_activation_checkpointing

    from benchmarks.variants import (
        build_with_optimizer,
        load_config,
        variant_model,
    )
    from mmrevnet.engine.memory_budget import (
        MemoryBudgetError,
        apply_plan,
        choose_plan,
        plan_for_memory_budget,
    )
    from mmrevnet.engine.step_memory import (
        device_memory,
        optimizer_state_bytes,
        step_peak,
    )

    device = torch.device('cpu')
    model_cfg, _, _, optimizer_cfg = load_config(config)
    shape = (batch_size, 3, *size)
    rows, steps = [], {}

    def measure(model, step, optimizer_bytes):
        def run_step():
            step().backward()

        return (step_peak(model, run_step, device) + optimizer_bytes) / MIB

    for option in resnet_options(subsets):
        variant = 'ResNetV1c with_cp' if option['with_cp'] else 'ResNetV1c'
        model, optimizer = build_with_optimizer(
            variant_model(model_cfg, variant), optimizer_cfg
        )
        if option.get('heads'):
            _checkpoint_heads(model)
        if option.get('subset'):
            turn_on_activation_checkpointing(
                model, ['backbone.' + name for name in option['subset']]
            )
        classes = model.decode_head.num_classes
        step = make_step(model, batch_size, size, 'cpu', num_classes=classes)
        peak = measure(model, step, optimizer_state_bytes(optimizer))
        rows.append(
            dict(
                family='ResNetV1c',
                name=option['name'],
                step_peak_mib=peak,
                step_times=[],
            )
        )
        steps[option['name']] = (model, step, None)
        if log:
            log(f'{option["name"]:44s} step peak {peak:8.1f} MiB')

    with_cp = next(r for r in rows if r['name'] == 'ResNetV1c with_cp')
    mrevnet_cfg = variant_model(model_cfg, 'm-RevNet')
    # The user's one line: the budget is with_cp's measured step peak.
    mrevnet_cfg['memory_budget'] = int(with_cp['step_peak_mib'] * MIB)
    model, optimizer = build_with_optimizer(mrevnet_cfg, optimizer_cfg)
    backbone = model.backbone
    total, available = device_memory(device)
    budget = backbone.memory_budget.resolve(total, available)
    step = make_step(
        model,
        batch_size,
        size,
        'cpu',
        num_classes=model.decode_head.num_classes,
    )
    start = time.perf_counter()
    choice, figures = plan_for_memory_budget(
        model, backbone, step, budget, optimizer
    )
    planning_seconds = time.perf_counter() - start
    if log:
        log(
            f'planned for {budget / MIB:.1f} MiB in {planning_seconds:.1f} '
            f's: {choice.plan}, predicted '
            f'{choice.predicted_peak_bytes / MIB:.1f} MiB, measured '
            f'{choice.measured_peak_bytes / MIB:.1f} MiB'
        )

    floor = figures.predict_peak(figures.floor())
    top = max(figures.predict_peak(plan) for plan in figures.plans())
    budgets = {
        f'ResNetV1c point: {r["name"]}': r['step_peak_mib'] * MIB for r in rows
    }
    for index in range(num_budgets):
        fraction = index / (num_budgets - 1) if num_budgets > 1 else 1.0
        budgets[f'even {index + 1}/{num_budgets}'] = floor + fraction * (
            top - floor
        )
    budget_rows, plans = [], {}
    for name, value in budgets.items():
        try:
            chosen = choose_plan(figures, int(value))
        except MemoryBudgetError:
            chosen = None
        budget_rows.append(
            dict(
                name=name,
                budget_mib=int(value) / MIB,
                plan=None if chosen is None else chosen.plan.as_dict(),
            )
        )
        if chosen is not None:
            plans.setdefault(chosen.plan, (chosen, []))[1].append(name)
    assert choose_plan(figures, budget).plan == choice.plan

    state_bytes = figures.optimizer_state_bytes
    for plan, (chosen, names) in plans.items():
        apply_plan(model, backbone, plan)
        peak = measure(model, step, state_bytes)
        name = f'm-RevNet {_row_label(plan)}'
        rows.append(
            dict(
                family='m-RevNet',
                name=name,
                plan=plan.as_dict(),
                budgets=names,
                step_peak_mib=peak,
                predicted_peak_mib=chosen.predicted_peak_bytes / MIB,
                recompute_seconds=chosen.recompute_seconds,
                step_times=[],
            )
        )
        steps[name] = (model, step, plan)
        if log:
            log(
                f'{name:44s} step peak {peak:8.1f} MiB (predicted '
                f'{chosen.predicted_peak_bytes / MIB:.1f})'
            )

    for index in range(repeats):
        for row in rows:
            model_, step_, plan_ = steps[row['name']]
            if row['family'] == 'm-RevNet':
                apply_plan(model_, model_.backbone, plan_)
            row['step_times'].append(_train_step(model_, step_, 'cpu'))
            model_.zero_grad(set_to_none=True)
        if log:
            log(f'timed round {index + 1}/{repeats}')
    base = statistics.median(rows[0]['step_times'])
    for row in rows:
        row['step_seconds'] = statistics.median(row['step_times'])
        row['time_ratio'] = row['step_seconds'] / base
        if log:
            log(
                f'{row["name"]:44s} step {row["step_seconds"]:.3f} s '
                f'({row["time_ratio"]:.3f}x)'
            )
    for budget_row in budget_rows:
        budget_row['row'] = next(
            (
                r['name']
                for r in rows
                if r['family'] == 'm-RevNet'
                and budget_row['name'] in r['budgets']
            ),
            None,
        )
    steps.clear()
    result = dict(
        config=config,
        shape=list(shape),
        repeats=repeats,
        rows=rows,
        budgets=budget_rows,
        planning=dict(
            budget_mib=budget / MIB,
            seconds=planning_seconds,
            plan=choice.plan.as_dict(),
            predicted_peak_mib=choice.predicted_peak_bytes / MIB,
            measured_peak_mib=choice.measured_peak_bytes / MIB,
            training_steps=len(figures.last_stage_peaks)
            + len(figures.stored_heads_peaks or ())
            + 1,
            counted_forwards=2 + sum(len(t) - 1 for t in figures.kept_bytes),
            last_stage_peaks_mib=[p / MIB for p in figures.last_stage_peaks],
            earlier_stage_peaks_mib=[
                [p / MIB for p in stage]
                for stage in figures.earlier_stage_peaks or ()
            ],
            stored_heads_peaks_mib=None
            if figures.stored_heads_peaks is None
            else [p / MIB for p in figures.stored_heads_peaks],
            heads_seconds=figures.heads_seconds,
            stem_seconds=figures.stem_seconds,
            block_seconds=[list(s) for s in figures.block_seconds],
            optimizer_state_mib=state_bytes / MIB,
        ),
    )
    result['checks'] = check_targets(result)
    return result


def _row_label(plan) -> str:
    text = f'{tuple(plan.stored_blocks)}'
    if plan.store_stem:
        text += ', stem'
    if plan.store_heads:
        text += ', heads'
    return text


def check_targets(result: Dict) -> Dict:
    """The issue's targets, evaluated on the measured rows."""
    rows = result['rows']
    by_name = {r['name']: r for r in rows}
    resnet = [r for r in rows if r['family'] == 'ResNetV1c']
    plans = [r for r in rows if r['family'] == 'm-RevNet']
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
                and best['time_ratio'] <= point['time_ratio'],
            )
        )

    def at(resnet_name, target):
        budget = next(
            b
            for b in result['budgets']
            if b['name'] == f'ResNetV1c point: {resnet_name}'
        )
        if budget['row'] is None:
            return dict(budget=budget['name'], plan=None, met=False)
        plan = by_name[budget['row']]
        ratio = plan['time_ratio'] / by_name[resnet_name]['time_ratio']
        return dict(
            budget=budget['name'],
            budget_mib=budget['budget_mib'],
            plan=plan['name'],
            peak_mib=plan['step_peak_mib'],
            time_vs_resnet=ratio,
            target=target,
            met=ratio <= target,
        )

    over_budget = []
    for budget in result['budgets']:
        if budget['row'] is None:
            continue
        peak = by_name[budget['row']]['step_peak_mib']
        if peak > budget['budget_mib']:
            over_budget.append(dict(budget, peak_mib=peak))
    errors = [
        abs(p['predicted_peak_mib'] - p['step_peak_mib']) / p['step_peak_mib']
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
        at_with_cp_peak=at('ResNetV1c with_cp', AT_WITH_CP_TARGET),
        at_plain_peak=at('ResNetV1c', AT_PLAIN_TARGET),
        over_budget=over_budget,
        max_prediction_error=max(errors, default=0.0),
        prediction_met=max(errors, default=0.0) <= PREDICTION_TARGET,
        plan_pairs=len(pairs),
        discordant_pairs=discordant,
    )


def _title(result: Dict) -> str:
    import os.path as osp

    name = osp.splitext(osp.basename(result['config']))[0]
    return f'{name} (input {"x".join(map(str, result["shape"]))})'


def markdown(results: List[Dict]) -> str:
    """A table of every point, then the targets, per model."""
    lines = []
    for res in results:
        lines += [
            f'### {_title(res)}, median of {res["repeats"]} steps',
            '',
            '| point | chosen for the budgets | step peak (MiB) | predicted '
            '(MiB) | step (s) | time vs plain |',
            '|---|---|---|---|---|---|',
        ]
        for r in sorted(res['rows'], key=lambda r: r['step_peak_mib']):
            pred = r.get('predicted_peak_mib')
            budgets = '; '.join(
                b.replace('ResNetV1c point: ', 'peak of ')
                for b in r.get('budgets', ())
            )
            lines.append(
                f'| {r["name"]} | {budgets or "-"} | '
                f'{r["step_peak_mib"]:.1f} | '
                f'{"-" if pred is None else f"{pred:.1f}"} | '
                f'{r["step_seconds"]:.3f} | {r["time_ratio"]:.3f}x |'
            )
        checks = res['checks']
        planning = res['planning']
        lines += [
            '',
            f'Planning (`memory_budget={planning["budget_mib"]:.1f} MiB`, '
            "with_cp's step peak): "
            f'{planning["seconds"]:.1f} s on this CPU '
            f'({planning["training_steps"]} training steps, '
            f'{planning["counted_forwards"]} counted forwards, timed stem, '
            f'block and head forwards); plan {planning["plan"]}, predicted '
            f'{planning["predicted_peak_mib"]:.1f} MiB, measured '
            f'{planning["measured_peak_mib"]:.1f} MiB.',
            '',
            'Targets:',
            '',
        ]
        for key, label in (
            ('at_with_cp_peak', "at with_cp's step peak"),
            ('at_plain_peak', "at plain ResNetV1c's step peak"),
        ):
            d = checks[key]
            if d['plan'] is None:
                lines.append(f'- {label}: no plan fits: missed')
                continue
            lines.append(
                f'- {label} ({d["budget_mib"]:.1f} MiB): {d["plan"]} '
                f'({d["peak_mib"]:.1f} MiB) at {d["time_vs_resnet"]:.3f}x '
                f'its time (target <= {d["target"]:.2f}x): '
                + ('met' if d['met'] else 'missed')
            )
        lines.append('- dominance (each ResNetV1c frontier point):')
        for d in checks['dominance']:
            verdict = 'dominated' if d['met'] else 'not dominated'
            lines.append(
                f'  - {d["resnet"]} ({d["resnet_peak_mib"]:.1f} MiB, '
                f'{d["resnet_time_ratio"]:.3f}x): '
                + (
                    'no plan fits'
                    if d['plan'] is None
                    else f'{d["plan"]} ({d["plan_peak_mib"]:.1f} MiB) at '
                    f'{d["time_vs_resnet"]:.3f}x its time: {verdict}'
                )
            )
        lines.append(
            f'- measured peak above its budget: {len(checks["over_budget"])}'
            f' of {sum(b["row"] is not None for b in res["budgets"])} '
            'budgets'
        )
        lines.append(
            f'- prediction error (largest, all plans): '
            f'{checks["max_prediction_error"] * 100:.2f}% (target <= 3%): '
            + ('met' if checks['prediction_met'] else 'missed')
        )
        lines.append(
            f'- time ordering: {len(checks["discordant_pairs"])} of '
            f'{checks["plan_pairs"]} plan pairs ordered differently by the '
            'predicted recomputation and the measured step time'
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
        for family, color in (('ResNetV1c', 'C0'), ('m-RevNet', 'C3')):
            points = [r for r in res['rows'] if r['family'] == family]
            ax.scatter(
                [p['step_peak_mib'] for p in points],
                [p['time_ratio'] for p in points],
                color=color,
                s=18,
                label=family
                + (' (memory_budget plans)' if family == 'm-RevNet' else ''),
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
        ax.set_title(_title(res) + ', CPU', fontsize=8)
        ax.set_xlabel('whole step peak (MiB)')
        ax.set_ylabel('step time / plain ResNetV1c')
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out_file, dpi=110)
    plt.close(fig)
    return out_file
