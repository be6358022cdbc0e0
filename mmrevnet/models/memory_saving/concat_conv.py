"""A convolution of a channel concatenation, without the concatenation.

``conv(cat([x_0, ..., x_n], 1))`` equals ``sum_i conv_i(x_i)``, where
``conv_i`` uses the slice of the weight's input channels that ``x_i``
occupies in the concatenation. PSPNet's and UPerNet's pyramid pooling
bottleneck, DeepLabV3's ASPP bottleneck and UPerNet's ``fpn_bottleneck``
are such convolutions; their concatenations (and the gradients of them,
and the convolution's full-width temporaries in the backward) are the
largest tensors of those heads. :func:`concat_conv` computes the sum slice
by slice (at most :data:`SLICE_CHANNELS` input channels at a time), so at
most one slice's input, weight and their gradients exist at a time; an
input that the head would upsample bilinearly before concatenating (the
pooled pyramid levels, ASPP's image pool, UPerNet's coarser FPN levels) is
passed at its own resolution and upsampled inside, one at a time, in the
forward and again in the backward.

:func:`enable_concat_free` gives an mmseg ``PSPHead``, ``ASPPHead`` or
``UPerHead`` instance a ``_forward_feature`` (and for ``UPerHead`` a
``psp_forward``) that does this: the same computation as mmseg's
(:mod:`mmseg.models.decode_heads`), the same parameters and state-dict
keys; the class and every other method stay mmseg's.
"""

import types
from functools import partial
from typing import List, Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mmrevnet.reversible import eager_under_compile

__all__ = [
    'concat_conv',
    'disable_concat_free',
    'enable_concat_free',
    'supports_concat_free',
]

#: A part of the concatenation: a tensor, ``(tensor, size,
#: align_corners)`` for a tensor to be upsampled bilinearly to ``size``, or
#: ``(tensor, scale)`` for ``tensor * scale`` with a per-sample, per-channel
#: ``scale`` of shape ``(N, C, 1, 1)`` (a channel dropout's mask).
Part = Union[Tensor, Tuple[Tensor, Sequence[int], bool], Tuple[Tensor, Tensor]]


def _upsample(x: Tensor, size, align_corners) -> Tensor:
    # What mmseg's ``resize`` does for these calls.
    return F.interpolate(
        x, size=tuple(size), mode='bilinear', align_corners=align_corners
    )


def _transform(x: Tensor, transform, sample: Optional[int] = None):
    """The part as the convolution sees it (of one sample if given)."""
    if transform is None:
        return x
    if transform[0] == 'resize':
        return _upsample(x, *transform[1:])
    scale = transform[1]
    if sample is not None:
        scale = scale[sample : sample + 1]
    return x * scale


#: Widest slice of input channels convolved at once: bounds the weight
#: slice, its gradient and the input slice that exist together.
SLICE_CHANNELS = 512
#: The same in the backward of a dilated convolution on the CPU, which
#: unfolds its input slice (9 rows per channel of a 3x3 kernel, for the
#: input gradient and again for the weight's): 72 MiB for a 512-channel
#: slice of one 32x64 sample, 18 MiB for 128 channels.
DILATED_CPU_SLICE_CHANNELS = 128


def _slices(width: int, start: int, channels: int = SLICE_CHANNELS):
    """``(first, stop, column)`` channel ranges of one part, at most
    ``channels`` wide, at ``column`` (offset by ``start``) in the
    weight."""
    return [
        (c, min(c + channels, width), start + c)
        for c in range(0, width, channels)
    ]


