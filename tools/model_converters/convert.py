"""Convert ResNet checkpoints of other libraries into MRevNet checkpoints.

MRevNet keeps the parameter names of mmseg's ``ResNet`` (see
:mod:`mmrevnet.models.backbones.mrevnet`), so a ResNet checkpoint converts
by renaming keys, never by changing tensors:

* **mmseg** ``ResNet``/``ResNetV1c``/``ResNetV1d``: keys are already those
  of ``MRevNet``/``MRevNetV1c``/``MRevNetV1d``.
* **mmpretrain** ``ResNet``/``ResNetV1c``/``ResNetV1d``: the deep stem is
  made of ``ConvModule`` s (``stem.<i>.conv``/``stem.<i>.bn``), which
  become mmseg's flat ``stem.<3i>``/``stem.<3i + 1>``. With avg-pool
  downsampling (V1d), mmpretrain leaves out the pool of a stride-one stage
  (``layer1.0.downsample.{0,1}``), where mmseg puts an identity
  ``AvgPool2d(1)`` first (``layer1.0.downsample.{1,2}``).
* **torchvision** ``resnet18`` ... ``resnet152``: keys equal those of the
  plain ``MRevNet`` (7x7 stem, stride on the 3x3 conv, i.e.
  ``style='pytorch'``); the classifier ``fc`` is dropped.

Whole-model checkpoints of mmseg or mmpretrain (``backbone.`` prefix) and
DistributedDataParallel ones (``module.`` prefix) are accepted; keys
outside the backbone are dropped. The result is checked against a target
MRevNet of the requested depth and variant: missing and unexpected keys are
reported, a tensor whose shape differs from the target's is refused with
:class:`ConversionError`.

The target's depth and variant are read from the checkpoint unless given
(:func:`detect_layout`): a 7x7 stem means ``MRevNet``, a deep stem
``MRevNetV1c``, one with avg-pool downsampling ``MRevNetV1d``.

The converted checkpoint assumes ``style='pytorch'`` (the default of all
three libraries): the key names cannot tell where a bottleneck strides.
"""

import os
import os.path as osp
import pickle
import re
import zipfile
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Dict, List, Mapping, Optional, Tuple, Union

import torch
from torch import Tensor

from mmrevnet.models.backbones import MRevNet, MRevNetV1c, MRevNetV1d
from mmrevnet.models.utils.key_mapping import (
    _DOWNSAMPLE,
    SOURCES,
    detect_source,
    rename_keys,
    strip_prefixes,
)

__all__ = [
    'SOURCES',
    'VARIANTS',
    'ConversionError',
    'ConversionResult',
    'load_state_dict',
    'strip_prefixes',
    'detect_source',
    'detect_layout',
    'rename_keys',
    'target_shapes',
    'convert_state_dict',
    'convert_checkpoint',
]

#: Target variants and their backbone classes.
VARIANTS = {'plain': MRevNet, 'v1c': MRevNetV1c, 'v1d': MRevNetV1d}


class ConversionError(ValueError):
    """A checkpoint that cannot be converted (e.g. a shape mismatch)."""


