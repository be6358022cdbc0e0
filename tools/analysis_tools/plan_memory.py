"""Plan an m-RevNet's kept blocks for a budget of step peak memory.

Measures the figures of ``benchmarks.planner`` at the given input
shape (the floor's step peak, per-block saved bytes, per-block forward
times), picks the plan of least estimated recomputation whose predicted
step peak fits the budget, and prints it with its ``--cfg-options``.

Examples:
    python tools/analysis_tools/plan_memory.py \
        configs/pspnet/pspnet_mrevnet101-d8_4xb2-80k_cityscapes-512x1024.py \
        --budget-mib 4000 --shape 2,3,512,1024
    # then train with the plan
    python tools/train.py CONFIG --cfg-options \
        model.backbone.stored_blocks="(1,2,0,0)" \
        model.backbone.store_stem=False
"""

import argparse
import json

import torch

import mmrevnet  # noqa: F401  (registers the models)
from benchmarks.memory import step_peak
from benchmarks.planner import (
    BudgetError,
    ConfigPlanner,
    plan_for_budget,
)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('config', help='segmentor or backbone config file')
    parser.add_argument(
        '--budget-mib', type=float, required=True, help='step peak budget'
    )
    parser.add_argument(
        '--shape',
        default='2,3,512,1024',
        help='input N,C,H,W (default: 2,3,512,1024)',
    )
    parser.add_argument('--device', default='cpu')
    parser.add_argument(
        '--repeats', type=int, default=3, help='timed forwards per block'
    )
    parser.add_argument(
        '--verify',
        action='store_true',
        help='also measure the step peak of the chosen plan',
    )
    parser.add_argument(
        '--threads',
        type=int,
        help="torch threads for the measurements (default: torch's); on a "
        'CPU shared with other jobs, 1 gives steadier block timings',
    )
    parser.add_argument('--json', help='write the result to this file')
    return parser.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    shape = tuple(int(s) for s in args.shape.split(','))
    if args.threads:
        torch.set_num_threads(args.threads)
    planner = ConfigPlanner(args.config, device=args.device)
    figures = planner.measure(shape, repeats=args.repeats, log=print)
    try:
        result = plan_for_budget(figures, int(args.budget_mib * 2**20))
    except BudgetError as error:
        raise SystemExit(f'error: {error}')
    print(result.summary(planner.prefix))
    record = dict(
        config=args.config,
        shape=list(shape),
        budget_mib=args.budget_mib,
        stored_blocks=list(result.plan.stored_blocks),
        store_stem=result.plan.store_stem,
        cfg_options=result.plan.cfg_options(planner.prefix),
        predicted_peak_mib=result.predicted_peak_mib,
        predicted_saved_mib=result.predicted_saved_bytes / 2**20,
        recompute_seconds=result.recompute_seconds,
        floor_peak_mib=figures.floor_peak_bytes / 2**20,
    )
    if args.verify:
        model = planner.build(result.plan)
        measured = step_peak(model, planner.make_step(model, shape))
        record['measured_peak_mib'] = measured.peak_mib
        print(
            f'measured step peak of the plan: {measured.peak_mib:.1f} MiB '
            f'({measured.peak_mib / result.predicted_peak_mib:.3f}x '
            'predicted)'
        )
    if args.json:
        with open(args.json, 'w') as f:
            json.dump(record, f, indent=2)
    return record


if __name__ == '__main__':
    main()
