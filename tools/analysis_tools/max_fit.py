"""The largest batch and crop whose training step fits in a given memory.

For the segmentor of an mmseg config it compares, with the config's heads,
loss and optimizer:

* ``ResNetV1c``: mmseg's ``EncoderDecoder`` with the plain ResNetV1c of
  the same depth and layout;
* ``ResNetV1c with_cp``: the same with ``with_cp=True``;
* ``ResNetV1c with_cp + checkpointed heads``: and mmengine's activation
  checkpointing of the heads' ConvModules (the best ResNet option);
* ``m-RevNet``: ``MRevNetEncoderDecoder`` (memory-saving heads) with the
  config's m-RevNet backbone at its floor plan (everything recomputed:
  the least memory).
  ``memory_budget`` at the largest size that fits chooses this plan (it
  is the one of least peak), so the planned m-RevNet fits the same sizes.

Each variant's training step is measured at three sizes of the config's
aspect, ``batch x (h, w)``: ``2 x base``, ``2 x 2base`` and ``4 x 2base``
(``base``: a quarter of the crop). Its peak is taken as ``fixed +
activations``: ``fixed`` counts the parameters, buffers, one gradient per
trainable parameter and the state of the config's optimizer; the
activations are the step's peak above its start with the parameters'
gradients left out (:func:`benchmarks.memory.step_peak`), plus the
batch's images and labels. The sum bounds the whole step peak from
above. The activation peak is fitted as a line in pixels (``batch * h *
w``) through the three sizes (least squares); the line through the two
smaller ones, predicting the largest, gives the error shown.
The line is then solved for the memory: the largest batch at the config's
crop, and the largest square and config-aspect crop (multiples of 8) at
the config's batch. ``--verify`` runs one step at each predicted largest
batch that the machine can hold and reports its measured peak.

Sizes far above the measured ones are extrapolated: on a GPU, cuDNN
workspaces and the caching allocator's fragmentation come on top of what
torch's allocator hands out on the CPU.

Example:
    python tools/analysis_tools/max_fit.py \
        configs/pspnet/pspnet_mrevnet101-d8_4xb2-80k_cityscapes-512x1024.py \
        --memory 24GiB 40GiB 80GiB
"""

import argparse
import json
import math
import os
import os.path as osp
import sys
from typing import Dict, List, Sequence, Tuple

if __package__ in (None, ''):
    sys.path.insert(0, osp.join(osp.dirname(osp.abspath(__file__)), '../..'))

import torch  # noqa: E402

import mmrevnet  # noqa: E402,F401  (registers the models)
from benchmarks.variants import (  # noqa: E402
    build_with_optimizer,
    load_config,
    variant_model,
)
from mmrevnet.engine.step_memory import (  # noqa: E402
    optimizer_state_bytes,
)
from mmrevnet.models.utils.memory_budget import (  # noqa: E402
    parse_memory_budget,
)

MIB = 2**20
VARIANTS = (
    'ResNetV1c',
    'ResNetV1c with_cp',
    'ResNetV1c with_cp + checkpointed heads',
    'm-RevNet',
)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('config', nargs='+', help='mmseg segmentor configs')
    parser.add_argument(
        '--memory',
        nargs='+',
        required=True,
        help='memory sizes to fit in, e.g. 24GiB 40GiB 80GiB',
    )
    parser.add_argument('--device', default='cpu', choices=('cpu', 'cuda'))
    parser.add_argument(
        '--base',
        type=int,
        nargs=2,
        metavar=('H', 'W'),
        help='smallest measured crop (default: a quarter of the crop)',
    )
    parser.add_argument(
        '--crop',
        type=int,
        nargs=2,
        metavar=('H', 'W'),
        help="the crop to fit (default: the config's crop_size)",
    )
    parser.add_argument(
        '--batch-size',
        type=int,
        help="the batch to fit crops for (default: the config's)",
    )
    parser.add_argument(
        '--verify',
        action='store_true',
        help='run one step at each predicted largest batch that fits in '
        "half the device's free memory",
    )
    parser.add_argument('--threads', type=int, help='torch threads')
    parser.add_argument(
        '--out-dir', help='write results.json and results.md here'
    )
    return parser.parse_args(argv)


