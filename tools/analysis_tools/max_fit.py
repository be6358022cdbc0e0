"""The largest batch and crop whose training step fits in a given memory.

For the segmentor of an mmseg config it compares, with the config's heads,
loss and optimizer:

* ``ResNetV1c``: mmseg's ``EncoderDecoder`` with the plain ResNetV1c of
  the same depth and layout;
* ``ResNetV1c with_cp``: the same with ``with_cp=True``;
* ``m-RevNet``: ``MRevNetEncoderDecoder`` with the config's m-RevNet
  backbone at its floor plan (everything recomputed: the least memory).
  ``memory_budget`` at the largest size that fits chooses this plan (it
  is the one of least peak), so the planned m-RevNet fits the same sizes.

Each variant's training step is measured at three sizes of the config's
aspect, ``batch x (h, w)``: ``2 x base``, ``2 x 2base`` and ``4 x 2base``
(``base``: a quarter of the crop). Its peak is taken as ``fixed +
activations``: ``fixed`` counts the parameters, buffers, one gradient per
trainable parameter and the state of the config's optimizer; the
activations are the step's peak above its start with the parameters'
gradients left out (:func:`benchmarks.memory.step_peak`). The sum bounds
the whole step peak from above. The activation peak is fitted as a line
in pixels (``batch * h * w``) through the two largest sizes; the line
through the two smallest, predicting the largest, gives the error shown.
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
import copy
import json
import math
import os.path as osp
import sys
from typing import Dict, List, Sequence, Tuple

if __package__ in (None, ''):
    sys.path.insert(0, osp.join(osp.dirname(osp.abspath(__file__)), '../..'))

import torch  # noqa: E402

import mmrevnet  # noqa: E402,F401  (registers the models)
from mmrevnet.engine.memory_budget import (  # noqa: E402
    optimizer_state_bytes,
)
from mmrevnet.models.utils.memory_budget import (  # noqa: E402
    parse_memory_budget,
)

MIB = 2**20
VARIANTS = ('ResNetV1c', 'ResNetV1c with_cp', 'm-RevNet')
#: Backbone keys of m-RevNet that mmseg's ResNetV1c does not take.
MREVNET_ONLY = (
    'gamma',
    'memory_saving',
    'residual_fn',
    'track_drift',
    'max_amplification',
    'drop_path_rate',
    'stored_blocks',
    'store_stem',
    'memory_budget',
    'expansion',
)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('config', help='an mmseg segmentor config')
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
        help='smallest measured crop (default: the config crop / 8)',
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
    parser.add_argument('--json', help='write the results to this file')
    return parser.parse_args(argv)


def _config(path: str):
    from mmengine.config import Config

    from tools.cli.config import sync_bn_to_bn

    cfg = Config.fromfile(path)
    model = copy.deepcopy(cfg.model.to_dict())
    model.pop('data_preprocessor', None)
    model['pretrained'] = None
    model['backbone'].pop('init_cfg', None)
    model['backbone'].pop('pretrained', None)
    sync_bn_to_bn(model)
    crop = tuple(cfg.get('crop_size') or model_crop(cfg))
    batch = int(cfg.train_dataloader.batch_size)
    optimizer = dict(cfg.optim_wrapper.optimizer)
    return model, crop, batch, optimizer


def model_crop(cfg) -> Tuple[int, int]:
    size = cfg.model.get('data_preprocessor', {}).get('size')
    if not size:
        raise ValueError(
            f'{cfg.filename}: no crop_size and no data_preprocessor.size: '
            'the crop to fit is unknown'
        )
    return tuple(size)


def variant_model(model_cfg: dict, variant: str) -> dict:
    """The config's segmentor with the backbone of ``variant``."""
    cfg = copy.deepcopy(model_cfg)
    backbone = cfg['backbone']
    if variant == 'm-RevNet':
        if 'MRevNet' not in backbone['type']:
            backbone['type'] = backbone['type'].replace('ResNet', 'MRevNet')
        for key in ('stored_blocks', 'store_stem', 'memory_budget'):
            backbone.pop(key, None)
        cfg.pop('memory_budget', None)
        if cfg['type'] == 'EncoderDecoder':
            cfg['type'] = 'MRevNetEncoderDecoder'
        return cfg
    backbone['type'] = backbone['type'].replace('MRevNet', 'ResNet')
    for key in MREVNET_ONLY:
        backbone.pop(key, None)
    backbone['with_cp'] = variant.endswith('with_cp')
    if cfg['type'] == 'MRevNetEncoderDecoder':
        cfg['type'] = 'EncoderDecoder'
        for key in ('memory_saving_heads', 'concat_free', 'loss_bands'):
            cfg.pop(key, None)
    return cfg


