"""The full-resolution cross-entropy of a decode head, in row bands.

mmseg's ``BaseDecodeHead.loss_by_feat`` upsamples the head's logits to the
label size (bilinear), then computes the cross-entropy and the accuracy on
them. With 150 classes at 512x512 and batch 4 one copy of those logits is
600 MiB, and the resize, softmax and cross-entropy backward make several.

:func:`banded_loss_by_feat` computes the same loss and accuracy one band of
label rows at a time: each band's logits are upsampled from the head's
output (bilinear interpolation is separable: the two source rows of every
output row, blended, then the columns), its cross-entropy summed, and the
band dropped; the backward recomputes each band and accumulates the
gradient of the head's (low-resolution) output. So only one band of
full-resolution logits exists at any time. The value is mmseg's (same
operations, summed band by band), the gradients equal within rounding.

Used for losses whose value is a sum over pixels: every ``loss_decode`` an
mmseg ``CrossEntropyLoss`` (softmax, no class weights, mean reduction, with
or without ``avg_non_ignore``) and no pixel sampler; any other head keeps
mmseg's ``loss_by_feat``.
"""

import math
import types
from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mmrevnet.reversible import eager_under_compile

__all__ = [
    'banded_loss_by_feat',
    'disable_banded_loss',
    'enable_banded_loss',
    'supports_banded_loss',
]

_EPS = torch.finfo(torch.float32).eps


def _source_rows(out_size: int, in_size: int, align_corners: bool):
    """Two source rows and their weights per output row, as PyTorch's
    bilinear upsampling computes them for an output of ``out_size``."""
    dst = torch.arange(out_size, dtype=torch.float64)
    if align_corners:
        scale = (in_size - 1) / (out_size - 1) if out_size > 1 else 0.0
        src = dst * scale
    else:
        src = ((dst + 0.5) * (in_size / out_size) - 0.5).clamp(min=0)
    first = src.floor().long().clamp(max=in_size - 1)
    second = (first + 1).clamp(max=in_size - 1)
    weight = (src - first).clamp(0, 1)
    return first, second, weight


class _Bands:
    """The row bands of one upsampling of ``(N, C, h, w)`` to ``size``."""

    def __init__(self, logits: Tensor, size, align_corners, bands: int):
        self.size = tuple(size)
        self.align_corners = align_corners
        height = self.size[0]
        first, second, weight = _source_rows(
            height, logits.shape[2], align_corners
        )
        device, dtype = logits.device, logits.dtype
        self.first, self.second = first.to(device), second.to(device)
        self.weight = weight.to(device=device, dtype=dtype)
        step = max(1, math.ceil(height / bands))
        self.ranges = [
            (r, min(r + step, height)) for r in range(0, height, step)
        ]

    def logits(self, logits: Tensor, start: int, stop: int) -> Tensor:
        """Rows ``start:stop`` of the upsampled logits."""
        weight = self.weight[start:stop].view(1, 1, -1, 1)
        rows = logits.index_select(2, self.first[start:stop]) * (1 - weight)
        rows = rows + logits.index_select(2, self.second[start:stop]) * weight
        # Same rows in and out: the height pass is the identity, the width
        # pass is the bilinear one.
        return F.interpolate(
            rows,
            size=(stop - start, self.size[1]),
            mode='bilinear',
            align_corners=self.align_corners,
        )


class _BandedCrossEntropy(torch.autograd.Function):
    """Sum over pixels of the cross-entropy of the upsampled logits, and
    the number of correctly classified labelled pixels (top-1).

    ``apply(bands, ignore_index, logits, label)``.
    """

    @staticmethod
    def forward(ctx, bands, ignore_index, logits, label):
        total = logits.new_zeros(())
        correct = logits.new_zeros((), dtype=torch.float32)
        with torch.no_grad():
            for start, stop in bands.ranges:
                band = bands.logits(logits, start, stop)
                target = label[:, start:stop]
                total += F.cross_entropy(
                    band, target, reduction='none', ignore_index=ignore_index
                ).sum()
                predicted = band.topk(1, dim=1)[1][:, 0]
                hit = predicted.eq(target) & target.ne(ignore_index)
                correct += hit.sum()
                del band, predicted, hit
        ctx.bands, ctx.ignore_index = bands, ignore_index
        ctx.save_for_backward(logits, label)
        ctx.mark_non_differentiable(correct)
        return total, correct

    @staticmethod
    @eager_under_compile  # run by autograd, also inside a compiled step
    def backward(ctx, grad_total, grad_correct):
        logits, label = ctx.saved_tensors
        grad = None
        if ctx.needs_input_grad[2] and grad_total is not None:
            grad = torch.zeros_like(logits)
            for start, stop in ctx.bands.ranges:
                with torch.enable_grad():
                    leaf = logits.detach().requires_grad_(True)
                    band = ctx.bands.logits(leaf, start, stop)
                    loss = F.cross_entropy(
                        band,
                        label[:, start:stop],
                        reduction='none',
                        ignore_index=ctx.ignore_index,
                    ).sum()
                (part,) = torch.autograd.grad(loss, leaf, grad_total)
                grad.add_(part)
                del leaf, band, loss, part
        return None, None, grad, None