class _ConcatConvFunction(torch.autograd.Function):
    """``conv2d(cat(parts), weight, bias)`` slice by slice.

    ``apply(settings, transforms, weight, bias, *parts)`` with ``settings
    = (stride, padding, dilation)`` and ``transforms[i]`` None,
    ``('resize', size, align_corners)`` or ``('scale', scale)``.
    """

    @staticmethod
    def forward(ctx, settings, transforms, weight, bias, *parts):
        stride, padding, dilation = settings
        out = None
        offset = 0
        with torch.no_grad():
            for part, transform in zip(parts, transforms):
                x = _transform(part, transform)
                for first, stop, column in _slices(x.shape[1], offset):
                    y = F.conv2d(
                        x[:, first:stop],
                        weight[:, column : column + stop - first],
                        None,
                        stride,
                        padding,
                        dilation,
                    )
                    out = y if out is None else out.add_(y)
                    del y
                offset += x.shape[1]
                del x
            if offset != weight.shape[1]:
                raise ValueError(
                    f'concat_conv: the parts have {offset} channels, the '
                    f'convolution takes {weight.shape[1]}'
                )
            if bias is not None:
                out.add_(bias.to(out.dtype).view(1, -1, 1, 1))
        ctx.settings, ctx.transforms = settings, transforms
        ctx.compute_dtype = out.dtype
        ctx.has_bias = bias is not None
        ctx.save_for_backward(weight, *parts)
        return out

    @staticmethod
    @eager_under_compile  # run by autograd, also inside a compiled step
    def backward(ctx, grad_out):
        stride, padding, dilation = ctx.settings
        weight, *parts = ctx.saved_tensors
        needs = ctx.needs_input_grad
        need_weight, need_bias = needs[2], needs[3]
        dtype = ctx.compute_dtype
        grad_out = grad_out.to(dtype)
        grad_weight = torch.zeros_like(weight) if need_weight else None
        grad_parts: List[Optional[Tensor]] = [None] * len(parts)
        offsets, offset = [], 0
        for part in parts:
            offsets.append(offset)
            offset += part.shape[1]
        # Parts the convolution sees transformed first: while their
        # per-sample temporaries exist, the full-resolution gradient of an
        # untransformed part does not exist yet.
        order = sorted(
            range(len(parts)), key=lambda i: ctx.transforms[i] is None
        )
        channels = SLICE_CHANNELS
        if grad_out.device.type == 'cpu' and max(dilation) > 1:
            channels = DILATED_CPU_SLICE_CHANNELS
        for index in order:
            part, transform = parts[index], ctx.transforms[index]
            need_part = needs[4 + index]
            if not (need_part or need_weight):
                continue
            slices = _slices(part.shape[1], offsets[index], channels)
            grad_part = torch.empty_like(part) if need_part else None
            # One sample at a time: the input (upsampled), its gradient
            # and the convolution backward's buffers exist for one sample
            # only; the weight's gradient is the sum over the samples.
            for sample in range(part.shape[0]):
                with torch.enable_grad():
                    leaf = (
                        part[sample : sample + 1]
                        .detach()
                        .requires_grad_(need_part)
                    )
                    x = _transform(leaf, transform, sample)
                grad_x = None
                if need_part and len(slices) > 1:
                    grad_x = torch.empty_like(x, dtype=dtype)
                for first, stop, column in slices:
                    grad_slice, grad_w, _ = (
                        torch.ops.aten.convolution_backward(
                            grad_out[sample : sample + 1],
                            x.detach()[:, first:stop].to(dtype),
                            weight[:, column : column + stop - first]
                            .to(dtype)
                            .contiguous(),
                            None,
                            list(stride),
                            list(padding),
                            list(dilation),
                            False,
                            [0, 0],
                            1,
                            [need_part, need_weight, False],
                        )
                    )
                    if need_weight:
                        grad_weight[:, column : column + stop - first].add_(
                            grad_w
                        )
                    if need_part and grad_x is None:
                        grad_x = grad_slice  # the part is one slice
                    elif need_part:
                        grad_x[:, first:stop].copy_(grad_slice)
                    del grad_slice, grad_w
                if need_part:
                    grad_x = grad_x.to(x.dtype)
                    if x is not leaf:
                        (grad_x,) = torch.autograd.grad(x, leaf, grad_x)
                    grad_part[sample : sample + 1].copy_(grad_x)
                del x, leaf, grad_x
            grad_parts[index] = grad_part
            del grad_part
        grad_bias = None
        if ctx.has_bias and need_bias:
            grad_bias = grad_out.sum((0, 2, 3)).to(weight.dtype)
        return (None, None, grad_weight, grad_bias, *grad_parts)