def measure_peak(
    model_cfg: dict,
    optimizer_cfg: dict,
    batch: int,
    crop: Sequence[int],
    device: str,
    checkpoint_heads: bool = False,
) -> Tuple[int, int]:
    """``(fixed, activations)`` bytes of a training step at ``batch x crop``.

    ``fixed``: parameters, buffers, one gradient per trainable parameter
    and the optimizer state. ``activations``: the step's peak above its
    start with the parameters' gradients left out
    (:func:`benchmarks.memory.step_peak`). Their sum bounds the whole
    step peak from above (not every gradient exists at the peak).
    """
    from benchmarks.benchmark import _checkpoint_heads, make_step
    from benchmarks.memory import step_peak

    model, optimizer = build_with_optimizer(model_cfg, optimizer_cfg, device)
    if checkpoint_heads:
        _checkpoint_heads(model)
    classes = model.decode_head.num_classes
    forward = make_step(model, batch, crop, device, num_classes=classes)
    activations = step_peak(model, forward, device=torch.device(device))
    tensors = list(model.parameters()) + list(model.buffers())
    fixed = sum(t.numel() * t.element_size() for t in tensors)
    fixed += sum(
        p.numel() * p.element_size()
        for p in model.parameters()
        if p.requires_grad
    )
    # float32 images and int64 labels, allocated before the step.
    batch_bytes = batch * crop[0] * crop[1] * (3 * 4 + 8)
    return (
        fixed + optimizer_state_bytes(optimizer),
        activations.peak_bytes + batch_bytes,
    )


def fit_line(points: List[Tuple[int, int]]) -> Tuple[float, float]:
    """Least-squares ``(constant, per_pixel)`` of ``peak`` over pixels."""
    n = len(points)
    mean_x = sum(x for x, _ in points) / n
    mean_y = sum(y for _, y in points) / n
    var = sum((x - mean_x) ** 2 for x, _ in points)
    slope = sum((x - mean_x) * (y - mean_y) for x, y in points) / var
    return mean_y - slope * mean_x, slope


