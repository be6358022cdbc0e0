"""The momentum res-layer: a ResNet transition block, then a momentum stage.

The block classes here are mmseg's ResNet blocks with mmpretrain's
``expansion`` and ``drop_path_rate``: block 0 of a stage is the ordinary
block (stride, width change, downsample), blocks ``1..n-1`` are residual
functions ``F`` of a :class:`~mmrevnet.reversible.MomentumStage`, with the
parameter names of the ResNet blocks they replace.
"""

import functools
from typing import Optional, Sequence

import torch
import torch.nn.functional as F
from mmcv.cnn import build_conv_layer, build_norm_layer
from mmcv.cnn.bricks import DropPath
from mmengine.model import Sequential
from mmseg.models.backbones.resnet import BasicBlock, Bottleneck
from torch import Tensor, nn

from mmrevnet.reversible import (
    MomentumStage,
    checkpointed_call,
    eager_under_compile,
)
from mmrevnet.reversible.state import AutocastState

RESIDUAL_FNS = ('branch', 'block')


def _basic_branch(block: BasicBlock, x: Tensor) -> Tensor:
    out = block.relu(block.norm1(block.conv1(x)))
    return block.norm2(block.conv2(out))


def _bottleneck_branch(block: Bottleneck, x: Tensor) -> Tensor:
    out = block.relu(block.norm1(block.conv1(x)))
    out = block.relu(block.norm2(block.conv2(out)))
    return block.norm3(block.conv3(out))


#: Output channels of conv3/norm3 (and the downsample branch) computed at
#: once where a bottleneck is at least four chunks wide (see
#: :class:`_ChunkedConvNorm`).
CHANNEL_CHUNK = 512
#: Input channels of a dilated convolution's backward computed at once on
#: the CPU (see :class:`_InputChunkedConv`).
INPUT_CHUNK = 128


def _chunk_ranges(width: int, chunk: int):
    return [(a, min(a + chunk, width)) for a in range(0, width, chunk)]


def _count_batch(norm: nn.BatchNorm2d) -> float:
    """What ``nn.BatchNorm2d.forward`` does before normalising: count the
    batch; returns the running statistics' momentum."""
    momentum = 0.0 if norm.momentum is None else norm.momentum
    if norm.track_running_stats and norm.num_batches_tracked is not None:
        norm.num_batches_tracked.add_(1)
        if norm.momentum is None:
            momentum = 1.0 / float(norm.num_batches_tracked)
    return momentum


def _tail_chunk(layers, inputs, chunk_params, relu, running=None):
    """One chunk of output channels of ``relu?(sum_i norm_i(conv_i(h_i)))``
    from that chunk's ``(weight, gamma, beta)`` of every layer. With
    ``running = (start, stop, momenta)`` the running statistics of those
    channels are updated (the forward); without, batch statistics only
    (the backward's recomputation)."""
    total = None
    for i, (conv, norm) in enumerate(layers):
        weight, gamma, beta = chunk_params[3 * i : 3 * i + 3]
        track = running is not None and norm.track_running_stats
        if track:
            start, stop, momenta = running
        y = conv._conv_forward(inputs[i], weight, None)
        y = F.batch_norm(
            y,
            norm.running_mean[start:stop] if track else None,
            norm.running_var[start:stop] if track else None,
            gamma,
            beta,
            True,
            momenta[i] if track else 0.0,
            norm.eps,
        )
        total = y if total is None else total + y
    return F.relu(total) if relu else total


