"""m-RevNet backbones: ResNet layouts whose stages are momentum stages.

m-RevNet: Deep Reversible Neural Networks with Momentum (Li & Gao,
ICCV 2021, arXiv 2108.05862); the update is the one of Momentum Residual
Neural Networks (Sander et al., ICML 2021).
"""

import math
from typing import Dict, Optional, Sequence, Union

import torch
from mmengine.registry import MODELS
from mmseg.models.backbones.resnet import ResNet
from torch import Tensor

from mmrevnet.models.utils.arguments import (
    check_arguments,
    check_fixed,
    check_plan,
)
from mmrevnet.models.utils.memory_budget import parse_memory_budget
from mmrevnet.models.utils.res_layer import MomentumResLayer, needs_grad
from mmrevnet.models.utils.weight_loading import (
    map_resnet_keys_on_load,
    pretrained_fit_check,
    record_residual_fn,
    resolve_residual_fn,
    split_pretrained_strict,
)
from mmrevnet.reversible import (
    DEFAULT_MAX_AMPLIFICATION,
    MomentumStage,
    StageConfig,
    checkpointed_call,
    stage_mode,
)


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
            ``dict(type='Pretrained', checkpoint=...)`` is strict: weights
            with missing keys, tensors of another shape, or extra blocks
            raise :class:`CheckpointMismatchError` with the keys;
            ``strict=False`` in it keeps mmengine's non-strict load (keys
            only logged). Defaults to None.
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
            it (see ``mmrevnet.reversible.coupling``). None uses 12.
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
        memory_budget (int | float | str, optional): Let the plan
            (``stored_blocks``, ``store_stem``) be chosen at the start of
            training: the fastest plan whose predicted whole training step
            peak fits this budget (a size such as ``'10GiB'``, a fraction
            of the device's memory such as ``0.8``, or ``'auto'``; see
            :mod:`~mmrevnet.models.utils.memory_budget`).
            :class:`~mmrevnet.engine.MRevNetMemoryBudgetHook` measures and
            applies it (``MRevNetRunner`` registers it); the log gives the
            plan, to be written into the config instead. Exclusive with
            ``stored_blocks`` and ``store_stem``. Defaults to None.
    """

    #: Its load pre-hook renames mmpretrain's and torchvision's ResNet keys
    #: (read by ``compare_state_dict`` to check a checkpoint as loaded).
    maps_resnet_keys_on_load = True

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
        memory_budget: Union[None, int, float, str] = None,
    ):
        check_arguments(
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
        self.stored_blocks = check_plan(
            stored_blocks, stage_blocks[:num_stages], memory_saving
        )
        if not isinstance(store_stem, bool):
            raise TypeError(f'store_stem must be a bool, got {store_stem!r}')
        self.store_stem = store_stem
        self.memory_budget = parse_memory_budget(memory_budget)
        if self.memory_budget is not None and (
            stored_blocks is not None or store_stem or not memory_saving
        ):
            raise ValueError(
                'memory_budget chooses stored_blocks and store_stem for '
                'memory_saving=True: give either memory_budget or a plan '
                f'(got memory_budget={memory_budget!r}, stored_blocks='
                f'{stored_blocks!r}, store_stem={store_stem!r}, '
                f'memory_saving={memory_saving!r})'
            )
        # True until a plan for the budget is applied (set_plan).
        self.plan_pending = self.memory_budget is not None
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
        init_cfg, self.pretrained_strict = split_pretrained_strict(init_cfg)
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
        self.register_load_state_dict_pre_hook(map_resnet_keys_on_load)
        self.register_state_dict_post_hook(record_residual_fn)

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

    def set_plan(self, stored_blocks: Sequence[int], store_stem: bool):
        """Apply a memory plan to the built backbone.

        The same as building it with these ``stored_blocks`` and
        ``store_stem`` (the plan changes what is kept for the backward,
        never what is computed).
        """
        stored_blocks = check_plan(
            stored_blocks, self.stage_blocks, self.memory_saving
        )
        if not isinstance(store_stem, bool):
            raise TypeError(f'store_stem must be a bool, got {store_stem!r}')
        for name, stored in zip(self.res_layers, stored_blocks):
            layer = getattr(self, name)
            layer.stage.configure(stored_blocks=max(stored - 1, 0))
            layer.keep_transition = stored > 0
        self.stored_blocks = stored_blocks
        self.store_stem = store_stem
        self.plan_pending = False

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
        if self.plan_pending and self.training and torch.is_grad_enabled():
            raise RuntimeError(
                f'memory_budget={self.memory_budget.text} is turned into a '
                'plan at the start of training by MRevNetMemoryBudgetHook, '
                "which MRevNetRunner registers (runner_type='MRevNetRunner'"
                '); with another runner add custom_hooks=[dict(type='
                "'MRevNetMemoryBudgetHook')], or set stored_blocks and "
                'store_stem instead of memory_budget'
            )
        stem_modules = self._stem_modules()
        if (
            self.stage_mode != 'plain'
            and not self.store_stem
            and self.training
            and needs_grad(stem_modules, x)
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

    def init_weights(self) -> None:
        """mmengine's initialisation; ``Pretrained`` weights must fit."""
        with pretrained_fit_check(self, strict=self.pretrained_strict):
            super().init_weights()

    def train(self, mode: bool = True) -> 'MRevNet':
        """Set train/eval mode, keeping frozen stages and ``norm_eval``.

        Unlike mmseg's ``ResNet.train``, returns ``self`` as ``nn.Module``
        does, so ``model.eval()(x)`` works.
        """
        super().train(mode)
        return self

    def get_layer_depth(self, param_name: str, prefix: str = '') -> tuple:
        """Layer id of a parameter, for layer-wise learning-rate decay.

        The contract of mmpretrain's ``ResNet.get_layer_depth`` (used by
        its ``LearningRateDecayOptimWrapperConstructor``), with the same
        ids for the same depths: the stem is layer 0, stage 1 is layer 1,
        stages 2 and 3 count one layer per group of ``blk2`` / ``blk3``
        blocks, stage 4 is the last backbone layer, and a parameter outside
        the backbone (the head) gets the id after it. Layouts mmpretrain
        does not cover (depths 18 and 34 among them when their stage 3 has
        fewer than 6 blocks) count one layer per block in stages 2 and 3.

        Args:
            param_name (str): Name of the parameter in the whole model.
            prefix (str): The backbone's prefix in the model.
                Defaults to ``''``.

        Returns:
            tuple[int, int]: The layer id and the number of layers.
        """
        depths = tuple(self.arch_settings[self.depth][1])
        groups = {
            (4, 6): (2, 3),
            (4, 23): (2, 3),
            (8, 36): (4, 4),
            (24, 36): (4, 4),
            (30, 48): (5, 6),
        }
        blk2, blk3 = groups.get((depths[1], depths[2]), (1, 1))
        n2 = math.ceil(depths[1] / blk2 - 1e-5)
        n3 = math.ceil(depths[2] / blk3 - 1e-5)
        last = 2 + n2 + n3
        num_layers = last + 2
        if not param_name.startswith(prefix):
            return last + 1, num_layers
        name = param_name[len(prefix) :]
        if not name.startswith('layer'):
            return 0, num_layers
        stage, block = name.split('.')[:2]
        stage_id, block_id = int(stage[len('layer') :]), int(block)
        if stage_id == 1:
            return 1, num_layers
        if stage_id == 2:
            return 2 + block_id // blk2, num_layers
        if stage_id == 3:
            return 2 + n2 + block_id // blk3, num_layers
        return last, num_layers

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
        check_fixed(
            type(self).__name__, kwargs, deep_stem=True, avg_down=False
        )
        super().__init__(deep_stem=True, avg_down=False, **kwargs)


@MODELS.register_module()
class MRevNetV1d(MRevNet):
    """MRevNet with the deep stem and avg-pool downsampling of ResNetV1d."""

    def __init__(self, **kwargs):
        check_fixed(type(self).__name__, kwargs, deep_stem=True, avg_down=True)
        super().__init__(deep_stem=True, avg_down=True, **kwargs)
