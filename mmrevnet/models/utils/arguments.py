"""Checks of the backbone's arguments: errors that name the argument."""

import numbers
from typing import Sequence

from mmseg.models.backbones.resnet import BasicBlock

from .res_layer import RESIDUAL_FNS


def _is_int(value) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def check_plan(stored_blocks, stage_blocks, memory_saving: bool) -> tuple:
    """``stored_blocks`` as a tuple of ints, one per stage, in range."""
    if stored_blocks is None:
        return (0,) * len(stage_blocks)
    if (
        not isinstance(stored_blocks, Sequence)
        or len(stored_blocks) != len(stage_blocks)
        or not all(
            _is_int(k) and 0 <= k <= n
            for k, n in zip(stored_blocks, stage_blocks)
        )
    ):
        raise ValueError(
            'stored_blocks must give, per stage, an int from 0 to the '
            f"stage's number of blocks {tuple(stage_blocks)}; got "
            f'{stored_blocks!r}'
        )
    if not memory_saving and any(stored_blocks):
        raise ValueError(
            'stored_blocks is the plan of memory_saving=True; with '
            'memory_saving=False every block keeps its activations'
        )
    return tuple(int(k) for k in stored_blocks)


def check_fixed(name: str, kwargs: dict, **fixed) -> None:
    for key, value in fixed.items():
        if key in kwargs and kwargs[key] != value:
            raise ValueError(
                f'{name} fixes {key}={value}; got {key}='
                f'{kwargs[key]!r} (use MRevNet instead)'
            )
        kwargs.pop(key, None)


def check_arguments(
    arch_settings,
    depth,
    in_channels,
    stem_channels,
    base_channels,
    num_stages,
    strides,
    dilations,
    out_indices,
    style,
    frozen_stages,
    dcn,
    stage_with_dcn,
    plugins,
    multi_grid,
    residual_fn,
    expansion,
    drop_path_rate,
) -> None:
    """Reject what mmseg's ResNet would assert on, and what we lack."""
    if dcn is not None or any(stage_with_dcn):
        raise NotImplementedError(
            'MRevNet does not support dcn (deformable convolutions); '
            f'got dcn={dcn!r}, stage_with_dcn={tuple(stage_with_dcn)}. '
            'Use dcn=None.'
        )
    if plugins is not None:
        raise NotImplementedError(
            f'MRevNet does not support plugins; got plugins={plugins!r}. '
            'Use plugins=None.'
        )
    if depth not in arch_settings:
        raise KeyError(
            f'invalid depth {depth!r} for MRevNet: depth must be '
            f'one of {sorted(arch_settings)}'
        )
    for name, value in (
        ('in_channels', in_channels),
        ('stem_channels', stem_channels),
        ('base_channels', base_channels),
    ):
        if not _is_int(value) or value < 1:
            raise ValueError(f'{name} must be a positive int, got {value!r}')
    if not _is_int(num_stages) or not 1 <= num_stages <= 4:
        raise ValueError(
            f'num_stages must be 1, 2, 3 or 4, got {num_stages!r}'
        )
    for name, value in (('strides', strides), ('dilations', dilations)):
        if (
            not isinstance(value, Sequence)
            or len(value) != num_stages
            or not all(_is_int(v) and v >= 1 for v in value)
        ):
            raise ValueError(
                f'{name} must be {num_stages} positive ints (one per stage, '
                f'num_stages={num_stages}), got {value!r}'
            )
    if (
        not isinstance(out_indices, Sequence)
        or not out_indices
        or not all(_is_int(i) and 0 <= i < num_stages for i in out_indices)
    ):
        raise ValueError(
            f'out_indices must be a non-empty sequence of stage indices in '
            f'[0, {num_stages - 1}] (num_stages={num_stages}), got '
            f'{out_indices!r}'
        )
    if style not in ('pytorch', 'caffe'):
        raise ValueError(f"style must be 'pytorch' or 'caffe', got {style!r}")
    if not _is_int(frozen_stages) or not -1 <= frozen_stages <= num_stages:
        raise ValueError(
            f'frozen_stages must be an int in [-1, {num_stages}] '
            f'(num_stages={num_stages}), got {frozen_stages!r}'
        )
    if multi_grid is not None:
        last_blocks = arch_settings[depth][1][num_stages - 1]
        if len(multi_grid) != last_blocks or not all(
            _is_int(d) and d >= 1 for d in multi_grid
        ):
            raise ValueError(
                f'multi_grid must give one positive dilation per block of '
                f'the last stage ({last_blocks} blocks), got {multi_grid!r}'
            )
    if residual_fn not in RESIDUAL_FNS + ('auto', None):
        raise ValueError(
            f"residual_fn must be one of {RESIDUAL_FNS}, or None/'auto' "
            f'(decided by whether pretrained weights are given), got '
            f'{residual_fn!r}'
        )
    if expansion is not None:
        block = arch_settings[depth][0]
        if not _is_int(expansion) or expansion < 1:
            raise ValueError(
                f'expansion must be None or a positive int, got {expansion!r}'
            )
        if block is BasicBlock and expansion != 1:
            raise ValueError(
                f'expansion must be 1 (or None) for depth {depth} '
                f'(BasicBlock), got {expansion!r}'
            )
    if (
        not isinstance(drop_path_rate, numbers.Real)
        or isinstance(drop_path_rate, bool)
        or not 0 <= drop_path_rate < 1
    ):
        raise ValueError(
            f'drop_path_rate must be a float in [0, 1), got {drop_path_rate!r}'
        )