def _losses(head) -> list:
    losses = head.loss_decode
    return list(losses) if isinstance(losses, nn.ModuleList) else [losses]


def supports_banded_loss(head: nn.Module) -> Optional[str]:
    """None if :func:`banded_loss_by_feat` computes ``head``'s loss, else
    why not."""
    from mmseg.models.losses import CrossEntropyLoss

    if not hasattr(head, 'loss_decode'):
        return 'it has no loss_decode'
    if getattr(head, 'sampler', None) is not None:
        return 'it has a pixel sampler'
    for loss in _losses(head):
        if type(loss) is not CrossEntropyLoss:
            return f'its loss {type(loss).__name__} is not CrossEntropyLoss'
        if loss.use_sigmoid or loss.use_mask:
            return 'its CrossEntropyLoss is sigmoid or mask'
        if loss.class_weight is not None:
            return 'its CrossEntropyLoss has class weights'
        if loss.reduction != 'mean':
            return f'its CrossEntropyLoss reduction is {loss.reduction!r}'
    return None


def banded_loss_by_feat(
    head: nn.Module, seg_logits: Tensor, batch_data_samples, bands: int = 16
) -> dict:
    """mmseg's ``loss_by_feat`` of ``head`` with the upsampled logits made
    one band of ``ceil(H / bands)`` label rows at a time.

    Args:
        head (nn.Module): An mmseg decode head that
            :func:`supports_banded_loss`.
        seg_logits (Tensor): The head's output.
        batch_data_samples (list): mmseg's data samples.
        bands (int): Number of row bands. Defaults to 16.

    Returns:
        dict: The losses (``loss_decode.loss_name`` keys) and ``acc_seg``.
    """
    seg_label = head._stack_batch_gt(batch_data_samples).squeeze(1)
    ignore_index = head.ignore_index
    split = _Bands(seg_logits, seg_label.shape[1:], head.align_corners, bands)
    total, correct = _BandedCrossEntropy.apply(
        split, ignore_index, seg_logits, seg_label
    )
    ignored = None
    loss = dict()
    for loss_decode in _losses(head):
        if loss_decode.avg_non_ignore:
            if ignored is None:
                # A tensor, not .item(): no host synchronisation.
                ignored = (seg_label == ignore_index).sum().to(torch.float64)
            avg_factor = seg_label.numel() - ignored
        else:
            avg_factor = seg_label.numel()
        value = loss_decode.loss_weight * (total / (avg_factor + _EPS))
        name = loss_decode.loss_name
        loss[name] = value if name not in loss else loss[name] + value
    # The scale in float64, then in correct's dtype: the rounding of a
    # Python-scalar multiply, without reading the count on the host.
    labelled = seg_label.ne(ignore_index).sum().to(torch.float64)
    scale = (100.0 / (labelled + _EPS)).to(correct.dtype)
    loss['acc_seg'] = (correct.view(1) + _EPS) * scale
    return loss


def _loss_by_feat(head, seg_logits, batch_data_samples):
    if head.training and torch.is_grad_enabled() and seg_logits.requires_grad:
        return banded_loss_by_feat(
            head, seg_logits, batch_data_samples, head._mmrevnet_loss_bands
        )
    return type(head).loss_by_feat(head, seg_logits, batch_data_samples)


def enable_banded_loss(head: nn.Module, bands: int = 16) -> bool:
    """Give ``head`` a ``loss_by_feat`` computing in row bands in training
    (see the module docstring); mmseg's in eval and under ``no_grad``.

    Args:
        head (nn.Module): The decode or auxiliary head.
        bands (int): Number of row bands. Defaults to 16.

    Returns:
        bool: Whether the head was changed (False for a head
        :func:`supports_banded_loss` rejects).
    """
    if not isinstance(bands, int) or isinstance(bands, bool) or bands < 1:
        raise ValueError(f'bands must be a positive int, got {bands!r}')
    if supports_banded_loss(head) is not None:
        return False
    head._mmrevnet_loss_bands = bands
    head.loss_by_feat = types.MethodType(_loss_by_feat, head)
    return True


def disable_banded_loss(head: nn.Module) -> None:
    """Undo :func:`enable_banded_loss`."""
    if head.__dict__.pop('_mmrevnet_loss_bands', None) is not None:
        head.__dict__.pop('loss_by_feat', None)
