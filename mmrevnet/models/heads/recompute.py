"""Recompute a module's activations in the backward pass, BN-exactly.

Decode and auxiliary heads hold most of a segmentor's activation memory
once the backbone is reversible. Their inputs (the backbone's stage
outputs) are stored anyway, so a head that saves only its inputs and
recomputes everything else in the backward pass adds nothing to what a
training step keeps.

:class:`RecomputeFunction` does this for any module whose call takes
tensors, possibly inside lists, tuples and dicts, and returns tensors
(again possibly nested). The forward runs the module under ``no_grad`` and
saves only the input tensors, the random-generator state and the autocast
state. The backward re-runs the module with grad enabled, with the same
random numbers and autocast state, with train-mode BatchNorm buffers
frozen (:func:`~mmrevnet.reversible.state.frozen_norm_buffers`: the
running statistics are updated once, by the forward), and takes one
``torch.autograd.grad`` over the inputs and the module's parameters, which
are arguments of the Function: ``torch.autograd.grad`` on parameters, DDP
and frozen inputs then work as with a plain module.

Unlike mmengine's ``activation_checkpointing`` (reentrant
``torch.utils.checkpoint``), tensors inside the list a head receives are
seen and receive gradients.
"""

from typing import Any, Callable, Iterator, List, Sequence, Tuple

import torch
from torch import Tensor, nn

from mmrevnet.reversible.state import (
    AutocastState,
    RNGState,
    eager_under_compile,
    frozen_norm_buffers,
)

__all__ = ['RecomputeFunction', 'recomputed_call', 'flatten', 'unflatten']


# -- nested structures --------------------------------------------------
def flatten(obj: Any) -> Tuple[List[Tensor], Any]:
    """Split ``obj`` into its tensors and a spec to rebuild it.

    Lists, tuples (named tuples too) and dicts are searched recursively;
    any other value is kept as is in the spec.

    Args:
        obj: A tensor, or a list/tuple/dict nesting tensors and other
            values.

    Returns:
        tuple: ``(tensors, spec)``; ``unflatten(tensors, spec)`` rebuilds
        ``obj`` with the given tensors in place of the original ones.
    """
    tensors: List[Tensor] = []
    return tensors, _walk(obj, tensors)


# Module-level recursions: a nested function that calls itself is a
# reference cycle, which would keep the tensors it reaches (a model's
# feature maps) alive until Python's cyclic garbage collector runs.
def _walk(value: Any, tensors: List[Tensor]) -> Any:
    if isinstance(value, Tensor):
        tensors.append(value)
        return ('tensor',)
    if isinstance(value, dict):
        items = [(k, _walk(v, tensors)) for k, v in value.items()]
        return ('dict', type(value), items)
    if isinstance(value, (list, tuple)):
        return ('seq', type(value), [_walk(v, tensors) for v in value])
    return ('leaf', value)


def unflatten(tensors: Sequence[Tensor], spec: Any) -> Any:
    """Inverse of :func:`flatten`.

    Args:
        tensors (Sequence[Tensor]): Tensors in the order ``flatten`` found
            them.
        spec: The spec ``flatten`` returned.

    Returns:
        The rebuilt structure.
    """
    return _build(spec, iter(tensors))


def _build(node: Any, tensors: Iterator[Tensor]) -> Any:
    kind = node[0]
    if kind == 'tensor':
        return next(tensors)
    if kind == 'leaf':
        return node[1]
    if kind == 'dict':
        return node[1]((k, _build(v, tensors)) for k, v in node[2])
    items = [_build(v, tensors) for v in node[2]]
    if hasattr(node[1], '_fields'):  # named tuple
        return node[1](*items)
    return node[1](items)


