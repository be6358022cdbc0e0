"""Activation memory, step peak and step time: m-RevNet vs ResNetV1c.

Examples:
    # full CPU run (backbone, PSPNet, DeepLabV3, UPerNet; depths 50/101/152)
    python tools/analysis_tools/benchmark_memory.py --out-dir docs/benchmark
    # CI smoke run
    python tools/analysis_tools/benchmark_memory.py --quick --out-dir /tmp/b
    # GPU (see tools/analysis_tools/benchmark_gpu.sh)
    python tools/analysis_tools/benchmark_memory.py --device cuda \
        --heads pspnet --depths 50 101 --size 512 1024
    # the profiler's and CUDA's step peaks of a result, side by side
    python tools/analysis_tools/benchmark_memory.py \
        --compare-peaks work_dirs/benchmark/benchmark.json
"""

import argparse
import json
import os
import os.path as osp
import platform
import subprocess
import sys
import tempfile

import torch

# benchmarks/ is not installed with mmrevnet: import it from the checkout
# this script belongs to.
_REPO = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
if _REPO not in sys.path:
    sys.path.insert(0, _REPO)

import mmrevnet  # noqa: E402,F401  (shims and registration before mmseg loads)
from benchmarks.benchmark import (  # noqa: E402
    HEAD_VARIANTS,
    HEADS,
    SEGMENTOR_VARIANTS,
    VARIANTS,
    live_set_markdown,
    markdown_table,
    peak_comparison,
    plot,
    run_benchmark,
    segmentor_table,
)


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--out-dir', default='work_dirs/benchmark')
    parser.add_argument(
        '--depths', type=int, nargs='+', default=[50, 101, 152]
    )
    parser.add_argument(
        '--heads', nargs='+', default=list(HEADS), choices=list(HEADS)
    )
    parser.add_argument(
        '--variants',
        nargs='+',
        default=None,
        choices=list(VARIANTS) + list(HEAD_VARIANTS),
        help='variants (timing needs ResNetV1c); default: the backbone '
        'variants, or with --segmentor the whole-segmentor ones',
    )
    parser.add_argument(
        '--segmentor',
        action='store_true',
        help='the whole-segmentor grid: variants '
        + ', '.join(SEGMENTOR_VARIANTS)
        + ' (unless --variants is given), the peak traced to a module '
        '(--trace), and a table of peaks, times and peak sites',
    )
    parser.add_argument(
        '--trace',
        action='store_true',
        help='trace each step peak to the module it sits in, with the '
        'allocations live at that moment',
    )
    parser.add_argument('--batch-size', type=int, default=2)
    parser.add_argument(
        '--num-classes', type=int, default=19, help='19 Cityscapes, 150 ADE'
    )
    parser.add_argument('--size', type=int, nargs=2, default=[128, 256])
    parser.add_argument('--device', default='cpu')
    parser.add_argument(
        '--cudnn-benchmark',
        action='store_true',
        help='torch.backends.cudnn.benchmark = True, as mmseg configs set',
    )
    parser.add_argument('--warmup', type=int, default=1)
    parser.add_argument('--repeats', type=int, default=5)
    parser.add_argument(
        '--no-time', action='store_true', help='memory only (deterministic)'
    )
    parser.add_argument(
        '--in-process',
        action='store_true',
        help='measure every (depth, head) group in this process instead of '
        'one fresh subprocess per group',
    )
    parser.add_argument(
        '--compare-peaks',
        metavar='JSON',
        help='print the step peaks of a benchmark.json (profiler, '
        'gradients, torch.cuda) side by side and exit',
    )
    parser.add_argument('--rows-out', help=argparse.SUPPRESS)
    parser.add_argument(
        '--rows-in',
        nargs='+',
        metavar='JSON',
        help='write the outputs from the rows of groups measured separately '
        '(files written by --in-process --rows-out) instead of measuring',
    )
    parser.add_argument(
        '--quick',
        action='store_true',
        help='depth 50, backbone and PSPNet, 64x128, 1 timed step (CI)',
    )
    return parser.parse_args()