def _check_conv(conv: nn.Module) -> Optional[str]:
    """Why ``conv`` cannot be computed slice by slice (None if it can)."""
    if type(conv) is not nn.Conv2d:
        return f'a {type(conv).__name__}, not an nn.Conv2d'
    if conv.groups != 1:
        return f'groups={conv.groups}'
    if conv.padding_mode != 'zeros':
        return f'padding_mode={conv.padding_mode!r}'
    if isinstance(conv.padding, str):
        return f'padding={conv.padding!r}'
    return None


def concat_conv(conv: nn.Conv2d, parts: Sequence[Part]) -> Tensor:
    """``conv(torch.cat(parts, 1))`` without the concatenation.

    Args:
        conv (nn.Conv2d): The convolution (zero padding, one group).
        parts (Sequence): Tensors in the order of the concatenation; a
            ``(tensor, size, align_corners)`` tuple stands for
            ``F.interpolate(tensor, size, mode='bilinear',
            align_corners=align_corners)`` and a ``(tensor, scale)`` tuple
            for ``tensor * scale``, computed one part (in the backward one
            sample) at a time.

    Returns:
        Tensor: The convolution's output.
    """
    reason = _check_conv(conv)
    if reason is not None:
        raise ValueError(f'concat_conv: the convolution is {reason}')
    tensors, transforms = [], []
    for part in parts:
        if isinstance(part, Tensor):
            tensors.append(part)
            transforms.append(None)
        elif len(part) == 2:
            tensor, scale = part
            tensors.append(tensor)
            transforms.append(('scale', scale.detach()))
        else:
            tensor, size, align_corners = part
            tensors.append(tensor)
            transforms.append(('resize', tuple(size), align_corners))
    settings = (tuple(conv.stride), tuple(conv.padding), tuple(conv.dilation))
    return _ConcatConvFunction.apply(
        settings, tuple(transforms), conv.weight, conv.bias, *tensors
    )


# -- mmseg heads ----------------------------------------------------------
def _conv_module(module, parts: Sequence[Part]) -> Tensor:
    """mmcv ``ConvModule`` (order conv, norm, act) on a concatenation."""
    out = concat_conv(module.conv, parts)
    if module.with_norm:
        out = module.norm(out)
    if module.with_activation:
        out = module.activate(out)
    return out


def _pyramid_parts(head, x: Tensor) -> List[Part]:
    """``[x] + psp_modules(x)`` with the upsampling left to concat_conv."""
    size = x.shape[2:]
    align_corners = head.psp_modules.align_corners
    return [x] + [(ppm(x), size, align_corners) for ppm in head.psp_modules]


def _psp_forward_feature(head, inputs):
    x = head._transform_inputs(inputs)
    return _conv_module(head.bottleneck, _pyramid_parts(head, x))


def _aspp_forward_feature(head, inputs):
    x = head._transform_inputs(inputs)
    parts = [(head.image_pool(x), x.shape[2:], head.align_corners)]
    # The dilated branches too, by input-channel slices: the CPU's dilated
    # convolution backward unfolds its whole input (9 x 2048 channels).
    parts += [_conv_module(module, [x]) for module in head.aspp_modules]
    return _conv_module(head.bottleneck, parts)


def _uper_psp_forward(head, inputs):
    return _conv_module(head.bottleneck, _pyramid_parts(head, inputs[-1]))


def _owns_output(module: nn.Module) -> bool:
    """Whether ``module``'s output may be updated in place: nothing
    autograd runs later reads it (no grad, or ``module`` is a recomputed
    unit, whose Function saves its inputs only)."""
    if not torch.is_grad_enabled():
        return True
    from .heads import is_memory_saving

    return is_memory_saving(module)


def _uper_forward_feature(head, inputs):
    inputs = head._transform_inputs(inputs)
    laterals = [
        lateral_conv(inputs[i])
        for i, lateral_conv in enumerate(head.lateral_convs)
    ]
    laterals.append(head.psp_forward(inputs))
    levels = len(laterals)
    for i in range(levels - 1, 0, -1):
        upsampled = F.interpolate(
            laterals[i],
            size=laterals[i - 1].shape[2:],
            mode='bilinear',
            align_corners=head.align_corners,
        )
        # The top-down sum in the finer lateral's memory where nothing
        # saved that lateral (mmseg's sum allocates one more 1/4-resolution
        # map of the head's width).
        if _owns_output(head.lateral_convs[i - 1]):
            laterals[i - 1] = laterals[i - 1].add_(upsampled)
        else:
            laterals[i - 1] = laterals[i - 1] + upsampled
        del upsampled
    fpn_outs = [head.fpn_convs[i](laterals[i]) for i in range(levels - 1)]
    fpn_outs.append(laterals[-1])
    size = fpn_outs[0].shape[2:]
    parts = [fpn_outs[0]]
    parts += [(out, size, head.align_corners) for out in fpn_outs[1:]]
    return _conv_module(head.fpn_bottleneck, parts)


