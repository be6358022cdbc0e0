"""Renaming the ResNet key layouts of mmpretrain and torchvision to
MRevNet's (mmseg's ``ResNet`` names).

Pure functions of a state dict's keys: used when a backbone loads weights
(:mod:`.weight_loading`) and by the checkpoint converter
(:mod:`tools.model_converters.convert`).
"""

import re
from collections import OrderedDict
from typing import Dict, List, Mapping, Tuple

from torch import Tensor

__all__ = ['SOURCES', 'strip_prefixes', 'detect_source', 'rename_keys']

#: Source libraries whose ResNet layouts are understood.
SOURCES = ('mmseg', 'mmpretrain', 'torchvision')

# Top-level modules of mmseg segmentors and mmpretrain classifiers that are
# not part of the backbone.
_MMSEG_HEADS = ('decode_head.', 'auxiliary_head.')
_MMPRETRAIN_HEADS = ('neck.', 'head.')
_MMPRETRAIN_STEM = re.compile(r'^stem\.(\d+)\.(conv|bn)\.(.+)$')
_DOWNSAMPLE = re.compile(r'^(layer\d+\.0\.downsample)\.(\d+)\.(.+)$')


def strip_prefixes(
    state_dict: Mapping[str, Tensor],
) -> Tuple['OrderedDict[str, Tensor]', List[str], bool]:
    """Remove ``module.`` and keep the backbone of a whole-model checkpoint.

    Args:
        state_dict (Mapping[str, Tensor]): The tensors of a checkpoint.

    Returns:
        tuple: ``(backbone_state_dict, dropped_keys, whole_model)`` where
        ``dropped_keys`` are the (``module.``-stripped) keys outside
        ``backbone.`` and ``whole_model`` tells whether a ``backbone.``
        prefix was found.
    """
    stripped = OrderedDict()
    for key, value in state_dict.items():
        while key.startswith('module.'):
            key = key[len('module.') :]
        stripped[key] = value
    if not any(k.startswith('backbone.') for k in stripped):
        return stripped, [], False
    backbone, dropped = OrderedDict(), []
    for key, value in stripped.items():
        if key.startswith('backbone.'):
            backbone[key[len('backbone.') :]] = value
        else:
            dropped.append(key)
    return backbone, dropped, True


def detect_source(
    state_dict: Mapping[str, Tensor], dropped_keys: List[str] = ()
) -> str:
    """Tell which library wrote a ResNet state dict.

    Args:
        state_dict (Mapping[str, Tensor]): Backbone tensors, prefixes
            already stripped (see :func:`strip_prefixes`).
        dropped_keys (list[str]): Keys outside the backbone of a whole-model
            checkpoint (they name the heads). Defaults to ().

    Returns:
        str: ``'mmpretrain'`` (``ConvModule`` deep stem, or classifier
        heads), ``'torchvision'`` (a top-level ``fc``), else ``'mmseg'``
        (keys already in the MRevNet layout; this includes plain ResNets
        of mmpretrain and torchvision without ``fc``, whose keys are the
        same).
    """
    if any(_MMPRETRAIN_STEM.match(k) for k in state_dict):
        return 'mmpretrain'
    if any(k.startswith(_MMPRETRAIN_HEADS) for k in dropped_keys):
        return 'mmpretrain'
    if any(k.startswith(_MMSEG_HEADS) for k in dropped_keys):
        return 'mmseg'
    if 'fc.weight' in state_dict:
        return 'torchvision'
    return 'mmseg'


def _mmpretrain_key(key: str, avg_down: bool, convs: set) -> str:
    match = _MMPRETRAIN_STEM.match(key)
    if match:
        index, kind, rest = match.groups()
        return f'stem.{3 * int(index) + (kind == "bn")}.{rest}'
    match = _DOWNSAMPLE.match(key)
    if avg_down and match and match.group(1) in convs:
        prefix, index, rest = match.groups()
        return f'{prefix}.{int(index) + 1}.{rest}'
    return key


def rename_keys(
    state_dict: Mapping[str, Tensor], source: str, avg_down: bool = False
) -> Tuple['OrderedDict[str, Tensor]', List[str], Dict[str, str]]:
    """Rename the backbone keys of ``source`` to those of MRevNet.

    Args:
        state_dict (Mapping[str, Tensor]): Backbone tensors, prefixes
            already stripped.
        source (str): One of :data:`SOURCES`.
        avg_down (bool): Whether the target puts an ``AvgPool2d`` first in
            every downsample branch (V1d). Defaults to False.

    Returns:
        tuple: ``(state_dict, dropped_keys, renamed)``.
    """
    if source not in SOURCES:
        raise ValueError(f'source must be one of {SOURCES}, got {source!r}')
    out, dropped, renamed = OrderedDict(), [], {}
    # Downsample branches of mmpretrain that start with the conv (no pool).
    convs = {
        m.group(1)
        for m in map(_DOWNSAMPLE.match, state_dict)
        if m and m.group(2) == '0' and m.group(3) == 'weight'
    }
    for key, value in state_dict.items():
        if source == 'torchvision' and key.startswith('fc.'):
            dropped.append(key)
            continue
        new = key
        if source == 'mmpretrain':
            new = _mmpretrain_key(key, avg_down, convs)
        if new != key:
            renamed[key] = new
        out[new] = value
    return out, dropped, renamed