class _ChunkedConvNorm(torch.autograd.Function):
    """``relu?(norm_1(conv_1(h_1)) + ...)`` of a bottleneck's last layers,
    by output chunks.

    A momentum bottleneck's ``norm3(conv3(h))``, and a transition
    bottleneck's ``relu(norm3(conv3(h)) + norm_d(conv_d(x)))`` (its
    downsample branch), are written chunk by chunk; only the inputs (``h``
    is a quarter of the output's width) are saved, and the backward
    recomputes each chunk's convolutions and normalisations for its VJP,
    so one chunk's temporaries exist at a time instead of the full
    width's. BatchNorm's statistics and affine parameters are per channel,
    so every chunk is normalised as in the whole; the running statistics
    are updated once, here, as ``nn.BatchNorm2d.forward`` does, and not by
    the backward. Autocast is re-entered for the recomputation.

    ``apply(layers, relu, h_1, ..., h_k, weight_1, gamma_1, beta_1, ...)``
    with ``layers = ((conv_1, norm_1), ..., (conv_k, norm_k))``.
    """

    #: The backward never reads the output, so the memory-saving stage may
    #: overwrite it (with the reconstructed velocity) before the VJP.
    output_unused_in_backward = True

    @staticmethod
    def forward(ctx, layers, relu, *tensors):
        inputs, params = tensors[: len(layers)], tensors[len(layers) :]
        momenta = [_count_batch(norm) for _, norm in layers]
        width = layers[0][0].out_channels
        ranges = _chunk_ranges(width, CHANNEL_CHUNK)
        out = None
        with torch.no_grad():
            for start, stop in ranges:
                chunk = [t[start:stop] for t in params]
                y = _tail_chunk(
                    layers, inputs, chunk, relu, (start, stop, momenta)
                )
                if out is None:
                    out = y.new_empty((y.shape[0], width, *y.shape[2:]))
                out[:, start:stop] = y
                del y
        ctx.layers, ctx.relu, ctx.ranges = layers, relu, ranges
        ctx.autocast = AutocastState(inputs[0].device.type)
        ctx.save_for_backward(*tensors)
        return out

    @staticmethod
    @eager_under_compile  # run by autograd, also inside a compiled step
    def backward(ctx, grad_out):
        tensors = ctx.saved_tensors
        num_inputs = len(ctx.layers)
        inputs, params = tensors[:num_inputs], tensors[num_inputs:]
        need = ctx.needs_input_grad[2 : 2 + num_inputs]
        input_grads = [
            torch.zeros_like(h) if n else None for h, n in zip(inputs, need)
        ]
        param_grads = [torch.empty_like(t) for t in params]
        for start, stop in ctx.ranges:
            with torch.enable_grad(), ctx.autocast.enter():
                leaves = [
                    h.detach().requires_grad_(n) for h, n in zip(inputs, need)
                ]
                slices = [
                    t.detach()[start:stop].requires_grad_(True) for t in params
                ]
                y = _tail_chunk(ctx.layers, leaves, slices, ctx.relu)
            wrt = [h for h, n in zip(leaves, need) if n] + slices
            parts = list(
                torch.autograd.grad(
                    y, wrt, grad_out[:, start:stop].to(y.dtype)
                )
            )
            del y, leaves
            for grad in input_grads:
                if grad is not None:
                    grad.add_(parts.pop(0))
            for grad, part in zip(param_grads, parts):
                grad[start:stop].copy_(part)
            del parts
        return (None, None, *input_grads, *param_grads)


class _InputChunkedConv(torch.autograd.Function):
    """A convolution whose backward runs by chunks of input channels.

    On the CPU, torch's dilated convolution backward unfolds its input
    (``9 * C_in`` rows per output position of a 3x3 kernel, for the input
    gradient and again for the weight gradient): 72 MiB for one
    512-channel 32x64 sample, more than twice the output of the widest
    block. The forward is the module's own convolution; the backward
    computes the gradients of :data:`INPUT_CHUNK` input channels at a time
    (each input channel's gradient and each weight slice depend on those
    channels only), so only one chunk's unfolded rows exist at once.

    ``apply(conv, h, weight)``.
    """

    @staticmethod
    def forward(ctx, conv, h, weight):
        out = conv._conv_forward(h, weight, None)
        # Under autocast the convolution ran in its lower precision; the
        # backward, outside autocast, computes in the same dtype.
        ctx.conv, ctx.compute_dtype = conv, out.dtype
        ctx.save_for_backward(h, weight)
        return out

    @staticmethod
    @eager_under_compile  # run by autograd, also inside a compiled step
    def backward(ctx, grad_out):
        h, weight = ctx.saved_tensors
        conv, dtype = ctx.conv, ctx.compute_dtype
        need_h, need_w = ctx.needs_input_grad[1:3]
        grad_h = torch.empty_like(h) if need_h else None
        grad_w = torch.empty_like(weight) if need_w else None
        grad_out = grad_out.to(dtype)
        for start, stop in _chunk_ranges(h.shape[1], INPUT_CHUNK):
            part_h, part_w, _ = torch.ops.aten.convolution_backward(
                grad_out,
                h[:, start:stop].to(dtype),
                weight[:, start:stop].to(dtype),
                None,
                conv.stride,
                conv.padding,
                conv.dilation,
                False,
                [0, 0],
                1,
                [need_h, need_w, False],
            )
            if need_h:
                grad_h[:, start:stop] = part_h
            if need_w:
                grad_w[:, start:stop] = part_w
            del part_h, part_w
        return None, grad_h, grad_w


def _plain_conv(conv) -> bool:
    return (
        type(conv) is nn.Conv2d
        and conv.groups == 1
        and conv.bias is None
        and conv.padding_mode == 'zeros'
        and not isinstance(conv.padding, str)
    )


def _plain_norm(norm) -> bool:
    return type(norm) is nn.BatchNorm2d and norm.training and norm.affine


