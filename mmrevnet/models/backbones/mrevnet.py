"""m-RevNet backbones: ResNet layouts whose stages are momentum stages.

m-RevNet: Deep Reversible Neural Networks with Momentum (Li & Gao,
ICCV 2021, arXiv 2108.05862); the update is the one of Momentum Residual
Neural Networks (Sander et al., ICML 2021).
"""

import math
import numbers
import re
import warnings
from collections import OrderedDict
from typing import Dict, Optional, Sequence

import torch
from mmcv.cnn import build_conv_layer, build_norm_layer
from mmcv.cnn.bricks import DropPath
from mmengine.model import Sequential
from mmengine.registry import MODELS
from mmseg.models.backbones.resnet import BasicBlock, Bottleneck, ResNet
from torch import Tensor, nn

from mmrevnet.reversible import (
    DEFAULT_MAX_AMPLIFICATION,
    MomentumStage,
    StageConfig,
    checkpointed_call,
    stage_mode,
)

RESIDUAL_FNS = ('branch', 'block')


def _basic_branch(block: BasicBlock, x: Tensor) -> Tensor:
    out = block.relu(block.norm1(block.conv1(x)))
    return block.norm2(block.conv2(out))


def _bottleneck_branch(block: Bottleneck, x: Tensor) -> Tensor:
    out = block.relu(block.norm1(block.conv1(x)))
    out = block.relu(block.norm2(block.conv2(out)))
    return block.norm3(block.conv3(out))


class _MMPretrainBlockArgs:
    """mmseg's block plus mmpretrain's ``expansion`` and ``drop_path_rate``.

    ``expansion`` is the ratio of output to inner width (mmseg fixes it per
    block class; mmseg's ``__init__`` reads ``self.expansion``, so an
    instance value set before it takes effect). ``drop_path_rate`` is the
    probability of stochastic depth: in training, the residual branch of a
    sample is dropped (and the kept ones scaled by ``1 / (1 - p)``), as in
    mmpretrain's ResNet blocks. No parameter is added, so the state-dict
    keys stay those of mmseg's blocks.
    """

    def __init__(
        self,
        *args,
        expansion: Optional[int] = None,
        drop_path_rate: float = 0.0,
        **kwargs,
    ):
        if expansion is not None:
            self.expansion = expansion
        super().__init__(*args, **kwargs)
        self.drop_path = (
            DropPath(drop_prob=drop_path_rate)
            if drop_path_rate > 0
            else nn.Identity()
        )


class _TransitionBlock(_MMPretrainBlockArgs):
    """Block 0 of a stage: the ResNet block, with drop path on its branch.

    Same computation as mmseg's block without plugins (checkpointing is
    done by :class:`MomentumResLayer`, not by the block).
    """

    def forward(self, x: Tensor) -> Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        return self.relu(self.drop_path(self._branch(x)) + identity)


class TransitionBasicBlock(_TransitionBlock, BasicBlock):
    """Block 0 of a stage of BasicBlocks (same parameter names)."""

    _branch = _basic_branch


class TransitionBottleneck(_TransitionBlock, Bottleneck):
    """Block 0 of a stage of Bottlenecks (same parameter names)."""

    _branch = _bottleneck_branch


class _MomentumResidual(_MMPretrainBlockArgs):
    """Turns a ResNet block into the residual function ``F`` of a stage.

    ``residual_fn='branch'`` gives the residual branch (convolutions and
    norms, no identity, no final ReLU), as in m-RevNet. ``'block'`` gives
    ``block(x) - x``, so that ``gamma = 0`` is exactly the ResNet block
    (Momentum ResNets' choice for warm-starting from ResNet weights).
    Drop path acts on the branch in both, where mmpretrain's ResNet block
    puts it. Parameter names are those of the ResNet block.

    Args:
        residual_fn (str): ``'branch'`` or ``'block'``.
            Defaults to ``'branch'``.
        **kwargs: Arguments of the ResNet block.
    """

    def __init__(self, residual_fn: str = 'branch', **kwargs):
        super().__init__(**kwargs)
        self.residual_fn = residual_fn

    def forward(self, x: Tensor) -> Tensor:
        branch = self.drop_path(self._branch(x))
        if self.residual_fn == 'branch':
            return branch
        return self.relu(branch + x) - x


class MomentumBasicBlock(_MomentumResidual, BasicBlock):
    """``F`` built from a :class:`BasicBlock` (same parameter names)."""

    _branch = _basic_branch