def largest(
    constant: float, per_pixel: float, memory: int, crop, batch: int
) -> Dict:
    room = memory - constant
    if room <= 0 or per_pixel <= 0:
        return dict(batch=0, square=0, crop=(0, 0))
    h, w = crop
    largest_batch = int(room // (per_pixel * h * w))
    side = int(math.sqrt(room / (per_pixel * batch)) // 8 * 8)
    scale = math.sqrt(room / (per_pixel * batch * h * w))
    aspect = (int(h * scale // 8 * 8), int(w * scale // 8 * 8))
    return dict(batch=largest_batch, square=side, crop=aspect)


def fit_config(path: str, args, memories) -> Dict:
    """Measure the three variants of one config and solve for each memory."""
    model_cfg, crop, batch, optimizer_cfg = load_config(path)
    crop = tuple(args.crop or crop)
    batch = args.batch_size or batch
    base = tuple(args.base or (crop[0] // 4, crop[1] // 4))
    double = (2 * base[0], 2 * base[1])
    sizes = [(2, base), (2, double), (4, double)]
    rows = []
    for variant in VARIANTS:
        cfg = variant_model(model_cfg, variant)
        heads = variant.endswith('checkpointed heads')
        points = []
        for n, (h, w) in sizes:
            fixed, peak = measure_peak(
                cfg, optimizer_cfg, n, (h, w), args.device, heads
            )
            points.append((n * h * w, peak))
            print(
                f'{variant:18s} {n} x {h}x{w}: activation peak '
                f'{peak / MIB:.1f} MiB (+ {fixed / MIB:.1f} MiB parameters, '
                'gradients and optimizer state)',
                flush=True,
            )
        # How far from a line: the two smaller sizes predict the largest.
        offset, per_pixel = fit_line(points[:2])
        error = (offset + per_pixel * points[2][0]) / points[2][1] - 1
        offset, per_pixel = fit_line(points)
        row = dict(
            variant=variant,
            points=points,
            fixed_mib=fixed / MIB,
            constant_mib=(fixed + offset) / MIB,
            per_pixel_bytes=per_pixel,
            held_out_error=error,
            fits={
                text: largest(fixed + offset, per_pixel, memory, crop, batch)
                for text, memory in memories
            },
        )
        if args.verify:
            row['verified'] = verify(
                cfg, optimizer_cfg, row, memories, crop, args.device, heads
            )
        rows.append(row)
        print(
            f'{variant:18s} constant {row["constant_mib"]:.1f} MiB, '
            f'{per_pixel:.1f} bytes per pixel; the two smaller sizes '
            f'predict the largest with error {error * 100:+.1f}%',
            flush=True,
        )
    return dict(config=path, crop=crop, batch=batch, sizes=sizes, rows=rows)


def main(argv=None):
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    memories = []
    for text in args.memory:
        budget = parse_memory_budget(text)
        if budget is None or budget.kind != 'bytes':
            raise SystemExit(
                f'error: --memory takes sizes such as 24GiB, got {text!r}'
            )
        memories.append((text, budget.resolve(0, 0)))
    results = [fit_config(path, args, memories) for path in args.config]
    text = report(results, memories, args.device)
    print(text)
    if args.out_dir:
        os.makedirs(args.out_dir, exist_ok=True)
        with open(osp.join(args.out_dir, 'results.json'), 'w') as f:
            json.dump(dict(memory=args.memory, results=results), f, indent=2)
        with open(osp.join(args.out_dir, 'results.md'), 'w') as f:
            f.write(text + '\n')
    return results


def verify(
    cfg, optimizer_cfg, row, memories, crop, device, heads=False
) -> Dict:
    """Measured peaks at the predicted largest batches the machine holds."""
    from mmrevnet.engine.step_memory import device_memory

    _, free = device_memory(torch.device(device))
    out = {}
    for text, memory in memories:
        n = row['fits'][text]['batch']
        if n < 2 or memory > free / 2:
            continue
        fixed, peak = measure_peak(cfg, optimizer_cfg, n, crop, device, heads)
        predicted = (
            row['constant_mib'] * MIB
            + row['per_pixel_bytes'] * n * crop[0] * crop[1]
        )
        out[text] = dict(
            batch=n,
            measured_mib=(fixed + peak) / MIB,
            predicted_mib=predicted / MIB,
            fits=fixed + peak <= memory,
        )
        print(
            f'{row["variant"]:18s} verify {n} x {crop[0]}x{crop[1]}: '
            f'{(fixed + peak) / MIB:.1f} MiB measured, '
            f'{predicted / MIB:.1f} MiB predicted, for {text}',
            flush=True,
        )
    return out


def _name(path: str) -> str:
    return osp.splitext(osp.basename(path))[0]


def report(results: List[Dict], memories, device: str) -> str:
    """Markdown: the headline table, then each config's figures."""
    first = results[0]
    lines = [
        '# Largest batch and crop that fit',
        '',
        'Written by `python tools/analysis_tools/max_fit.py '
        + ' '.join(r['config'] for r in results)
        + ' --memory '
        + ' '.join(t for t, _ in memories)
        + (' --device cuda' if device == 'cuda' else '')
        + '`.',
        '',
        f'Measured on the {device.upper()} at three sizes per model and '
        "extrapolated to each memory (see the tool's docstring): the "
        'whole training step (parameters, gradients, optimizer state, '
        'backbone, heads, loss). Each cell: the largest batch at the '
        f"config's crop ({first['crop'][0]}x{first['crop'][1]}) / the "
        "largest square crop at the config's batch "
        f'({first["batch"]}).',
        '',
        '| config | backbone | '
        + ' | '.join(t for t, _ in memories)
        + ' | batch vs ResNetV1c |',
        '|---|---|' + '---|' * (len(memories) + 1),
    ]
    for result in results:
        fits = {row['variant']: row['fits'] for row in result['rows']}
        for row in result['rows']:
            cells = [
                f'{row["fits"][t]["batch"]} / {row["fits"][t]["square"]}'
                for t, _ in memories
            ]
            last = memories[-1][0]
            plain = fits['ResNetV1c'][last]['batch']
            ratio = (
                f'{row["fits"][last]["batch"] / plain:.2f}x at {last}'
                if plain
                else 'n/a'
            )
            lines.append(
                f'| {_name(result["config"])} | {row["variant"]} | '
                + ' | '.join(cells)
                + f' | {ratio} |'
            )
    lines += [
        '',
        '## Per config',
        '',
        '| config | backbone | fixed (MiB) | constant (MiB) | bytes per '
        'pixel | activation peaks at the three sizes (MiB) | error of the '
        'two smaller sizes on the largest |',
        '|---|---|---|---|---|---|---|',
    ]
    for result in results:
        for row in result['rows']:
            peaks = ', '.join(f'{peak / MIB:.1f}' for _, peak in row['points'])
            lines.append(
                f'| {_name(result["config"])} | {row["variant"]} | '
                f'{row["fixed_mib"]:.1f} | {row["constant_mib"]:.1f} | '
                f'{row["per_pixel_bytes"]:.1f} | {peaks} | '
                f'{row["held_out_error"] * 100:+.1f}% |'
            )
    sizes = ', '.join(f'{n} x {h}x{w}' for n, (h, w) in results[0]['sizes'])
    lines += ['', f'Sizes measured (first config): {sizes}.']
    verified = [
        (result, row, text, check)
        for result in results
        for row in result['rows']
        for text, check in row.get('verified', {}).items()
    ]
    if verified:
        lines += [
            '',
            '## Verified',
            '',
            '| config | backbone | memory | batch | predicted (MiB) | '
            'measured (MiB) | fits |',
            '|---|---|---|---|---|---|---|',
        ]
        for result, row, text, check in verified:
            lines.append(
                f'| {_name(result["config"])} | {row["variant"]} | {text} | '
                f'{check["batch"]} | {check["predicted_mib"]:.1f} | '
                f'{check["measured_mib"]:.1f} | {check["fits"]} |'
            )
    return '\n'.join(lines)


if __name__ == '__main__':
    main()
