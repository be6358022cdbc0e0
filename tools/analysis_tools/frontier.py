"""Time-memory frontier of a whole segmentor: ResNetV1c against m-RevNet's
``memory_budget`` plans (see ``benchmarks/frontier.py``).

Examples:
    # the committed run: PSPNet-101-D8 and UPerNet-50, batch 2, 256x512,
    # one thread, one process per config (two cores), then merged
    python tools/analysis_tools/frontier.py \
        configs/pspnet/pspnet_mrevnet101-d8_4xb2-80k_cityscapes-512x1024.py \
        --out-dir work_dirs/frontier_pspnet
    python tools/analysis_tools/frontier.py \
        configs/upernet/upernet_mrevnet50_4xb2-80k_cityscapes-512x1024.py \
        --out-dir work_dirs/frontier_upernet
    python tools/analysis_tools/frontier.py \
        --from-json work_dirs/frontier_pspnet/frontier.json \
        work_dirs/frontier_upernet/frontier.json \
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
    parser.add_argument('config', nargs='*', help='mmseg segmentor configs')
    parser.add_argument('--out-dir', default='work_dirs/frontier')
    parser.add_argument('--batch-size', type=int, default=2)
    parser.add_argument(
        '--size', type=int, nargs=2, default=[256, 512], metavar=('H', 'W')
    )
    parser.add_argument(
        '--budgets',
        type=int,
        default=5,
        help='evenly spaced budgets from the floor to everything kept',
    )
    parser.add_argument('--repeats', type=int, default=4)
    parser.add_argument(
        '--threads',
        type=int,
        default=1,
        help='torch threads (default 1: on a CPU shared with other jobs, '
        'two threads wait on each other at every operator)',
    )
    parser.add_argument(
        '--from-json',
        nargs='+',
        metavar='JSON',
        help='merge stored runs: targets, table and plot again, no '
        'measurement',
    )
    args = parser.parse_args(argv)
    if not args.config and not args.from_json:
        parser.error('give configs to measure, or --from-json')
    return args


def main(argv=None):
    args = parse_args(argv)
    if args.from_json:
        results, device = [], set()
        for path in args.from_json:
            with open(path) as f:
                stored = json.load(f)
            device.add(stored['device'])
            for result in stored['results']:
                result['checks'] = check_targets(result)
                results.append(result)
        stored = dict(
            device='; '.join(sorted(device)),
            torch=stored['torch'],
            results=results,
        )
        _write(args.out_dir, stored)
        return results
    torch.set_num_threads(args.threads)
    results = [
        run_frontier(
            config,
            batch_size=args.batch_size,
            size=args.size,
            num_budgets=args.budgets,
            repeats=args.repeats,
            subsets=CHECKPOINT_SUBSETS,
        )
        for config in args.config
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