class MomentumBottleneck(_MomentumResidual, Bottleneck):
    """``F`` built from a :class:`Bottleneck` (same parameter names)."""

    _branch = _bottleneck_branch


# mmseg block -> (transition block, momentum block).
_STAGE_BLOCKS = {
    BasicBlock: (TransitionBasicBlock, MomentumBasicBlock),
    Bottleneck: (TransitionBottleneck, MomentumBottleneck),
}


def _needs_grad(modules: Sequence[nn.Module], x: Tensor) -> bool:
    if not torch.is_grad_enabled():
        return False
    return x.requires_grad or any(
        p.requires_grad for m in modules for p in m.parameters()
    )


class MomentumResLayer(Sequential):
    """One stage: a ResNet transition block, then a momentum stage.

    Block 0 changes stride, dilation and width exactly like the first block
    of a ResNet stage (with its downsample branch); blocks ``1..n-1`` are the
    residual functions of a :class:`MomentumStage` whose velocity starts at
    zero. Children are named ``0 .. n-1`` so that the parameter names equal
    those of mmseg's ``ResLayer``.

    Args:
        block (type): :class:`BasicBlock` or :class:`Bottleneck`.
        inplanes (int): Input channels.
        planes (int): Block width (output is ``planes * expansion``).
        num_blocks (int): Blocks in the stage (at least 1).
        stage (MomentumStage): The momentum stage; its mode also decides
            whether block 0 is checkpointed in training (any mode but
            ``'plain'``, unless ``keep_transition``).
        stride (int): Stride of block 0. Defaults to 1.
        dilation (int): Dilation of the stage. Defaults to 1.
        avg_down (bool): AvgPool before the downsample conv.
            Defaults to False.
        conv_cfg (dict, optional): Conv layer config. Defaults to None.
        norm_cfg (dict): Norm layer config. Defaults to dict(type='BN').
        multi_grid (Sequence[int], optional): Per-block dilations of the
            stage. Defaults to None.
        contract_dilation (bool): Halve the dilation of block 0.
            Defaults to False.
        residual_fn (str): ``'branch'`` or ``'block'``. Defaults to
            ``'branch'``.
        expansion (int, optional): Output width over block width; None
            uses the block's own (1 or 4). Defaults to None.
        drop_path_rates (Sequence[float], optional): Stochastic depth rate
            of each block of the stage; None drops nothing.
            Defaults to None.
        keep_transition (bool): Keep block 0's activations instead of
            checkpointing it (part of a memory plan). Defaults to False.
        **kwargs: Passed to every block (``style``, ``init_cfg``).
    """

    def __init__(
        self,
        block,
        inplanes: int,
        planes: int,
        num_blocks: int,
        stage: MomentumStage,
        stride: int = 1,
        dilation: int = 1,
        avg_down: bool = False,
        conv_cfg: Optional[dict] = None,
        norm_cfg: dict = dict(type='BN'),
        multi_grid: Optional[Sequence[int]] = None,
        contract_dilation: bool = False,
        residual_fn: str = 'branch',
        expansion: Optional[int] = None,
        drop_path_rates: Optional[Sequence[float]] = None,
        keep_transition: bool = False,
        **kwargs,
    ):
        downsample = None
        if expansion is None:
            expansion = block.expansion
        if drop_path_rates is None:
            drop_path_rates = [0.0] * num_blocks
        outplanes = planes * expansion
        if stride != 1 or inplanes != outplanes:
            layers = []
            conv_stride = stride
            if avg_down:
                conv_stride = 1
                layers.append(
                    nn.AvgPool2d(
                        kernel_size=stride,
                        stride=stride,
                        ceil_mode=True,
                        count_include_pad=False,
                    )
                )
            layers += [
                build_conv_layer(
                    conv_cfg,
                    inplanes,
                    outplanes,
                    kernel_size=1,
                    stride=conv_stride,
                    bias=False,
                ),
                build_norm_layer(norm_cfg, outplanes)[1],
            ]
            downsample = nn.Sequential(*layers)
        if multi_grid is not None:
            dilations = list(multi_grid)
        else:
            first = (
                dilation // 2
                if (dilation > 1 and contract_dilation)
                else dilation
            )
            dilations = [first] + [dilation] * (num_blocks - 1)
        transition_block, momentum_block = _STAGE_BLOCKS[block]
        blocks = [
            transition_block(
                inplanes=inplanes,
                planes=planes,
                stride=stride,
                dilation=dilations[0],
                downsample=downsample,
                conv_cfg=conv_cfg,
                norm_cfg=norm_cfg,
                expansion=expansion,
                drop_path_rate=drop_path_rates[0],
                **kwargs,
            )
        ]
        for index in range(1, num_blocks):
            function = momentum_block(
                residual_fn=residual_fn,
                inplanes=outplanes,
                planes=planes,
                stride=1,
                dilation=dilations[index],
                conv_cfg=conv_cfg,
                norm_cfg=norm_cfg,
                expansion=expansion,
                drop_path_rate=drop_path_rates[index],
                **kwargs,
            )
            blocks.append(function)
        super().__init__(*blocks)
        self.stage = stage
        self.keep_transition = keep_transition

    @property
    def functions(self):
        """The residual functions of the momentum stage."""
        return list(self)[1:]

    def forward(self, x: Tensor) -> Tensor:
        transition = self[0]
        if (
            self.stage.config.mode != 'plain'
            and not self.keep_transition
            and self.training
            and _needs_grad([transition], x)
        ):
            x = checkpointed_call(transition, x)
        else:
            x = transition(x)
        return self.stage(self.functions, x, training=self.training)


