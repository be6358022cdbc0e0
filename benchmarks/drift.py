"""Reconstruction drift of a memory-saving momentum stage.

The memory-saving backward rebuilds every ``x_t`` of a stage from its end
``(x_T, v_T)``. Each inverse step divides the velocity by ``gamma``, so
rounding errors grow like ``(1 / gamma) ** T`` unless the stage stores
intermediate states (see :mod:`mmrevnet.reversible.coupling`).
:func:`measure_drift` runs one training step of a stage of bottleneck-like
residual functions and reports how far the reconstructed stage input is
from the true one (the stage's own ``track_drift`` monitor), and how far the
input gradient is from plain autograd.

Run as a script to print the table::

    python -m benchmarks.drift   # from the repository root
"""

import copy
import math
import warnings
from typing import Dict, List, Optional, Sequence

import torch
from torch import nn

from mmrevnet.reversible import DEFAULT_MAX_AMPLIFICATION, MomentumSequential

__all__ = ['bottleneck_branch', 'measure_drift', 'format_table']


def bottleneck_branch(
    channels: int = 64,
    mid_channels: Optional[int] = None,
    dtype: torch.dtype = torch.float32,
) -> nn.Module:
    """``conv1x1-BN-ReLU-conv3x3-BN-ReLU-conv1x1-BN``, no identity.

    The residual branch of a ResNet bottleneck without its final ReLU (the
    ``F`` of a momentum block). Convs have no bias (BN follows each).
    """
    mid = mid_channels or channels
    return nn.Sequential(
        nn.Conv2d(channels, mid, 1, bias=False),
        nn.BatchNorm2d(mid),
        nn.ReLU(inplace=True),
        nn.Conv2d(mid, mid, 3, padding=1, bias=False),
        nn.BatchNorm2d(mid),
        nn.ReLU(inplace=True),
        nn.Conv2d(mid, channels, 1, bias=False),
        nn.BatchNorm2d(channels),
    ).to(dtype)


def _max_rel(estimate: torch.Tensor, truth: torch.Tensor) -> float:
    scale = truth.detach().abs().max().item()
    error = (estimate.detach() - truth.detach()).abs().max().item()
    return error / scale if scale > 0 else error


def measure_drift(
    gammas: Sequence[float],
    lengths: Sequence[int],
    dtype: torch.dtype = torch.float32,
    max_amplification: float = DEFAULT_MAX_AMPLIFICATION,
    channels: int = 64,
    size: int = 16,
    batch: int = 2,
    seed: int = 0,
    compare_grad: bool = True,
) -> List[Dict]:
    """Measure the reconstruction error of a stage input.

    For every ``gamma`` and stage length, builds a memory-saving
    :class:`~mmrevnet.reversible.MomentumSequential` of
    :func:`bottleneck_branch` functions with ``track_drift=True``, runs one
    forward/backward in train mode on ``randn(batch, channels, size,
    size)`` with a random linear loss and reads the drift measured by the
    backward.

    Args:
        gammas (Sequence[float]): Momentum values.
        lengths (Sequence[int]): Numbers of momentum blocks per stage.
        dtype (torch.dtype): Parameter and input dtype.
        max_amplification (float): Passed to the stage; a huge value
            (``1e300``) disables the storing of intermediate states.
        channels, size, batch (int): Input shape.
        seed (int): Seed of the weights and the input.
        compare_grad (bool): Also run the plain path (same weights) and
            report gradient errors; for ``dtype != float64`` also run the
            plain path in float64, to show how sensitive the gradients are
            to rounding at all.

    Returns:
        list[dict]: One row per (gamma, length) with keys ``dtype``,
        ``gamma``, ``length``, ``max_amplification``, ``amplification``
        (``(1/gamma)**length``), ``stored_states``, ``position_drift``
        (``max|x0_rec - x0| / max|x0|``), ``velocity_drift``, and, with
        ``compare_grad`` (else None):

        * ``grad_error``: ``max|g - g_plain| / max|g_plain|`` of the input
          gradient (single ReLU kinks crossed by the reconstruction show
          up here);
        * ``grad_norm_error``: ``||g - g_plain|| / ||g_plain||`` of the
          input gradient;
        * ``param_grad_error``: the largest norm-relative error over the
          parameter gradients;
        * ``plain_grad_norm_error``, ``plain_param_grad_error``: the same
          two for the plain path in ``dtype`` against the plain path in
          float64 (the rounding floor; None for float64);

        and ``error``: a message when the stage refused the setting or
        the backward raised, else None.
    """
    rows = []
    for gamma in gammas:
        for length in lengths:
            row = dict(
                dtype=str(dtype).replace('torch.', ''),
                gamma=gamma,
                length=length,
                max_amplification=max_amplification,
                amplification=_amplification(gamma, length),
                stored_states=None,
                position_drift=None,
                velocity_drift=None,
                grad_error=None,
                grad_norm_error=None,
                param_grad_error=None,
                plain_grad_norm_error=None,
                plain_param_grad_error=None,
                error=None,
            )
            rows.append(row)
            torch.manual_seed(seed)
            functions = [
                bottleneck_branch(channels, dtype=dtype) for _ in range(length)
            ]
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter('ignore', UserWarning)
                    stage = MomentumSequential(
                        functions,
                        gamma,
                        max_amplification=max_amplification,
                        track_drift=True,
                    )
            except ValueError as error:
                row['error'] = f'refused: {error}'
                continue
            row['stored_states'] = stage.stage.num_stored_states
            plain = copy.deepcopy(stage)
            plain.configure(memory_saving=False)
            generator = torch.Generator().manual_seed(seed + 1)
            x = torch.randn(
                batch,
                channels,
                size,
                size,
                generator=generator,
                dtype=torch.float64,
            )
            weight = torch.randn(
                x.shape, generator=generator, dtype=torch.float64
            )
            try:
                grads = _grads(stage, x.to(dtype), weight.to(dtype))
            except FloatingPointError as error:
                row['error'] = f'non-finite: {error}'
                continue
            row['position_drift'] = stage.report.position_drift
            row['velocity_drift'] = stage.report.velocity_drift
            if not compare_grad:
                continue
            plain_grads = _grads(plain, x.to(dtype), weight.to(dtype))
            row['grad_error'] = _max_rel(grads[0], plain_grads[0])
            row.update(_grad_errors(grads, plain_grads, ''))
            if dtype != torch.float64:
                reference = _grads(plain.double(), x, weight)
                row.update(_grad_errors(plain_grads, reference, 'plain_'))
    return rows