def measure_peak(
    model_cfg: dict,
    optimizer_cfg: dict,
    batch: int,
    crop: Sequence[int],
    device: str,
) -> Tuple[int, int]:
    """``(fixed, activations)`` bytes of a training step at ``batch x crop``.

    ``fixed``: parameters, buffers, one gradient per trainable parameter
    and the optimizer state. ``activations``: the step's peak above its
    start with the parameters' gradients left out
    (:func:`benchmarks.memory.step_peak`). Their sum bounds the whole
    step peak from above (not every gradient exists at the peak).
    """
    from mmengine.registry import OPTIMIZERS, init_default_scope
    from mmseg.registry import MODELS

    from benchmarks.benchmark import make_step
    from benchmarks.memory import step_peak

    init_default_scope('mmseg')
    torch.manual_seed(0)
    model = MODELS.build(copy.deepcopy(model_cfg)).to(device).train()
    optimizer = OPTIMIZERS.build(
        dict(optimizer_cfg, params=model.parameters())
    )
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
    return fixed + optimizer_state_bytes(optimizer), activations.peak_bytes


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
    if room <= 0:
        return dict(batch=0, square=0, crop=(0, 0))
    h, w = crop
    largest_batch = int(room // (per_pixel * h * w))
    side = int(math.sqrt(room / (per_pixel * batch)) // 8 * 8)
    scale = math.sqrt(room / (per_pixel * batch * h * w))
    aspect = (int(h * scale // 8 * 8), int(w * scale // 8 * 8))
    return dict(batch=largest_batch, square=side, crop=aspect)


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
    model_cfg, crop, batch, optimizer_cfg = _config(args.config)
    crop = tuple(args.crop or crop)
    batch = args.batch_size or batch
    base = tuple(args.base or (crop[0] // 4, crop[1] // 4))
    double = (2 * base[0], 2 * base[1])
    sizes = [(2, base), (2, double), (4, double)]
    results = []
    for variant in VARIANTS:
        cfg = variant_model(model_cfg, variant)
        points = []
        for n, (h, w) in sizes:
            fixed, peak = measure_peak(
                cfg, optimizer_cfg, n, (h, w), args.device
            )
            points.append((n * h * w, peak))
            print(
                f'{variant:18s} {n} x {h}x{w}: activation peak '
                f'{peak / MIB:.1f} MiB (+ {fixed / MIB:.1f} MiB parameters, '
                'gradients and optimizer state)',
                flush=True,
            )
        # The live bytes of a step are the max of lines (their slopes grow
        # as the peak moves to earlier moments of the backward), so the
        # two largest sizes give the line to extrapolate; the two
        # smallest predicting the largest tell how far from a line it is.
        offset, per_pixel = fit_line(points[:2])
        error = (offset + per_pixel * points[2][0]) / points[2][1] - 1
        offset, per_pixel = fit_line(points[1:])
        constant = fixed + offset
        row = dict(
            variant=variant,
            points=points,
            fixed_mib=fixed / MIB,
            constant_mib=constant / MIB,
            per_pixel_bytes=per_pixel,
            held_out_error=error,
            fits={
                text: largest(constant, per_pixel, memory, crop, batch)
                for text, memory in memories
            },
        )
        if args.verify:
            row['verified'] = verify(
                cfg, optimizer_cfg, row, memories, crop, args.device
            )
        results.append(row)
        print(
            f'{variant:18s} constant {constant / MIB:.1f} MiB, '
            f'{per_pixel:.1f} bytes per pixel; the two smaller sizes '
            f'predict the largest with error {error * 100:+.1f}%',
            flush=True,
        )
    print(markdown(results, crop, batch, memories))
    if args.json:
        with open(args.json, 'w') as f:
            json.dump(
                dict(
                    config=args.config,
                    crop=crop,
                    batch=batch,
                    sizes=sizes,
                    results=results,
                ),
                f,
                indent=2,
            )
    return results


def verify(cfg, optimizer_cfg, row, memories, crop, device) -> Dict:
    """Measured peaks at the predicted largest batches the machine holds."""
    from mmrevnet.engine.memory_budget import device_memory

    _, free = device_memory(torch.device(device))
    out = {}
    for text, memory in memories:
        n = row['fits'][text]['batch']
        if n < 2 or memory > free / 2:
            continue
        peak = measure_peak(cfg, optimizer_cfg, n, crop, device)
        out[text] = dict(batch=n, peak_mib=peak / MIB, fits=peak <= memory)
        print(
            f'{row["variant"]:18s} verify {n} x {crop}: {peak / MIB:.1f} '
            f'MiB for {text}',
            flush=True,
        )
    return out


def markdown(results, crop, batch, memories) -> str:
    head = ' | '.join(
        f'{text}: batch at {crop[0]}x{crop[1]} / square crop at batch '
        f'{batch} / {crop[0]}:{crop[1]} crop at batch {batch}'
        for text, _ in memories
    )
    lines = [
        f'| variant | constant (MiB) | bytes per pixel | {head} | '
        'prediction error (third size) |',
        '|---' * (4 + len(memories)) + '|',
    ]
    for row in results:
        cells = []
        for text, _ in memories:
            fit = row['fits'][text]
            cells.append(
                f'{fit["batch"]} / {fit["square"]} / '
                f'{fit["crop"][0]}x{fit["crop"][1]}'
            )
        lines.append(
            f'| {row["variant"]} | {row["constant_mib"]:.1f} | '
            f'{row["per_pixel_bytes"]:.1f} | {" | ".join(cells)} | '
            f'{row["held_out_error"] * 100:+.1f}% |'
        )
    return '\n'.join(lines)


if __name__ == '__main__':
    main()
