"""``MRevNetEncoderDecoder``: mmseg's EncoderDecoder with memory-saving heads.

One line in a config switches it on, every other key of the model is
mmseg's::

    model = dict(type='MRevNetEncoderDecoder')
"""

from typing import List, Optional, Union

from mmengine.registry import MODELS
from mmseg.models.segmentors import EncoderDecoder
from torch import nn

from ..memory_saving.banded_loss import enable_banded_loss
from ..memory_saving.concat_conv import enable_concat_free
from ..memory_saving.heads import GRANULARITIES, enable_memory_saving

__all__ = [
    'MRevNetEncoderDecoder',
    'enable_memory_saving_heads',
    'segmentor_heads',
]


def segmentor_heads(segmentor: nn.Module) -> List[nn.Module]:
    """The decode heads of ``segmentor``, then its auxiliary heads.

    Args:
        segmentor (nn.Module): A segmentor with a ``decode_head`` and
            optionally an ``auxiliary_head`` (a head or an
            ``nn.ModuleList`` of heads).

    Returns:
        list[nn.Module]: The heads, a ``ModuleList`` flattened.

    Raises:
        ValueError: If ``segmentor`` has no decode or auxiliary head.
    """
    heads = []
    for name in ('decode_head', 'auxiliary_head'):
        head = getattr(segmentor, name, None)
        if head is None:
            continue
        if type(head) is nn.ModuleList:
            heads.extend(head)
        else:
            heads.append(head)
    if not heads:
        raise ValueError(
            f'{type(segmentor).__name__} has no decode_head or auxiliary_head'
        )
    return heads


def nested_units(head: nn.Module) -> List[nn.Module]:
    """Submodules of ``head`` worth recomputing separately inside the
    head's recomputation: for mmseg's ``UPerHead`` the FPN's lateral
    convolutions (at 1/4 resolution; their outputs then take the top-down
    sums in place); none for other heads. The FPN output convolutions
    stay in the head's graph: recomputed separately, their recomputation
    and backward coexist with the rest of the head's backward and raise
    the step peak (measured in ``docs/benchmark/segmentor.md``)."""
    from mmseg.models.decode_heads import UPerHead

    if type(head) is UPerHead:
        return list(head.lateral_convs)
    return []


def enable_memory_saving_heads(
    segmentor: nn.Module, granularity: str = 'head', nested: bool = False
) -> List[nn.Module]:
    """Make the decode and auxiliary heads of ``segmentor`` memory-saving.

    Works on any segmentor with a ``decode_head`` and optionally an
    ``auxiliary_head`` (a head or an ``nn.ModuleList`` of heads), e.g.
    mmseg's ``EncoderDecoder`` built from an unchanged config.

    Args:
        segmentor (nn.Module): The segmentor.
        granularity (str): See
            :func:`~mmrevnet.models.memory_saving.enable_memory_saving`.
            Defaults to ``'head'``.
        nested (bool): With ``'head'``, also recompute
            :func:`nested_units` separately inside each head.
            Defaults to False.

    Returns:
        list[nn.Module]: The heads made memory-saving.
    """
    heads = segmentor_heads(segmentor)
    for head in heads:
        inner = nested_units(head) if nested and granularity == 'head' else ()
        enable_memory_saving(head, granularity, nested=inner)
    return heads


def _with_memory_budget(backbone, memory_budget):
    from ..backbones import MRevNet

    backbone = dict(backbone or {})
    backbone_class = backbone.get('type', '')
    if isinstance(backbone_class, str):
        backbone_class = MODELS.get(backbone_class)
    if not (
        isinstance(backbone_class, type)
        and issubclass(backbone_class, MRevNet)
    ):
        raise ValueError(
            'MRevNetEncoderDecoder: memory_budget plans an m-RevNet '
            f'backbone (MRevNet, MRevNetV1c, MRevNetV1d), got type='
            f'{backbone.get("type")!r}'
        )
    if backbone.get('memory_budget') not in (None, memory_budget):
        raise ValueError(
            'MRevNetEncoderDecoder: memory_budget='
            f'{memory_budget!r} and backbone.memory_budget='
            f'{backbone["memory_budget"]!r} differ; set one of them'
        )
    backbone['memory_budget'] = memory_budget
    return backbone


