"""Print the memory plan that ``memory_budget`` would choose, without training.

Runs the planner of ``MRevNetMemoryBudgetHook``
(:func:`mmrevnet.engine.memory_budget.plan_for_memory_budget`) on the
config's segmentor as ``MRevNetEncoderDecoder`` (memory-saving heads, as
``max_fit.py`` builds it) with the config's m-RevNet backbone and
optimizer, on a synthetic batch of the given shape (default: the config's
batch and crop), and prints the plan, its predicted and measured whole
step peak and the config keys that set it without planning.

Examples:
    python tools/analysis_tools/plan_memory.py \
        configs/pspnet/pspnet_mrevnet101-d8_4xb2-80k_cityscapes-512x1024.py \
        --memory-budget 10GiB --shape 2,3,512,1024
"""

import argparse
import json
import os.path as osp
import sys
import time

if __package__ in (None, ''):
    sys.path.insert(0, osp.join(osp.dirname(osp.abspath(__file__)), '../..'))

import torch  # noqa: E402

import mmrevnet  # noqa: E402,F401  (registers the models)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('config', help='mmseg segmentor config')
    parser.add_argument(
        '--memory-budget',
        required=True,
        help="as the config key: '10GiB', '7.5G', bytes, a fraction of "
        "the device's memory (0.8) or 'auto'",
    )
    parser.add_argument(
        '--shape', help="input N,C,H,W (default: the config's batch, crop)"
    )
    parser.add_argument('--device', default='cpu', choices=('cpu', 'cuda'))
    parser.add_argument('--threads', type=int, help='torch threads')
    parser.add_argument('--json', help='write the result to this file')
    return parser.parse_args(argv)


def main(argv=None):
    from benchmarks.benchmark import make_step
    from benchmarks.variants import (
        build_with_optimizer,
        load_config,
        variant_model,
    )
    from mmrevnet.engine.memory_budget import (
        MemoryBudgetError,
        plan_for_memory_budget,
    )
    from mmrevnet.engine.step_memory import device_memory

    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    model_cfg, crop, batch, optimizer_cfg = load_config(args.config)
    shape = (batch, 3, *crop)
    if args.shape:
        shape = tuple(int(s) for s in args.shape.split(','))
    model_cfg = variant_model(model_cfg, 'm-RevNet')
    model_cfg['memory_budget'] = args.memory_budget
    model, optimizer = build_with_optimizer(model_cfg, optimizer_cfg)
    device = torch.device(args.device)
    model.to(device)
    # 'auto' counts what this process holds already, as the hook does.
    held = sum(
        t.numel() * t.element_size()
        for t in (*model.parameters(), *model.buffers())
    )
    budget = model.backbone.memory_budget.resolve(*device_memory(device, held))
    step = make_step(
        model,
        shape[0],
        shape[2:],
        args.device,
        num_classes=model.decode_head.num_classes,
    )
    start = time.perf_counter()
    try:
        choice, figures = plan_for_memory_budget(
            model, model.backbone, step, budget, optimizer
        )
    except MemoryBudgetError as error:
        raise SystemExit(f'error: {error}')
    seconds = time.perf_counter() - start
    plan = choice.plan
    record = dict(
        config=args.config,
        shape=list(shape),
        budget_mib=budget / 2**20,
        **plan.as_dict(),
        predicted_peak_mib=choice.predicted_peak_bytes / 2**20,
        measured_peak_mib=choice.measured_peak_bytes / 2**20,
        recompute_seconds=choice.recompute_seconds,
        floor_recompute_seconds=choice.floor_recompute_seconds,
        planning_seconds=seconds,
    )
    heads = '; segmentor: memory_saving_heads=None' if plan.store_heads else ''
    print(
        f'memory_budget={args.memory_budget!r} ({budget / 2**20:.1f} MiB) '
        f'at input shape {shape}, planned in {seconds:.1f} s\n'
        f'plan: stored_blocks={tuple(plan.stored_blocks)}, '
        f'store_stem={plan.store_stem}, store_heads={plan.store_heads}\n'
        f'whole step peak: predicted {record["predicted_peak_mib"]:.1f} '
        f'MiB, measured {record["measured_peak_mib"]:.1f} MiB (optimizer '
        f'state of the first step, {figures.optimizer_state_bytes / 2**20:.1f}'
        ' MiB, included)\n'
        f'recomputation per step: {choice.recompute_seconds:.3f} s '
        f'(everything recomputed: {choice.floor_recompute_seconds:.3f} s)\n'
        'to train with it without planning: model type '
        "'MRevNetEncoderDecoder'; backbone: "
        f'stored_blocks={tuple(plan.stored_blocks)}, '
        f'store_stem={plan.store_stem}{heads}'
    )
    if args.json:
        with open(args.json, 'w') as f:
            json.dump(record, f, indent=2)
    return record


if __name__ == '__main__':
    main()