# -- the Function -------------------------------------------------------
class RecomputeFunction(torch.autograd.Function):
    """Run ``fn`` without storing its activations; recompute in backward.

    Call through :func:`recomputed_call`. Arguments of ``apply``: ``fn``
    (``fn(*args, **kwargs)``), ``spec`` (the :func:`flatten` spec of
    ``(args, kwargs)``), ``modules`` (whose train-mode BN buffers the
    recomputation must not touch), ``box`` (a list receiving the output
    spec), ``num_inputs``, then the input tensors and the parameters.
    """

    @staticmethod
    def forward(ctx, fn, spec, modules, box, num_inputs, *tensors):
        inputs, params = tensors[:num_inputs], tensors[num_inputs:]
        like = inputs[0] if inputs else params[0]
        # Captured before the call so that the recomputation draws the
        # same dropout masks; the global generator advances as in a plain
        # forward.
        ctx.rng = RNGState(like)
        ctx.autocast = AutocastState(like.device.type)
        with torch.no_grad():
            args, kwargs = unflatten(inputs, spec)
            output = fn(*args, **kwargs)
        outputs, out_spec = flatten(output)
        box.append(out_spec)
        ctx.fn, ctx.spec, ctx.modules = fn, spec, modules
        ctx.num_inputs = num_inputs
        ctx.params = params
        ctx.save_for_backward(*inputs)
        # Outputs that are inputs returned unchanged must be new tensors,
        # or autograd would treat them as views of the inputs.
        return tuple(
            out.clone() if any(out is i for i in inputs) else out
            for out in outputs
        )

    @staticmethod
    @eager_under_compile  # run by autograd, also inside a compiled step
    def backward(ctx, *grad_outputs):
        offset = 5  # fn, spec, modules, box, num_inputs
        needs = ctx.needs_input_grad[offset:]
        saved = ctx.saved_tensors
        inputs = [
            t.detach().requires_grad_(need)
            for t, need in zip(saved, needs[: ctx.num_inputs])
        ]
        with torch.enable_grad(), ctx.rng.replay(), ctx.autocast.enter():
            with frozen_norm_buffers(ctx.modules):
                args, kwargs = unflatten(inputs, ctx.spec)
                outputs, _ = flatten(ctx.fn(*args, **kwargs))
        pairs = [
            (out, grad)
            for out, grad in zip(outputs, grad_outputs)
            if grad is not None and out.requires_grad
        ]
        wrt = [t for t in inputs if t.requires_grad]
        wrt += [
            p for p, need in zip(ctx.params, needs[ctx.num_inputs :]) if need
        ]
        grads = iter(())
        if pairs and wrt:
            grads = iter(
                torch.autograd.grad(
                    [out for out, _ in pairs],
                    wrt,
                    [grad for _, grad in pairs],
                    allow_unused=True,
                )
            )
        result = [None] * offset
        for need in needs:
            result.append(next(grads, None) if need else None)
        return tuple(result)


def _needs_recompute(tensors: Sequence[Tensor]) -> bool:
    return torch.is_grad_enabled() and any(t.requires_grad for t in tensors)


@eager_under_compile
def recomputed_call(
    fn: Callable,
    args: tuple,
    kwargs: dict,
    params: Sequence[Tensor],
    modules: Sequence[nn.Module],
) -> Any:
    """``fn(*args, **kwargs)`` with its activations recomputed in backward.

    Under ``no_grad``, or when neither an input tensor nor a parameter
    requires grad, ``fn`` runs plainly (nothing would be saved anyway).

    Args:
        fn (Callable): The function, e.g. a head's plain ``forward``.
        args (tuple): Its positional arguments; tensors may be nested in
            lists, tuples and dicts.
        kwargs (dict): Its keyword arguments (same rule).
        params (Sequence[Tensor]): The parameters ``fn`` uses; their
            gradients are returned by the Function.
        modules (Sequence[nn.Module]): Modules whose train-mode
            BatchNorm buffers the recomputation must leave alone.

    Returns:
        The output of ``fn``, with its tensors attached to the graph.
    """
    inputs, spec = flatten((args, kwargs))
    params = [p for p in params if p.requires_grad]
    if not _needs_recompute(list(inputs) + params):
        return fn(*args, **kwargs)
    box: list = []
    outputs = RecomputeFunction.apply(
        fn, spec, list(modules), box, len(inputs), *inputs, *params
    )
    return unflatten(outputs, box[0])
