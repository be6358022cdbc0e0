"""Loading ResNet weights into m-RevNet backbones.

The key mapping of mmpretrain's and torchvision's ResNet layouts (applied by
a load pre-hook, so ``init_cfg=dict(type='Pretrained')`` reads them), the
``residual_fn`` record of a saved MRevNet, the warm-start default of
``residual_fn``, the strict check of ``Pretrained`` weights, and the
refusal to load while torch is told to skip its ``weights_only`` check
(:func:`check_full_pickle_not_forced`, raising
:class:`UntrustedCheckpointError`, which the engine's safe loader raises
too).
"""

import contextlib
import copy
import os
import pickle
import re
import warnings
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import List

from torch import nn

from .key_mapping import detect_source, rename_keys

#: The torch variable that makes every torch.load a full pickle load.
FORCE_FULL_PICKLE_ENV = 'TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD'


class UntrustedCheckpointError(pickle.UnpicklingError):
    """A checkpoint holds objects that safe loading refuses to build."""


def check_full_pickle_not_forced() -> None:
    """Refuse to load while torch is told to skip its ``weights_only`` check.

    With ``TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD=1`` in the environment, torch
    ignores ``weights_only=True`` and runs the full pickle, which executes
    whatever a file asks for; the project's loaders refuse to run then.

    Raises:
        UntrustedCheckpointError: The variable is set to a true value.
    """
    value = os.environ.get(FORCE_FULL_PICKLE_ENV, '')
    if value.strip().lower() in ('1', 'y', 'yes', 'true'):
        raise UntrustedCheckpointError(
            f'{FORCE_FULL_PICKLE_ENV}={value} is set: torch would load every '
            'checkpoint with the full pickle, which runs any code a file '
            'holds, so mmrevnet refuses to load checkpoints. Unset it; to '
            'load a file you trust, use torch.load(path, weights_only=False) '
            'in a separate step and save its tensors.'
        )


class CheckpointMismatchError(RuntimeError):
    """A checkpoint that does not fill the model exactly."""


@dataclass
class KeyReport:
    """How a checkpoint's tensors fit a model.

    Attributes:
        missing (list[str]): Model keys the checkpoint lacks
            (``num_batches_tracked`` excepted, as mmengine does).
        unexpected (list[str]): Checkpoint keys the model lacks.
        mismatched (list[str]): ``key: checkpoint shape vs model shape``.
    """

    missing: List[str] = field(default_factory=list)
    unexpected: List[str] = field(default_factory=list)
    mismatched: List[str] = field(default_factory=list)

    @property
    def exact(self) -> bool:
        """Whether the checkpoint fills the model exactly."""
        return not (self.missing or self.unexpected or self.mismatched)

    def describe(self, first: int = 5) -> str:
        """The first ``first`` keys of each kind, with their counts."""
        lines = []
        for title, keys in (
            ('missing keys', self.missing),
            ('unexpected keys', self.unexpected),
            ('size-mismatched keys', self.mismatched),
        ):
            if not keys:
                continue
            lines.append(f'{len(keys)} {title}:')
            lines.extend(f'    {key}' for key in keys[:first])
            if len(keys) > first:
                lines.append(f'    ... and {len(keys) - first} more')
        return '\n'.join(lines)


def compare_state_dict(model: nn.Module, state_dict, prefix='') -> KeyReport:
    """Compare checkpoint tensors with a model's, as loading would see them.

    Modules that rename mmpretrain's and torchvision's layouts on load (the
    MRevNet backbones: ``maps_resnet_keys_on_load = True``, see
    :func:`map_resnet_keys`) get the same renaming, applied to a copy here
    first.

    Args:
        model (nn.Module): The model.
        state_dict (Mapping): The checkpoint's tensors.
        prefix (str): Prefix of the model's keys in ``state_dict``.

    Returns:
        KeyReport: Missing, unexpected and size-mismatched keys.
    """
    mapped = OrderedDict(state_dict)
    for name, module in model.named_modules():
        if getattr(module, 'maps_resnet_keys_on_load', False):
            map_resnet_keys(module, mapped, prefix + (name and name + '.'))
    own = OrderedDict(
        (prefix + key, value) for key, value in model.state_dict().items()
    )
    report = KeyReport()
    for key, value in own.items():
        if key not in mapped:
            if not key.endswith('num_batches_tracked'):
                report.missing.append(key)
        elif tuple(mapped[key].shape) != tuple(value.shape):
            report.mismatched.append(
                f'{key}: checkpoint {tuple(mapped[key].shape)}, model '
                f'{tuple(value.shape)}'
            )
    report.unexpected = [
        key for key in mapped if key.startswith(prefix) and key not in own
    ]
    return report


