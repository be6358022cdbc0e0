"""Time-memory frontiers of ResNetV1c checkpointing and m-RevNet plans.

Examples:
    # the committed run (backbone-101-D8 and PSPNet-101-D8, batch 2,
    # 128x256, one thread)
    python tools/analysis_tools/frontier.py \
        --out-dir docs/benchmark/frontier
    # smoke run
    python tools/analysis_tools/frontier.py --quick --out-dir /tmp/f
    # tables, targets and plot again from a stored run (no measurement)
    python tools/analysis_tools/frontier.py \
        --from-json docs/benchmark/frontier/frontier.json \
        --out-dir docs/benchmark/frontier
"""

import argparse
import json
import os
import os.path as osp
import platform
import sys

import torch

_REPO = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
if _REPO not in sys.path:
    sys.path.insert(0, _REPO)

import mmrevnet  # noqa: E402,F401  (registration before mmseg loads)
from benchmarks.frontier import (  # noqa: E402
    CHECKPOINT_SUBSETS,
    check_targets,
    markdown,
    plot,
    run_frontier,
)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--out-dir', default='work_dirs/frontier')
    parser.add_argument('--depth', type=int, default=101)
    parser.add_argument('--heads', nargs='+', default=['backbone', 'pspnet'])
    parser.add_argument('--batch-size', type=int, default=2)
    parser.add_argument('--size', type=int, nargs=2, default=[128, 256])
    parser.add_argument(
        '--budgets', type=int, default=8, help='evenly spaced budgets'
    )
    parser.add_argument('--repeats', type=int, default=5)
    parser.add_argument('--warmup', type=int, default=1)
    parser.add_argument(
        '--threads',
        type=int,
        default=1,
        help='torch threads (default 1: on a CPU shared with other jobs, '
        'two threads wait on each other at every operator)',
    )
    parser.add_argument(
        '--from-json',
        metavar='JSON',
        help='recompute the targets, table and plot of a stored run',
    )
    parser.add_argument(
        '--quick',
        action='store_true',
        help='depth 50, backbone only, 64x64, 3 budgets, 1 step (smoke)',
    )
    return parser.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    if args.from_json:
        with open(args.from_json) as f:
            stored = json.load(f)
        for result in stored['results']:
            result['checks'] = check_targets(result['rows'])
        _write(args.out_dir, stored)
        return stored['results']
    if args.quick:
        args.depth, args.heads, args.size = 50, ['backbone'], [64, 64]
        args.budgets, args.repeats, args.warmup = 3, 1, 0
    torch.set_num_threads(args.threads)
    subsets = (('layer3',),) if args.quick else CHECKPOINT_SUBSETS
    results = [
        run_frontier(
            depth=args.depth,
            head=head,
            batch_size=args.batch_size,
            size=args.size,
            num_budgets=args.budgets,
            repeats=args.repeats,
            warmup=args.warmup,
            subsets=subsets,
        )
        for head in args.heads
    ]
    device = (
        f'{platform.processor() or platform.machine()} CPU, '
        f'{torch.get_num_threads()} thread(s)'
    )
    stored = dict(
        device=device,
        torch=torch.__version__,
        settings=vars(args),
        results=results,
    )
    _write(args.out_dir, stored)
    return results


def _write(out_dir, stored):
    os.makedirs(out_dir, exist_ok=True)
    with open(osp.join(out_dir, 'frontier.json'), 'w') as f:
        json.dump(stored, f, indent=2)
    table = markdown(stored['results'])
    with open(osp.join(out_dir, 'frontier.md'), 'w') as f:
        f.write(
            f'Device: {stored["device"]}; torch {stored["torch"]}.\n\n{table}'
        )
    figure = plot(stored['results'], osp.join(out_dir, 'frontier.png'))
    print(table)
    print(f'written: {out_dir}/frontier.json, frontier.md, {figure}')


if __name__ == '__main__':
    main()