def _conv(conv: nn.Module, h: Tensor, chunked: bool) -> Tensor:
    """``conv(h)``; chunked, a dilated convolution on the CPU runs its
    backward by input chunks (:class:`_InputChunkedConv`)."""
    if (
        chunked
        and h.device.type == 'cpu'
        and _plain_conv(conv)
        and max(conv.dilation) > 1
        and h.shape[1] > INPUT_CHUNK
    ):
        return _InputChunkedConv.apply(conv, h, conv.weight)
    return conv(h)


def _chunkable(block: Bottleneck) -> bool:
    return (
        _plain_conv(block.conv3)
        and _plain_norm(block.norm3)
        and block.conv3.out_channels >= 4 * CHANNEL_CHUNK
    )


def _downsample_layers(block: Bottleneck):
    """``(conv, norm)`` of a downsample branch that is exactly a plain
    convolution and BatchNorm, else None."""
    layers = list(block.downsample or ())
    if len(layers) == 2 and _plain_conv(layers[0]) and _plain_norm(layers[1]):
        return tuple(layers)
    return None


def _chunked_bottleneck_head(block: Bottleneck, x: Tensor) -> Tensor:
    out = block.relu(block.norm1(block.conv1(x)))
    return block.relu(block.norm2(_conv(block.conv2, out, chunked=True)))


def _momentum_bottleneck_branch(block: Bottleneck, x: Tensor) -> Tensor:
    """The bottleneck branch; for a block its stage recomputes (reversed
    or checkpointed, see :meth:`MomentumResLayer.forward`) and with grad,
    conv2 by input chunks where it is dilated on the CPU, and where the
    block is at least four chunks wide, conv3 and norm3 by output chunks
    (:class:`_ChunkedConvNorm`). Kept blocks and a plain stage keep plain
    autograd, so they save what a ResNet block saves."""
    if not (block.recomputed and torch.is_grad_enabled()):
        return _bottleneck_branch(block, x)
    out = _chunked_bottleneck_head(block, x)
    if not _chunkable(block):
        return block.norm3(block.conv3(out))
    conv, norm = block.conv3, block.norm3
    return _ChunkedConvNorm.apply(
        ((conv, norm),), False, out, conv.weight, norm.weight, norm.bias
    )


def _chunked_transition_forward(block, x: Tensor) -> Tensor:
    """The transition bottleneck as its stage checkpoints it: with grad,
    conv2 by input chunks where it is dilated on the CPU, and where the
    block is at least four chunks wide and its downsample branch is a
    convolution and a BatchNorm, ``relu(norm3(conv3(h)) +
    norm_d(conv_d(x)))`` by output chunks (:class:`_ChunkedConvNorm`), so
    that its recomputation does not hold five maps of the output's width.
    The stage passes this function itself to the checkpoint, so that the
    recomputation runs it whatever runs in between."""
    if not torch.is_grad_enabled():
        return block(x)
    h = _chunked_bottleneck_head(block, x)
    downsample = _downsample_layers(block)
    if not (
        _chunkable(block)
        and downsample is not None
        and isinstance(block.drop_path, nn.Identity)
    ):
        identity = x if block.downsample is None else block.downsample(x)
        out = block.drop_path(block.norm3(block.conv3(h)))
        return block.relu(out + identity)
    conv, norm = block.conv3, block.norm3
    down_conv, down_norm = downsample
    return _ChunkedConvNorm.apply(
        ((conv, norm), (down_conv, down_norm)),
        True,
        h,
        x,
        conv.weight,
        norm.weight,
        norm.bias,
        down_conv.weight,
        down_norm.weight,
        down_norm.bias,
    )


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


class _BlockResidual(torch.autograd.Function):
    """``relu(branch + x) - x``, saving the ReLU's sign mask only.

    Written as three autograd operations, ``F = relu(branch + x) - x``
    saves the ReLU's full-width output, which nothing else holds: in a
    ResNet the block output ``relu(branch + x)`` is also the next block's
    input, so its convolution shares the tensor, but here the next block
    reads ``x + v`` instead. The backward needs only where ``branch + x``
    is positive; a bool mask is a quarter of an fp32 map. The forward
    computes what the three operations compute (same rounding), and the
    backward what autograd's derivatives of them compute: ``g`` where the
    mask is set for ``branch``, that minus ``g`` for ``x``.

    ``apply(branch, x, in_place)``; with ``in_place`` the result is
    written into ``branch``'s memory, as mmseg's ResNet blocks add the
    identity into the last norm's output, so that the step allocates one
    map less per block (on the CPU every fresh map is paid again in page
    faults).
    """

    #: The backward reads the mask, never the output, so the memory-saving
    #: stage may overwrite the output (with the reconstructed velocity).
    output_unused_in_backward = True

    @staticmethod
    def forward(ctx, branch: Tensor, x: Tensor, in_place: bool) -> Tensor:
        ctx.branch_dtype = branch.dtype
        ctx.x_dtype = x.dtype
        if in_place:
            ctx.mark_dirty(branch)
            out = branch.add_(x)
        else:
            out = branch + x
        out.relu_()
        # Where ReLU's derivative passes the gradient: its result is not
        # <= 0, so also where ``branch + x`` is NaN.
        ctx.save_for_backward(out != 0)
        return out.sub_(x)

    @staticmethod
    def backward(ctx, grad: Tensor):
        (mask,) = ctx.saved_tensors
        # ReLU's own derivative kernel, fed the mask in the gradient's
        # dtype and writing over it: on the CPU, kernels that mix a bool
        # operand with floats (where, mul, masked_fill) run several times
        # slower than this conversion and the same-dtype kernel together.
        grad_branch = mask.to(grad.dtype)
        if torch.is_grad_enabled():  # double backward: no out= variant
            grad_branch = torch.ops.aten.threshold_backward(
                grad, grad_branch, 0
            )
        else:
            torch.ops.aten.threshold_backward.grad_input(
                grad, grad_branch, 0, grad_input=grad_branch
            )
        grad_x = grad_branch - grad if ctx.needs_input_grad[1] else None
        return (
            grad_branch.to(ctx.branch_dtype),
            None if grad_x is None else grad_x.to(ctx.x_dtype),
            None,
        )