def main():
    args = parse_args()
    if args.compare_peaks:
        with open(args.compare_peaks) as f:
            print(peak_comparison(json.load(f)['rows']), end='')
        return
    if args.variants is None:
        args.variants = list(
            SEGMENTOR_VARIANTS if args.segmentor else VARIANTS
        )
    if args.segmentor:
        args.trace = True
        if 'backbone' in args.heads:
            args.heads = [h for h in args.heads if h != 'backbone']
    if args.rows_in:
        rows = []
        for name in args.rows_in:
            with open(name) as f:
                rows += json.load(f)
        _write_outputs(args, rows)
        return
    if args.quick:
        args.depths, args.size = [50], [64, 128]
        args.repeats, args.warmup = 1, 0
        if not args.segmentor:
            args.heads = ['backbone', 'pspnet']
    groups = [(d, h) for d in args.depths for h in args.heads]
    if len(groups) > 1 and not args.in_process:
        rows = _run_isolated(args, groups)
    else:
        rows = _run(args)
    if args.rows_out:
        with open(args.rows_out, 'w') as f:
            json.dump(rows, f)
        return
    _write_outputs(args, rows)


def _run_isolated(args, groups):
    """One subprocess per (depth, head): no allocator state carries over
    between groups. (One process for all groups was once killed for
    memory at 24 GB here; the cause was the saved-tensor counter keeping
    every measured graph alive, fixed since, but separate processes still
    keep the groups' timings independent.)"""
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for depth, head in groups:
            out = osp.join(tmp, f'{depth}_{head}.json')
            command = [sys.executable, __file__, '--in-process']
            command += ['--depths', str(depth), '--heads', head]
            command += ['--variants', *args.variants]
            command += ['--batch-size', str(args.batch_size)]
            command += ['--size', *map(str, args.size)]
            command += ['--device', args.device, '--rows-out', out]
            command += ['--warmup', str(args.warmup)]
            command += ['--repeats', str(args.repeats)]
            command += ['--num-classes', str(args.num_classes)]
            if args.no_time:
                command.append('--no-time')
            if args.cudnn_benchmark:
                command.append('--cudnn-benchmark')
            if args.trace:
                command.append('--trace')
            subprocess.run(command, check=True)
            with open(out) as f:
                rows += json.load(f)
    return rows


def _run(args):
    torch.backends.cudnn.benchmark = args.cudnn_benchmark
    return run_benchmark(
        depths=args.depths,
        heads=args.heads,
        variants=args.variants,
        batch_size=args.batch_size,
        size=args.size,
        device=args.device,
        warmup=args.warmup,
        repeats=args.repeats,
        measure_time=not args.no_time,
        num_classes=args.num_classes,
        trace=args.trace,
    )


def _write_outputs(args, rows):
    os.makedirs(args.out_dir, exist_ok=True)
    device_name = (
        torch.cuda.get_device_name()
        if args.device.startswith('cuda')
        else f'{platform.processor() or platform.machine()} CPU, '
        f'{torch.get_num_threads()} threads'
    )
    result = dict(
        device=device_name,
        torch=torch.__version__,
        settings=vars(args),
        rows=rows,
    )
    with open(osp.join(args.out_dir, 'benchmark.json'), 'w') as f:
        json.dump(result, f, indent=2)
    table = markdown_table(rows)
    with open(osp.join(args.out_dir, 'benchmark.md'), 'w') as f:
        f.write(
            f'Device: {device_name}; torch {torch.__version__}; batch '
            f'{args.batch_size}, {args.size[0]}x{args.size[1]}.\n\n'
        )
        f.write(table)
        if args.segmentor:
            f.write('\nWhole segmentor, one training step:\n\n')
            f.write(segmentor_table(rows))
        if args.trace:
            f.write('\n## What is live at each step peak\n\n')
            f.write(live_set_markdown(rows))
    figure = plot(rows, osp.join(args.out_dir, 'benchmark.png'))
    print(table)
    print(f'written: {args.out_dir}/benchmark.json, benchmark.md, {figure}')


if __name__ == '__main__':
    main()