def _grads(
    module: nn.Module, x: torch.Tensor, weight: torch.Tensor
) -> List[torch.Tensor]:
    """Input gradient and parameter gradients of one training step."""
    module.zero_grad(set_to_none=True)
    x = x.clone().requires_grad_()
    (module(x) * weight).sum().backward()
    return [x.grad] + [p.grad for p in module.parameters()]


def _grad_errors(grads, truth, prefix: str) -> Dict[str, float]:
    return {
        f'{prefix}grad_norm_error': _norm_rel(grads[0], truth[0]),
        f'{prefix}param_grad_error': max(
            _norm_rel(a, b) for a, b in zip(grads[1:], truth[1:])
        ),
    }


def _norm_rel(estimate: torch.Tensor, truth: torch.Tensor) -> float:
    scale = truth.detach().double().norm().item()
    error = (estimate.detach().double() - truth.detach().double()).norm()
    return error.item() / scale if scale > 0 else error.item()


def _amplification(gamma: float, length: int) -> float:
    try:
        return math.exp(length * math.log(1.0 / gamma))
    except OverflowError:
        return math.inf


def _fmt(value) -> str:
    if value is None:
        return '-'
    if isinstance(value, float):
        return f'{value:.1e}'
    return str(value)


def format_table(rows: Sequence[Dict]) -> str:
    """Markdown table of :func:`measure_drift` rows."""
    header = (
        'dtype',
        'gamma',
        'blocks',
        '(1/gamma)^T',
        'stored states',
        'input drift',
        'x-grad max-rel',
        'x-grad norm-rel',
        'worst param-grad norm-rel',
        'floor: x-grad norm-rel',
        'floor: worst param-grad norm-rel',
    )
    lines = [
        '| ' + ' | '.join(header) + ' |',
        '|' + '---|' * len(header),
    ]
    for row in rows:
        drift = row['position_drift']
        cells = (
            row['dtype'],
            f'{row["gamma"]:g}',
            str(row['length']),
            f'{row["amplification"]:.3g}',
            _fmt(row['stored_states']),
            _fmt(drift)
            if row['error'] is None
            else row['error'].split(':')[0],
            _fmt(row['grad_error']),
            _fmt(row['grad_norm_error']),
            _fmt(row['param_grad_error']),
            _fmt(row['plain_grad_norm_error']),
            _fmt(row['plain_param_grad_error']),
        )
        lines.append('| ' + ' | '.join(cells) + ' |')
    return '\n'.join(lines)


def drift_tables() -> str:
    """The drift tables of docs/drift.md, one per dtype and bound."""
    gammas = (0.3, 0.5, 0.7, 0.9, 0.99)
    lengths = (2, 8, 17, 35)
    parts = []
    for dtype in (torch.float32, torch.float64):
        for max_amp in (1e300, DEFAULT_MAX_AMPLIFICATION):
            label = (
                'no stored states'
                if max_amp == 1e300
                else f'default max_amplification={max_amp:g}'
            )
            parts.append(f'### {dtype}, {label}\n')
            parts.append(
                format_table(measure_drift(gammas, lengths, dtype, max_amp))
            )
            parts.append('')
    return '\n'.join(parts)


def main():
    import argparse

    parser = argparse.ArgumentParser(description='Reconstruction drift.')
    parser.add_argument(
        '--out', help='also write the tables to this Markdown file'
    )
    args = parser.parse_args()
    tables = drift_tables()
    print(tables)
    if args.out:
        with open(args.out, 'w') as f:
            f.write(
                '# Reconstruction drift tables\n\n'
                'Written by `python -m benchmarks.drift --out '
                f'{args.out}`; see docs/numerics.md for the setting and '
                'the reading.\n\n' + tables
            )


if __name__ == '__main__':
    main()