@MODELS.register_module()
class MRevNetEncoderDecoder(EncoderDecoder):
    """mmseg ``EncoderDecoder`` whose heads recompute their activations.

    Takes every argument of mmseg's ``EncoderDecoder`` and has the same
    state-dict keys; in training the decode and auxiliary heads store only
    their inputs (the backbone outputs, stored anyway) and recompute the
    rest in the backward pass, BN-exactly (running statistics updated
    once), with dropout masks replayed and autocast re-entered. Inside a
    head, a concatenation followed by a convolution (PSP, ASPP and
    UPerNet bottlenecks) is computed slice by slice without the
    concatenation, and the losses on the logits upsampled to the label
    size are computed in row bands. In eval mode and under ``no_grad`` the
    heads run plainly, as mmseg's.

    Args:
        memory_saving_heads (str, optional): ``'head'`` recomputes each
            head as a whole (the head stores nothing beyond its inputs);
            ``'module'`` recomputes each parametrised submodule of a head
            separately (stores the tensors between them); None trains the
            heads plainly. Defaults to ``'head'``.
        concat_free (bool): Compute the bottleneck convolutions of
            ``PSPHead``, ``ASPPHead`` and ``UPerHead`` without their
            concatenation (:mod:`~mmrevnet.models.memory_saving.concat_conv`;
            other heads are unchanged), and with ``'head'`` recompute
            ``UPerHead``'s FPN convolutions separately inside the head's
            recomputation (:func:`nested_units`). Defaults to True.
        loss_bands (int, optional): Compute each head's cross-entropy and
            accuracy on the upsampled logits in this many row bands
            (:mod:`~mmrevnet.models.memory_saving.banded_loss`; heads
            with other losses or a pixel sampler keep mmseg's); None
            computes them on
            the whole upsampled logits. Defaults to 16.
        memory_budget (int | float | str, optional): The backbone's
            ``memory_budget`` (the backbone must be an ``MRevNet``): the
            plan is chosen for the whole segmentor's training step, heads
            and loss included. Setting it here or on the backbone is the
            same. Defaults to None.
        **kwargs: Arguments of mmseg's ``EncoderDecoder``.
    """

    def __init__(
        self,
        memory_saving_heads: Optional[str] = 'head',
        concat_free: bool = True,
        loss_bands: Optional[int] = 16,
        memory_budget: Union[None, int, float, str] = None,
        **kwargs,
    ):
        if memory_saving_heads is not None and (
            memory_saving_heads not in GRANULARITIES
        ):
            raise ValueError(
                'MRevNetEncoderDecoder: memory_saving_heads must be one of '
                f'{GRANULARITIES} or None, got {memory_saving_heads!r}'
            )
        if not isinstance(concat_free, bool):
            raise ValueError(
                'MRevNetEncoderDecoder: concat_free must be True or False, '
                f'got {concat_free!r}'
            )
        if loss_bands is not None and (
            isinstance(loss_bands, bool)
            or not isinstance(loss_bands, int)
            or loss_bands < 1
        ):
            raise ValueError(
                'MRevNetEncoderDecoder: loss_bands must be a positive int '
                f'or None, got {loss_bands!r}'
            )
        if memory_budget is not None:
            kwargs['backbone'] = _with_memory_budget(
                kwargs.get('backbone'), memory_budget
            )
        super().__init__(**kwargs)
        self.memory_saving_heads = memory_saving_heads
        self.concat_free = concat_free
        self.loss_bands = loss_bands
        for head in segmentor_heads(self):
            # Before the recomputation wraps the forward, which then runs
            # the concat-free feature method.
            if concat_free:
                enable_concat_free(head)
            if loss_bands is not None:
                enable_banded_loss(head, loss_bands)
        if memory_saving_heads is not None:
            enable_memory_saving_heads(
                self, memory_saving_heads, nested=concat_free
            )