@dataclass
class ConversionResult:
    """Outcome of a conversion.

    Attributes:
        state_dict (OrderedDict): The converted tensors, in the key order of
            the target, restricted to the target's keys.
        source (str): The source library (detected or given).
        variant (str): ``'plain'``, ``'v1c'`` or ``'v1d'``.
        depth (int): Depth of the target.
        missing_keys (list[str]): Target keys the checkpoint does not fill.
        unexpected_keys (list[str]): Backbone keys of the checkpoint (after
            renaming) that the target does not have; left out of
            ``state_dict``.
        dropped_keys (list[str]): Keys outside the backbone (heads, necks,
            torchvision's ``fc``), left out on purpose.
        filled_keys (list[str]): ``num_batches_tracked`` buffers that old
            checkpoints lack, filled with zero.
        renamed (dict): Source key to target key, for renamed keys only.
    """

    state_dict: 'OrderedDict[str, Tensor]'
    source: str
    variant: str
    depth: int
    missing_keys: List[str] = field(default_factory=list)
    unexpected_keys: List[str] = field(default_factory=list)
    dropped_keys: List[str] = field(default_factory=list)
    filled_keys: List[str] = field(default_factory=list)
    renamed: Dict[str, str] = field(default_factory=dict)

    @property
    def complete(self) -> bool:
        """Whether the target loads it with ``strict=True``."""
        return not self.missing_keys and not self.unexpected_keys

    @property
    def target_type(self) -> str:
        """Registered name of the target backbone class."""
        return VARIANTS[self.variant].__name__

    def meta(self, **extra) -> dict:
        """The ``meta`` entry written next to the state dict.

        Args:
            **extra: More entries (e.g. the source file name).

        Returns:
            dict: Description of the conversion.
        """
        from mmrevnet import __version__

        meta = dict(
            converted_by='mmrevnet tools/model_converters/convert.py',
            mmrevnet_version=__version__,
            source=self.source,
            target=dict(
                type=self.target_type, depth=self.depth, style='pytorch'
            ),
            missing_keys=list(self.missing_keys),
            unexpected_keys=list(self.unexpected_keys),
            dropped_keys=list(self.dropped_keys),
            filled_keys=list(self.filled_keys),
        )
        meta.update(extra)
        return meta

    def summary(self) -> str:
        """Human-readable report of the conversion."""
        lines = [
            f'source: {self.source}; target: {self.target_type}'
            f'(depth={self.depth}); {len(self.state_dict)} tensors '
            f'({len(self.renamed)} renamed)'
        ]
        for title, keys in (
            ('missing keys (left at their initialisation)', self.missing_keys),
            ('unexpected keys (not written)', self.unexpected_keys),
            ('dropped keys (not part of the backbone)', self.dropped_keys),
            ('filled with zero', self.filled_keys),
        ):
            if keys:
                lines.append(f'{title}: {len(keys)}')
                lines.extend(f'    {key}' for key in keys)
        return '\n'.join(lines)


def load_state_dict(
    checkpoint: Union[str, Mapping],
) -> 'OrderedDict[str, Tensor]':
    """Read the tensors of a checkpoint file or object.

    Accepts a bare state dict (torchvision), or a dict holding it under
    ``'state_dict'`` (mmengine) or ``'model'`` (torchvision's reference
    training scripts).

    Args:
        checkpoint (str | Mapping): A path or URL understood by mmengine's
            ``CheckpointLoader``, or an already loaded checkpoint.

    Returns:
        OrderedDict: Key to tensor; non-tensor entries are left out.
    """
    if isinstance(checkpoint, str) and osp.isfile(checkpoint):
        checkpoint = _read_checkpoint_file(checkpoint)
    elif isinstance(checkpoint, str):
        from mmrevnet.engine.checkpoint import (
            UntrustedCheckpointError,
            load_runner_checkpoint,
        )

        try:
            checkpoint = load_runner_checkpoint(checkpoint, map_location='cpu')
        except UntrustedCheckpointError as error:
            raise ConversionError(str(error)) from None
    if not isinstance(checkpoint, Mapping):
        raise ConversionError(
            f'a checkpoint must be a dict, got {type(checkpoint).__name__}'
        )
    for key in ('state_dict', 'model'):
        if isinstance(checkpoint.get(key), Mapping):
            checkpoint = checkpoint[key]
            break
    tensors = OrderedDict(
        (k, v) for k, v in checkpoint.items() if isinstance(v, Tensor)
    )
    if not tensors:
        raise ConversionError('the checkpoint holds no tensors')
    return tensors


def _read_checkpoint_file(path: str):
    """Read a local checkpoint with ``torch.load(weights_only=True)``.

    The one place where the converter reads a file. A file that is neither
    a zip archive (``torch.save``) nor a pickle is refused as such, instead
    of with torch's advice to retry with ``weights_only=False``.
    """
    with open(path, 'rb') as f:
        head = f.read(4)
    # torch.save writes a zip archive; legacy files start with pickle's
    # protocol opcode 0x80.
    if not (zipfile.is_zipfile(path) or head[:1] == b'\x80'):
        raise ConversionError(
            f'{path} is not a PyTorch checkpoint (neither a zip archive nor '
            f'a pickle; it starts with {head!r})'
        )
    from mmrevnet.engine.checkpoint import (
        UntrustedCheckpointError,
        check_checkpoint_objects,
        runner_checkpoint_globals,
    )

    try:
        # Runner checkpoints (with their message hub) load too.
        with runner_checkpoint_globals(path):
            checkpoint = torch.load(
                path, map_location='cpu', weights_only=True
            )
        check_checkpoint_objects(checkpoint, path)
        return checkpoint
    except UntrustedCheckpointError as error:
        raise ConversionError(str(error)) from None
    except (pickle.UnpicklingError, RuntimeError, EOFError) as error:
        reason = next(
            (
                line.strip()
                for line in str(error).splitlines()
                if 'Unsupported global' in line
            ),
            str(error).splitlines()[0] if str(error) else type(error).__name__,
        )
        raise ConversionError(
            f'cannot read {path} as a checkpoint of tensors: {reason}'
        ) from None