def block_residual(branch: Tensor, x: Tensor, in_place: bool = False):
    """``relu(branch + x) - x``, saving a bool mask for the backward.

    With grad, :class:`_BlockResidual` saves where the ReLU passes the
    gradient instead of the ReLU's output.

    Args:
        branch (Tensor): The block's residual branch.
        x (Tensor): The block's input.
        in_place (bool): Write the result into ``branch``'s memory where
            that changes no value: ``branch`` has the result's dtype and
            ``x``'s shape, shares no memory with ``x``, is not a view and
            is not a leaf that requires grad. Only for a ``branch`` nothing
            else reads afterwards. Defaults to False.

    Returns:
        Tensor: ``relu(branch + x) - x``.
    """
    if torch.compiler.is_compiling():
        # Inductor fuses the three operations and chooses what its backward
        # saves; dynamo would break the graph at the Function's mark_dirty.
        return torch.relu(branch + x) - x
    in_place = (
        in_place
        and branch.dtype == torch.result_type(branch, x)
        and branch.shape == x.shape
        and branch._base is None
        and not (branch.is_leaf and branch.requires_grad)
        and branch.untyped_storage().data_ptr()
        != x.untyped_storage().data_ptr()
    )
    if torch.is_grad_enabled() and (branch.requires_grad or x.requires_grad):
        return _BlockResidual.apply(branch, x, in_place)
    out = branch.add_(x) if in_place else branch + x
    return out.relu_().sub_(x)


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
        # Set by the stage that recomputes this block (not a module
        # setting: a block alone is plain autograd).
        self.recomputed = False

    def forward(self, x: Tensor) -> Tensor:
        branch = self.drop_path(self._branch(x))
        if self.residual_fn == 'branch':
            return branch
        return block_residual(branch, x, in_place=True)


class MomentumBasicBlock(_MomentumResidual, BasicBlock):
    """``F`` built from a :class:`BasicBlock` (same parameter names)."""

    _branch = _basic_branch


class MomentumBottleneck(_MomentumResidual, Bottleneck):
    """``F`` built from a :class:`Bottleneck` (same parameter names)."""

    _branch = _momentum_bottleneck_branch


# mmseg block -> (transition block, momentum block).
_STAGE_BLOCKS = {
    BasicBlock: (TransitionBasicBlock, MomentumBasicBlock),
    Bottleneck: (TransitionBottleneck, MomentumBottleneck),
}


def needs_grad(modules: Sequence[nn.Module], x: Tensor) -> bool:
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
        recomputes = self.stage.config.mode != 'plain'
        # Recomputed blocks compute their widest layers by chunks. Kept
        # blocks, and every block of a plain stage, keep plain autograd:
        # they save what a ResNet block saves and recompute nothing (a
        # chunked conv3/norm3 would recompute in the backward, a cost the
        # memory plan does not see). Read at every call: the stage may be
        # reconfigured.
        config = self.stage.config
        kept = config.stored_blocks if config.memory_saving else 0
        for index, function in enumerate(self.functions):
            function.recomputed = recomputes and index >= kept
        checkpointed = (
            recomputes
            and not self.keep_transition
            and self.training
            and needs_grad([transition], x)
        )
        if checkpointed:
            function = transition
            if isinstance(transition, TransitionBottleneck):
                function = functools.partial(
                    _chunked_transition_forward, transition
                )
            x = checkpointed_call(function, x, norm_modules=[transition])
        else:
            x = transition(x)
        return self.stage(self.functions, x, training=self.training)