def _is_int(value) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


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


def _record_residual_fn(module, state_dict, prefix, local_metadata) -> None:
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
    :mod:`mmrevnet.models.convert`; other keys are left alone.

    Args:
        module (MRevNet): The backbone the weights are for.
        state_dict (dict): Checkpoint tensors; changed in place.
        prefix (str): Where the backbone's keys start in ``state_dict``.
            Defaults to ''.

    Returns:
        OrderedDict: The backbone's tensors after renaming, without
        ``prefix``.
    """
    # convert.py imports the backbones; import it when loading, not before.
    from mmrevnet.models.convert import detect_source, rename_keys

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


def _map_resnet_keys(
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


@MODELS.register_module()
class MRevNet(ResNet):
    """m-RevNet backbone: a ResNet whose stages are reversible momentum stages.

    A drop-in replacement for mmseg's ``ResNet``: same arguments with the
    same meaning and defaults (plus mmpretrain's ``expansion`` and
    ``drop_path_rate``), same output shapes and the same state-dict keys,
    so ImageNet ResNet checkpoints load without missing keys (mmpretrain's
    and torchvision's layouts are renamed on load). The features are not
    those of the ResNet unless ``gamma=0`` and ``residual_fn='block'``. Inside
    each stage, block 0 is the ordinary ResNet block (stride, dilation,
    width change) and blocks ``1..n-1`` run the momentum update
    ``v <- gamma * v + (1 - gamma) * F(x); x <- x + v`` with a velocity that
    starts at zero (m-RevNet, Li & Gao, ICCV 2021; Momentum ResNets,
    Sander et al., ICML 2021).

    With ``memory_saving=True``, in training, the momentum blocks keep no
    activations (the backward reconstructs them from the stage end), and the
    stem and the transition blocks are checkpointed, so activation memory no
    longer grows with depth. In eval mode or under ``torch.no_grad()`` every
    module runs plainly.

    Args:
        depth (int): Depth of the network, from {18, 34, 50, 101, 152}.
        in_channels (int): Number of input image channels. Defaults to 3.
        stem_channels (int): Number of stem channels. Defaults to 64.
        base_channels (int): Number of base channels of res layer.
            Defaults to 64.
        expansion (int, optional): Output width of a block over its inner
            width, as in mmpretrain's ResNet; None uses the block's own
            (1 for depths 18/34, which allow only 1, else 4).
            Defaults to None.
        num_stages (int): Number of stages, 1 to 4. Defaults to 4.
        strides (Sequence[int]): Strides of the first block of each stage.
            Defaults to (1, 2, 2, 2).
        dilations (Sequence[int]): Dilation of each stage.
            Defaults to (1, 1, 1, 1).
        out_indices (Sequence[int]): Output from which stages.
            Defaults to (0, 1, 2, 3).
        style (str): ``'pytorch'`` or ``'caffe'``: where the stride-two
            layer of a bottleneck is. Defaults to ``'pytorch'``.
        deep_stem (bool): Three 3x3 convs instead of the 7x7 stem conv.
            Defaults to False.
        avg_down (bool): AvgPool instead of a strided conv in the downsample
            branch. Defaults to False.
        frozen_stages (int): Stages to freeze (no grad, BN in eval); -1
            freezes nothing, 0 the stem. Defaults to -1.
        conv_cfg (dict, optional): Conv layer config. Defaults to None.
        norm_cfg (dict): Norm layer config.
            Defaults to ``dict(type='BN', requires_grad=True)``.
        norm_eval (bool): Keep BN layers in eval mode during training.
            Defaults to False.
        dcn (dict, optional): Not supported; must be None.
        stage_with_dcn (Sequence[bool]): Only all-False is supported.
            Defaults to (False, False, False, False).
        plugins (list[dict], optional): Not supported; must be None.
        multi_grid (Sequence[int], optional): Dilation rates of the blocks of
            the last stage. Defaults to None.
        contract_dilation (bool): Halve the dilation of the first block of a
            dilated stage. Defaults to False.
        with_cp (bool): Checkpoint the stem and the transition blocks, and
            with ``memory_saving=False`` each momentum block too. With
            ``memory_saving=True`` the stem and the transition blocks are
            checkpointed anyway, so it changes nothing there.
            Defaults to False.
        zero_init_residual (bool): Zero-init the last norm of every block.
            Defaults to True.
        pretrained (str, optional): Deprecated; use ``init_cfg``.
            Defaults to None.
        init_cfg (dict | list[dict], optional): Initialization config.
            Defaults to None.
        gamma (float): Momentum ``gamma = 1 - mu`` of the velocity update;
            in (0, 1) with ``memory_saving=True``, [0, 1) otherwise.
            Defaults to 0.9.
        memory_saving (bool): Reconstruct activations in the backward pass
            instead of storing them. Defaults to True.
        residual_fn (str, optional): The residual function ``F`` of
            momentum blocks: ``'branch'`` (the block's residual branch, as
            in m-RevNet, for training from scratch) or ``'block'``
            (``block(x) - x``; with ``gamma = 0`` the network is exactly the
            ResNet, so ResNet weights keep their meaning). None or
            ``'auto'`` picks ``'block'`` when pretrained weights are given
            (``pretrained``, or an ``init_cfg`` of type ``'Pretrained'``)
            and ``'branch'`` otherwise. Loading weights that are not marked
            as ``'branch'`` m-RevNet weights into ``'branch'`` warns once.
            Defaults to None.
        drop_path_rate (float): Stochastic depth rate of the last block, as
            in mmpretrain's ResNet: the rate grows linearly from 0 at the
            first block of the network; in [0, 1). The memory-saving
            backward replays the same drops. Defaults to 0.0.
        track_drift (bool): Measure in every backward how far each stage's
            reconstructed input drifted from the true one (keeps two extra
            tensors per stage; see :meth:`reconstruction_drift`).
            Defaults to False.
        max_amplification (float, optional): Largest growth of rounding
            errors accepted between two stored states of a stage; smaller
            gamma or deeper stages store intermediate states to stay below
            it (see ``mmrevnet.reversible.coupling``). None uses 2**8.
            Defaults to None.
        stored_blocks (Sequence[int], optional): The memory plan of
            ``memory_saving=True``: per stage, how many blocks from its
            start keep their activations instead of being recomputed
            (block 0, the transition block, is checkpointed otherwise; the
            momentum blocks are reversed). From 0 (the least memory) to
            the stage's number of blocks (no recomputation in that stage);
            ``tools/analysis_tools/plan_memory.py`` picks one for a budget.
            None keeps nothing. Defaults to None.
        store_stem (bool): With ``memory_saving=True`` or ``with_cp``, keep
            the stem's activations instead of checkpointing it.
            Defaults to False.
    """

    def __init__(
        self,
        depth: int,
        in_channels: int = 3,
        stem_channels: int = 64,
        base_channels: int = 64,
        expansion: Optional[int] = None,
        num_stages: int = 4,
        strides: Sequence[int] = (1, 2, 2, 2),
        dilations: Sequence[int] = (1, 1, 1, 1),
        out_indices: Sequence[int] = (0, 1, 2, 3),
        style: str = 'pytorch',
        deep_stem: bool = False,
        avg_down: bool = False,
        frozen_stages: int = -1,
        conv_cfg: Optional[dict] = None,
        norm_cfg: dict = dict(type='BN', requires_grad=True),
        norm_eval: bool = False,
        dcn: Optional[dict] = None,
        stage_with_dcn: Sequence[bool] = (False, False, False, False),
        plugins: Optional[list] = None,
        multi_grid: Optional[Sequence[int]] = None,
        contract_dilation: bool = False,
        with_cp: bool = False,
        zero_init_residual: bool = True,
        pretrained: Optional[str] = None,
        init_cfg=None,
        gamma: float = 0.9,
        memory_saving: bool = True,
        residual_fn: Optional[str] = None,
        track_drift: bool = False,
        max_amplification: Optional[float] = None,
        drop_path_rate: float = 0.0,
        stored_blocks: Optional[Sequence[int]] = None,
        store_stem: bool = False,
    ):
        _check_arguments(
            arch_settings=self.arch_settings,
            depth=depth,
            in_channels=in_channels,
            stem_channels=stem_channels,
            base_channels=base_channels,
            num_stages=num_stages,
            strides=strides,
            dilations=dilations,
            out_indices=out_indices,
            style=style,
            frozen_stages=frozen_stages,
            dcn=dcn,
            stage_with_dcn=stage_with_dcn,
            plugins=plugins,
            multi_grid=multi_grid,
            residual_fn=residual_fn,
            expansion=expansion,
            drop_path_rate=drop_path_rate,
        )
        block, stage_blocks = self.arch_settings[depth]
        self.expansion = block.expansion if expansion is None else expansion
        # mmpretrain's stochastic depth rule: linear in the block index over
        # all blocks of the architecture (num_stages does not change it).
        self._drop_path_rates = torch.linspace(
            0, drop_path_rate, sum(stage_blocks), device='cpu'
        ).tolist()
        self.drop_path_rate = drop_path_rate
        self.stored_blocks = _check_plan(
            stored_blocks, stage_blocks[:num_stages], memory_saving
        )
        if not isinstance(store_stem, bool):
            raise TypeError(f'store_stem must be a bool, got {store_stem!r}')
        self.store_stem = store_stem
        # The stage settings, validated once here (every stage's config is
        # this one with its own length and name).
        self._stage_config = StageConfig(
            0,
            gamma=gamma,
            mode=stage_mode(memory_saving, with_cp),
            track_drift=track_drift,
            max_amplification=(
                DEFAULT_MAX_AMPLIFICATION
                if max_amplification is None
                else max_amplification
            ),
        )
        self.residual_fn = resolve_residual_fn(
            residual_fn, pretrained, init_cfg
        )
        self._warned_residual_fn = False
        super().__init__(
            depth=depth,
            in_channels=in_channels,
            stem_channels=stem_channels,
            base_channels=base_channels,
            num_stages=num_stages,
            strides=tuple(strides),
            dilations=tuple(dilations),
            out_indices=tuple(out_indices),
            style=style,
            deep_stem=deep_stem,
            avg_down=avg_down,
            frozen_stages=frozen_stages,
            conv_cfg=conv_cfg,
            norm_cfg=norm_cfg,
            norm_eval=norm_eval,
            dcn=None,
            stage_with_dcn=stage_with_dcn,
            plugins=None,
            multi_grid=multi_grid,
            contract_dilation=contract_dilation,
            with_cp=with_cp,
            zero_init_residual=zero_init_residual,
            pretrained=pretrained,
            init_cfg=init_cfg,
        )
        self.in_channels = in_channels
        self.feat_dim = (
            self.expansion * base_channels * 2 ** (len(self.stage_blocks) - 1)
        )
        self.register_load_state_dict_pre_hook(_map_resnet_keys)
        self.register_state_dict_post_hook(_record_residual_fn)

    @property
    def gamma(self) -> float:
        """Momentum of every stage."""
        return self._stage_config.gamma

    @property
    def memory_saving(self) -> bool:
        """Whether training reconstructs activations in the backward."""
        return self._stage_config.memory_saving

    @property
    def stage_mode(self) -> str:
        """``'reversible'``, ``'checkpoint'`` or ``'plain'``."""
        return self._stage_config.mode

    @property
    def stages(self) -> Dict[str, MomentumStage]:
        """The momentum stage of each res layer, by layer name."""
        return {name: getattr(self, name).stage for name in self.res_layers}

    def make_res_layer(self, **kwargs) -> MomentumResLayer:
        """Build one stage as a :class:`MomentumResLayer`."""
        for unused in ('dcn', 'plugins', 'with_cp'):
            kwargs.pop(unused)
        # ResNet builds stage i with planes = base_channels * 2**i.
        index = int(math.log2(kwargs['planes'] // self.base_channels))
        if index > 0:
            # mmseg's ResNet assumes the block class's expansion here.
            kwargs['inplanes'] = (
                self.base_channels * 2 ** (index - 1) * self.expansion
            )
        first = sum(self.stage_blocks[:index])
        rates = self._drop_path_rates[first : first + kwargs['num_blocks']]
        stored = self.stored_blocks[index]
        config = self._stage_config.replace(
            num_functions=kwargs['num_blocks'] - 1,
            name=f'layer{index + 1}',
            stored_blocks=max(stored - 1, 0),
        )
        return MomentumResLayer(
            stage=MomentumStage.from_config(config),
            keep_transition=stored > 0,
            residual_fn=self.residual_fn,
            expansion=self.expansion,
            drop_path_rates=rates,
            **kwargs,
        )

    def _stem_modules(self):
        if self.deep_stem:
            return [self.stem]
        return [self.conv1, self.norm1]

    def _forward_stem(self, x: Tensor) -> Tensor:
        if self.deep_stem:
            x = self.stem(x)
        else:
            x = self.relu(self.norm1(self.conv1(x)))
        return self.maxpool(x)

    def forward(self, x: Tensor) -> tuple:
        """Forward function; returns the outputs of ``out_indices``."""
        if x.dim() != 4 or x.shape[1] != self.in_channels:
            raise ValueError(
                f'{type(self).__name__} expects input of shape (N, '
                f'in_channels={self.in_channels}, H, W), got '
                f'{tuple(x.shape)}'
            )
        stem_modules = self._stem_modules()
        if (
            self.stage_mode != 'plain'
            and not self.store_stem
            and self.training
            and _needs_grad(stem_modules, x)
        ):
            x = checkpointed_call(
                self._forward_stem, x, norm_modules=stem_modules
            )
        else:
            x = self._forward_stem(x)
        outs = []
        for i, layer_name in enumerate(self.res_layers):
            x = getattr(self, layer_name)(x)
            if i in self.out_indices:
                outs.append(x)
        return tuple(outs)

    def train(self, mode: bool = True) -> 'MRevNet':
        """Set train/eval mode, keeping frozen stages and ``norm_eval``.

        Unlike mmseg's ``ResNet.train``, returns ``self`` as ``nn.Module``
        does, so ``model.eval()(x)`` works.
        """
        super().train(mode)
        return self

    def reconstruction_drift(self) -> Dict[str, Optional[float]]:
        """Drift of each stage's reconstructed input in the last backward.

        Only measured with ``track_drift=True``: relative max error
        ``max|x0_rec - x0| / max|x0|`` per stage name (None before the
        first memory-saving backward).
        """
        return {
            name: stage.report.position_drift
            for name, stage in self.stages.items()
        }


@MODELS.register_module()
class MRevNetV1c(MRevNet):
    """MRevNet with the deep stem of ResNetV1c (three 3x3 convs).

    Keys and layout equal mmseg's ``ResNetV1c`` (Bag of Tricks for Image
    Classification with Convolutional Neural Networks, He et al., 2019).
    """

    def __init__(self, **kwargs):
        _check_fixed(
            type(self).__name__, kwargs, deep_stem=True, avg_down=False
        )
        super().__init__(deep_stem=True, avg_down=False, **kwargs)


@MODELS.register_module()
class MRevNetV1d(MRevNet):
    """MRevNet with the deep stem and avg-pool downsampling of ResNetV1d."""

    def __init__(self, **kwargs):
        _check_fixed(
            type(self).__name__, kwargs, deep_stem=True, avg_down=True
        )
        super().__init__(deep_stem=True, avg_down=True, **kwargs)


def _check_plan(stored_blocks, stage_blocks, memory_saving: bool) -> tuple:
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


def _check_fixed(name: str, kwargs: dict, **fixed) -> None:
    for key, value in fixed.items():
        if key in kwargs and kwargs[key] != value:
            raise ValueError(
                f'{name} fixes {key}={value}; got {key}='
                f'{kwargs[key]!r} (use MRevNet instead)'
            )
        kwargs.pop(key, None)


def _check_arguments(
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