_LAYER_BLOCK = re.compile(r'^layer([1-4])\.(\d+)\.')


def detect_layout(state_dict: Mapping[str, Tensor]) -> Tuple[str, int]:
    """Tell the variant and depth of a ResNet from its backbone tensors.

    Args:
        state_dict (Mapping[str, Tensor]): Backbone tensors, prefixes
            already stripped, in the layout of any of :data:`SOURCES`.

    Returns:
        tuple: ``(variant, depth)``: ``'plain'`` for a 7x7 stem
        (``conv1``), ``'v1d'`` for a deep stem with a pooling layer first
        in a downsample branch, else ``'v1c'``.

    Raises:
        ConversionError: When the stem or the block counts match no
            MRevNet.
    """
    if 'conv1.weight' in state_dict:
        variant = 'plain'
    elif 'stem.0.weight' in state_dict or 'stem.0.conv.weight' in state_dict:
        # The downsample conv follows an AvgPool2d in V1d (index 1).
        pooled = any(
            m and m.group(2) == '1' and m.group(3) == 'weight' and v.dim() == 4
            for m, v in (
                (_DOWNSAMPLE.match(k), v) for k, v in state_dict.items()
            )
        )
        variant = 'v1d' if pooled else 'v1c'
    else:
        raise ConversionError(
            'cannot tell the variant: the checkpoint has neither conv1.weight '
            '(7x7 stem) nor stem.0.weight / stem.0.conv.weight (deep stem); '
            'is it a ResNet?'
        )
    blocks = [0, 0, 0, 0]
    for key in state_dict:
        match = _LAYER_BLOCK.match(key)
        if match:
            stage, index = int(match.group(1)) - 1, int(match.group(2))
            blocks[stage] = max(blocks[stage], index + 1)
    bottleneck = 'layer1.0.conv3.weight' in state_dict
    for depth, (block, stages) in MRevNet.arch_settings.items():
        if tuple(stages) == tuple(blocks) and bottleneck == (
            block.expansion != 1
        ):
            return variant, depth
    raise ConversionError(
        f'cannot tell the depth: blocks per stage {tuple(blocks)} '
        f'({"bottleneck" if bottleneck else "basic"} blocks) match no '
        f'MRevNet depth {sorted(MRevNet.arch_settings)}'
    )


def target_shapes(
    depth: int, variant: str = 'v1c'
) -> 'OrderedDict[str, torch.Size]':
    """Key to shape of the state dict of the target MRevNet.

    Args:
        depth (int): 18, 34, 50, 101 or 152.
        variant (str): ``'plain'``, ``'v1c'`` or ``'v1d'``.
            Defaults to ``'v1c'``.

    Returns:
        OrderedDict: The target's keys (in order) and shapes.
    """
    if variant not in VARIANTS:
        raise ValueError(
            f'variant must be one of {tuple(VARIANTS)}, got {variant!r}'
        )
    # The meta device gives names and shapes without allocating tensors.
    with torch.device('meta'):
        model = VARIANTS[variant](depth=depth)
    return OrderedDict((k, v.shape) for k, v in model.state_dict().items())