def _gives_pretrained_weights(pretrained, init_cfg) -> bool:
    if isinstance(pretrained, str):
        return True
    cfgs = init_cfg if isinstance(init_cfg, (list, tuple)) else [init_cfg]
    return any(
        isinstance(cfg, dict) and cfg.get('type') == 'Pretrained'
        for cfg in cfgs
    )


def resolve_residual_fn(residual_fn, pretrained=None, init_cfg=None) -> str:
    """The residual function a backbone builds for ``residual_fn``.

    Args:
        residual_fn (str, optional): ``'branch'``, ``'block'``, or None /
            ``'auto'``.
        pretrained (str, optional): The backbone's ``pretrained``.
        init_cfg (dict | list[dict], optional): The backbone's ``init_cfg``.

    Returns:
        str: ``residual_fn`` itself when given; for None / ``'auto'``,
        ``'block'`` when pretrained weights are given (ResNet weights keep
        their meaning in ``block(x) - x``) and ``'branch'`` otherwise (the
        m-RevNet paper's choice for training from scratch).
    """
    if residual_fn not in (None, 'auto'):
        return residual_fn
    if _gives_pretrained_weights(pretrained, init_cfg):
        return 'block'
    return 'branch'


# Metadata entry that marks a state dict saved from an MRevNet.
_RESIDUAL_FN_MARK = 'mrevnet_residual_fn'
# Keys of momentum blocks (block 1.. of a stage).
_MOMENTUM_KEY = re.compile(r'^layer\d+\.[1-9]\d*\.')


def record_residual_fn(module, state_dict, prefix, local_metadata) -> None:
    """State-dict hook: mark the weights with the backbone's residual_fn.

    The mark lives in the state dict's ``_metadata`` (like a module's
    version), so the keys stay those of the ResNet. Loading with a prefix
    (``Pretrained`` with ``prefix=``) loses it.
    """
    local_metadata[_RESIDUAL_FN_MARK] = module.residual_fn


def _check_stem_layout(module, keys) -> None:
    # Refused even for a non-strict load: torch passes strict=True to every
    # hook whatever the caller asked, and a "pretrained" network whose stem
    # stayed at its initialisation is never what was meant.
    deep = 'stem.0.weight' in keys
    plain = 'conv1.weight' in keys
    if deep == plain or deep == module.deep_stem:
        return
    if module.deep_stem:
        found = 'a 7x7 stem (conv1.*, torchvision or ResNet layout)'
        fix = 'MRevNet (deep_stem=False)'
    else:
        found = 'a deep stem (stem.*, ResNetV1c/V1d layout)'
        fix = 'MRevNetV1c or MRevNetV1d'
    raise ValueError(
        f'the checkpoint has {found} but this {type(module).__name__} has '
        f'deep_stem={module.deep_stem}: its stem would stay at its '
        f'initialisation. Build {fix} for these weights.'
    )


def _warn_residual_fn(module, keys, local_metadata) -> None:
    if module._warned_residual_fn or not any(map(_MOMENTUM_KEY.match, keys)):
        return
    recorded = local_metadata.get(_RESIDUAL_FN_MARK)
    if recorded == module.residual_fn or (
        recorded is None and module.residual_fn == 'block'
    ):
        return
    module._warned_residual_fn = True
    if recorded is None:
        warnings.warn(
            'loading weights that carry no m-RevNet mark (ResNet weights, '
            'converted ones, or any loaded with a prefix) into momentum '
            "blocks with residual_fn='branch': ResNet weights lose their "
            'meaning there (F is the residual branch alone). For ResNet '
            "weights use residual_fn='block' (the default when pretrained "
            'weights are given). If these are weights of an m-RevNet trained '
            "with residual_fn='branch', this does not apply."
        )
    else:
        warnings.warn(
            f'the checkpoint was saved from an MRevNet with '
            f'residual_fn={recorded!r}, but this one uses '
            f'residual_fn={module.residual_fn!r}: the momentum blocks compute '
            f'a different function with the same weights. Set '
            f'residual_fn={recorded!r} to keep it.'
        )


def map_resnet_keys(module, state_dict, prefix: str = '') -> OrderedDict:
    """Rename mmpretrain's / torchvision's ResNet keys, in place.

    mmpretrain's deep stem (``stem.<i>.conv``/``stem.<i>.bn``, and V1d's
    pool-less stride-one downsample) becomes mmseg's keys and
    torchvision's classifier ``fc`` is dropped, with the renaming of
    :mod:`tools.model_converters.convert`; other keys are left alone.

    Args:
        module (MRevNet): The backbone the weights are for.
        state_dict (dict): Checkpoint tensors; changed in place.
        prefix (str): Where the backbone's keys start in ``state_dict``.
            Defaults to ''.

    Returns:
        OrderedDict: The backbone's tensors after renaming, without
        ``prefix``.
    """
    names = [key for key in state_dict if key.startswith(prefix)]
    local = OrderedDict((key[len(prefix) :], state_dict[key]) for key in names)
    if not local:
        return local
    source = detect_source(local)
    if source != 'mmseg':
        local, _, _ = rename_keys(local, source, avg_down=module.avg_down)
        for key in names:
            del state_dict[key]
        state_dict.update(
            (prefix + key, value) for key, value in local.items()
        )
    return local