def _cls_seg(head, feat):
    # mmseg's ``BaseDecodeHead.cls_seg`` without storing the dropped-out
    # map for the classifier's backward: ``Dropout2d`` multiplies by a mask
    # of shape (N, C, 1, 1), drawn here from the same random numbers (the
    # dropout of ones is the mask), and the product is recomputed one
    # sample at a time in the backward.
    mask = head.dropout(feat.new_ones(*feat.shape[:2], 1, 1))
    return concat_conv(head.conv_seg, [(feat, mask)])


def _fusable_cls_seg(head) -> bool:
    dropout = getattr(head, 'dropout', None)
    return (
        type(dropout) is nn.Dropout2d
        and not dropout.inplace
        and _check_conv(getattr(head, 'conv_seg', None)) is None
    )


def _replacements(head) -> Optional[dict]:
    from mmseg.models.decode_heads import ASPPHead, PSPHead, UPerHead

    # Exact types: a subclass may override the methods replaced here.
    kind = type(head)
    if kind is PSPHead:
        methods = dict(_forward_feature=_psp_forward_feature)
        convs = [head.bottleneck]
    elif kind is ASPPHead:
        methods = dict(_forward_feature=_aspp_forward_feature)
        convs = [head.bottleneck, *head.aspp_modules]
    elif kind is UPerHead:
        methods = dict(
            _forward_feature=_uper_forward_feature,
            psp_forward=_uper_psp_forward,
        )
        convs = [head.bottleneck, head.fpn_bottleneck]
    else:
        return None
    if _fusable_cls_seg(head):
        methods['cls_seg'] = _cls_seg
    return methods, convs


def supports_concat_free(head: nn.Module) -> bool:
    """Whether :func:`enable_concat_free` applies to ``head``: an mmseg
    ``PSPHead``, ``ASPPHead`` or ``UPerHead`` (exact class) whose
    bottleneck convolutions are plain ``nn.Conv2d`` in a ``ConvModule``
    ordered conv, norm, act."""
    found = _replacements(head)
    if found is None:
        return False
    for module in found[1]:
        if _check_conv(getattr(module, 'conv', None)) is not None:
            return False
        if tuple(getattr(module, 'order', ())) != ('conv', 'norm', 'act'):
            return False
        if getattr(module, 'with_explicit_padding', True):
            return False
    return True


def enable_concat_free(head: nn.Module) -> bool:
    """Compute ``head``'s concatenation-then-convolution without the
    concatenation (see the module docstring).

    Replaces ``_forward_feature`` (and ``UPerHead.psp_forward``) on the
    instance; heads :func:`supports_concat_free` rejects are left
    unchanged.

    Args:
        head (nn.Module): The decode head.

    Returns:
        bool: Whether the head was changed.
    """
    if not supports_concat_free(head):
        return False
    methods, _ = _replacements(head)
    for name in methods:
        # A bound method (not a closure): deepcopy rebinds it to the copy.
        setattr(head, name, types.MethodType(partial(_dispatch, name), head))
    head._mmrevnet_concat_free = tuple(methods)
    return True


def _dispatch(name: str, head: nn.Module, inputs):
    """The concat-free method ``name`` in training mode (also under
    ``no_grad``, as in the forward of a recomputed head); mmseg's own in
    eval mode (FLOP counters, inference and exports see the unchanged
    head)."""
    if head.training:
        return _replacements(head)[0][name](head, inputs)
    return getattr(type(head), name)(head, inputs)


def disable_concat_free(head: nn.Module) -> None:
    """Undo :func:`enable_concat_free`."""
    for name in head.__dict__.pop('_mmrevnet_concat_free', ()):
        head.__dict__.pop(name, None)