def convert_state_dict(
    state_dict: Mapping[str, Tensor],
    depth: Optional[int] = None,
    variant: str = 'auto',
    source: str = 'auto',
    strict: bool = False,
) -> ConversionResult:
    """Convert the tensors of a ResNet checkpoint to an MRevNet state dict.

    Args:
        state_dict (Mapping[str, Tensor]): Tensors of the checkpoint (bare,
            or of a whole model with ``backbone.``/``module.`` prefixes).
        depth (int, optional): Depth of the target MRevNet; None reads it
            from the checkpoint. Defaults to None.
        variant (str): ``'plain'`` (``MRevNet``, 7x7 stem), ``'v1c'``
            (``MRevNetV1c``), ``'v1d'`` (``MRevNetV1d``) or ``'auto'``
            (from the checkpoint, :func:`detect_layout`).
            Defaults to ``'auto'``.
        source (str): ``'auto'`` or one of :data:`SOURCES`.
            Defaults to ``'auto'``.
        strict (bool): Raise :class:`ConversionError` when keys are missing
            or unexpected. Defaults to False.

    Returns:
        ConversionResult: The converted state dict and the key report.

    Raises:
        ConversionError: When a tensor's shape differs from the target's
            (always), or keys are missing or unexpected (``strict``).
    """
    backbone, dropped, _ = strip_prefixes(state_dict)
    if source == 'auto':
        source = detect_source(backbone, dropped)
    elif source not in SOURCES:
        raise ValueError(
            f"source must be 'auto' or one of {SOURCES}, got {source!r}"
        )
    if variant == 'auto' or depth is None:
        found_variant, found_depth = detect_layout(backbone)
        variant = found_variant if variant == 'auto' else variant
        depth = found_depth if depth is None else depth
    shapes = target_shapes(depth, variant)
    renamed_sd, dropped_fc, renamed = rename_keys(
        backbone, source, avg_down=VARIANTS[variant] is MRevNetV1d
    )
    dropped = dropped + dropped_fc

    mismatched = [
        f'  {key}: checkpoint {tuple(value.shape)}, '
        f'target {tuple(shapes[key])}'
        for key, value in renamed_sd.items()
        if key in shapes and value.shape != shapes[key]
    ]
    if mismatched:
        raise ConversionError(
            f'{len(mismatched)} tensor(s) of the {source} checkpoint do not '
            f'fit {VARIANTS[variant].__name__}(depth={depth}) (is the depth '
            'or the variant wrong?):\n' + '\n'.join(mismatched)
        )

    out, missing, filled = OrderedDict(), [], []
    for key, shape in shapes.items():
        if key in renamed_sd:
            out[key] = renamed_sd[key]
        elif (
            key.endswith('.num_batches_tracked')
            and key.rsplit('.', 1)[0] + '.running_mean' in renamed_sd
        ):
            # Checkpoints older than PyTorch 0.4.1 have no such buffer.
            out[key] = torch.zeros((), dtype=torch.long)
            filled.append(key)
        else:
            missing.append(key)
    unexpected = [k for k in renamed_sd if k not in shapes]
    result = ConversionResult(
        state_dict=out,
        source=source,
        variant=variant,
        depth=depth,
        missing_keys=missing,
        unexpected_keys=unexpected,
        dropped_keys=dropped,
        filled_keys=filled,
        renamed=renamed,
    )
    if strict and not result.complete:
        raise ConversionError(
            'the checkpoint does not fill the target exactly '
            '(strict conversion):\n' + result.summary()
        )
    return result


def convert_checkpoint(
    src: Union[str, Mapping],
    dst: Optional[str] = None,
    depth: Optional[int] = None,
    variant: str = 'auto',
    source: str = 'auto',
    strict: bool = False,
    overwrite: bool = False,
) -> ConversionResult:
    """Convert a checkpoint file and optionally save the MRevNet checkpoint.

    The saved file is ``{'state_dict': ..., 'meta': ...}`` (``meta`` from
    :meth:`ConversionResult.meta`), loadable with
    ``init_cfg=dict(type='Pretrained', checkpoint=dst)`` on the backbone or
    ``load_checkpoint``.

    Args:
        src (str | Mapping): Source checkpoint (path, URL or loaded dict).
        dst (str, optional): Where to save; None saves nothing.
            Defaults to None.
        depth (int, optional): Depth of the target; None reads it from
            the checkpoint. Defaults to None.
        variant (str): ``'plain'``, ``'v1c'``, ``'v1d'`` or ``'auto'``.
            Defaults to ``'auto'``.
        source (str): ``'auto'`` or one of :data:`SOURCES`.
            Defaults to ``'auto'``.
        strict (bool): Refuse (and save nothing) when keys are missing or
            unexpected. Defaults to False.
        overwrite (bool): Replace an existing ``dst``; otherwise an
            existing ``dst`` is refused before anything is read.
            Defaults to False.

    Returns:
        ConversionResult: The converted state dict and the key report.

    Raises:
        ConversionError: ``dst`` exists (without ``overwrite``), the source
            is not a checkpoint of tensors or is refused as untrusted, or
            the conversion is refused.
    """
    if dst is not None and osp.lexists(dst) and not overwrite:
        raise ConversionError(
            f'{dst} exists; refusing to overwrite it (--force, or '
            'overwrite=True, replaces it)'
        )
    result = convert_state_dict(
        load_state_dict(src),
        depth=depth,
        variant=variant,
        source=source,
        strict=strict,
    )
    if dst is not None:
        extra = {}
        if isinstance(src, str):
            extra['source_checkpoint'] = src
        folder = osp.dirname(osp.abspath(dst))
        os.makedirs(folder, exist_ok=True)
        torch.save(
            dict(state_dict=result.state_dict, meta=result.meta(**extra)),
            dst,
        )
    return result