def map_resnet_keys_on_load(
    module,
    state_dict,
    prefix,
    local_metadata,
    strict,
    missing_keys,
    unexpected_keys,
    error_msgs,
) -> None:
    """Load pre-hook: read mmpretrain's and torchvision's ResNet layouts.

    Renames with :func:`map_resnet_keys`; every other key is left to the
    usual strict or non-strict check. A checkpoint whose stem is of the
    other layout (torchvision's 7x7 stem into a deep-stem backbone) is
    refused with :class:`ValueError` naming the variant to build.
    """
    local = map_resnet_keys(module, state_dict, prefix)
    if not local:
        return
    _check_stem_layout(module, local)
    _warn_residual_fn(module, list(local), local_metadata)


def split_pretrained_strict(init_cfg):
    """``init_cfg`` without the ``strict`` key of its ``Pretrained`` entry.

    mmengine's ``PretrainedInit`` takes no ``strict`` argument (it always
    loads non-strictly and logs the keys), so the backbone reads it and
    checks the weights itself (:func:`pretrained_fit_check`).

    Args:
        init_cfg (dict | list[dict], optional): The backbone's ``init_cfg``.

    Returns:
        tuple: ``(init_cfg, strict)``; ``init_cfg`` is a copy without
        ``strict`` where one was given, ``strict`` is True unless a
        ``Pretrained`` entry says ``strict=False``.

    Raises:
        TypeError: ``strict`` is not a bool.
    """
    cfgs = init_cfg if isinstance(init_cfg, (list, tuple)) else [init_cfg]
    strict = True
    cleaned = []
    for cfg in cfgs:
        if isinstance(cfg, dict) and cfg.get('type') == 'Pretrained':
            if 'strict' in cfg:
                cfg = copy.copy(cfg)
                strict = cfg.pop('strict')
                if not isinstance(strict, bool):
                    raise TypeError(
                        "init_cfg=dict(type='Pretrained', strict=...) must "
                        f'be a bool, got {strict!r}'
                    )
        cleaned.append(cfg)
    if isinstance(init_cfg, (list, tuple)):
        return type(init_cfg)(cleaned), strict
    return cleaned[0], strict


def _pretrained_checkpoint(init_cfg):
    cfgs = init_cfg if isinstance(init_cfg, (list, tuple)) else [init_cfg]
    for cfg in cfgs:
        if isinstance(cfg, dict) and cfg.get('type') == 'Pretrained':
            return cfg
    return None


@contextlib.contextmanager
def pretrained_fit_check(module, strict: bool = True):
    """Refuse ``Pretrained`` weights that do not fill the backbone.

    While active, a load pre-hook (after the key mapping) compares the
    weights with the backbone: missing keys (``num_batches_tracked``
    excepted), tensors of another shape, and unexpected keys inside the
    backbone's own modules (a deeper network's extra blocks) raise
    :class:`CheckpointMismatchError` with the lists. Keys outside them
    (a classifier's ``fc``, ``head``) are left to mmengine's log. With
    ``TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD`` set, refuses to load at all.

    Args:
        module (MRevNet): The backbone.
        strict (bool): False leaves mmengine's behaviour (the keys are only
            logged). Defaults to True.
    """
    cfg = _pretrained_checkpoint(module.init_cfg)
    if cfg is None:
        yield
        return
    # torch would load the file with the full pickle.
    check_full_pickle_not_forced()
    if not strict:
        yield
        return

    own = {name for name, _ in module.named_children()}

    def check(hooked, state_dict, prefix, *args):
        report = compare_state_dict(hooked, state_dict, prefix)
        report.unexpected = [
            key
            for key in report.unexpected
            if key[len(prefix) :].split('.', 1)[0] in own
        ]
        if report.exact:
            return
        if len(report.missing) == len(
            [k for k in hooked.state_dict() if 'num_batches_tracked' not in k]
        ):
            report.missing.insert(0, '(no key of the checkpoint matches)')
        prefix_note = f', prefix={cfg["prefix"]!r}' if 'prefix' in cfg else ''
        raise CheckpointMismatchError(
            f"init_cfg=dict(type='Pretrained', checkpoint="
            f'{cfg.get("checkpoint")!r}{prefix_note}) does not fit this '
            f'{type(hooked).__name__} (depth={hooked.depth}):\n'
            f'{report.describe()}\n'
            '(is it for another depth or variant, or another prefix? add '
            'strict=False to the init_cfg to load the matching tensors '
            'anyway)'
        )

    handle = module.register_load_state_dict_pre_hook(check)
    try:
        yield
    finally:
        handle.remove()
