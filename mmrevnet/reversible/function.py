"""The memory-saving autograd Function of a momentum stage.

Forward runs the stage without recording a graph and saves only the stage
end ``(x_T, v_T)`` (plus the state ``(x_t, v_t)`` every few blocks when
``gamma`` is small, see :mod:`.coupling`). Backward walks the stage from the
end: it reconstructs ``x_t``, evaluates ``F_t(x_t)`` once with grad, takes one
vector-Jacobian product for the input and the parameters of ``F_t``, and
reuses the same ``F_t(x_t)`` to reconstruct ``v_t``.

Adjoint of one block (``g_x``, ``g_v``: gradients w.r.t. ``x_{t+1}`` and
``v_{t+1}`` that do not pass through ``x_{t+1}``)::

    g      = g_x + g_v
    g_x   += (1 - gamma) * J_x(F_t)^T g
    grad_t = (1 - gamma) * J_theta(F_t)^T g
    g_v    = gamma * g

Parameters are explicit inputs of the Function and their gradients are
returned (as in memcnn and momentumnet), so ``torch.autograd.grad`` works,
a stage whose input needs no grad still trains its parameters, and DDP
sees each parameter become ready exactly once. A function whose
recomputation reaches a tensor that needs grad and is not one of its
parameters (a closure over another module's output or a free tensor)
would silently lose that gradient: it is detected and refused.

The Function takes its settings as plain arguments and makes no host
synchronisation unless drift tracking (a debugging aid) is on. It records
where values stop being finite, in forward and in the reconstruction, in a
device-side :class:`~.finite.FiniteRecord` that is read once per step (with
drift tracking: at once, raising in the pass that met the value).
"""

import contextlib
import sys
import threading
import weakref
from typing import Dict, List, Optional, Sequence

import torch
from torch import Tensor, nn

from .coupling import (
    forward_step,
    inverse_position,
    inverse_position_,
    inverse_velocity,
    inverse_velocity_,
)
from .finite import (
    FORWARD,
    RECONSTRUCTION,
    FiniteRecord,
    merge_ranges,
    value_range,
)
from .state import (
    AutocastState,
    RNGState,
    eager_under_compile,
    frozen_norm_buffers,
)


class StageReport:
    """What the last backward of a stage measured (drift monitor).

    Attributes:
        position_drift (float): ``max|x0_rec - x0| / max|x0|`` at the
            stage input, or None when not measured.
        velocity_drift (float): ``max|v0_rec - v0| / max(max|v0|, 1)``
            (the initial velocity is often zero, hence the floor).
    """

    def __init__(self):
        self.position_drift: Optional[float] = None
        self.velocity_drift: Optional[float] = None


def _relative_max_error(
    estimate: Tensor, truth: Tensor, floor: float = 0.0
) -> float:
    scale = max(truth.detach().abs().max().item(), floor)
    error = (estimate - truth).detach().abs().max().item()
    return error / scale if scale > 0 else error


def _parameter_layout(functions: Sequence[nn.Module]):
    """Unique trainable parameters and, per function, their positions."""
    params: List[nn.Parameter] = []
    position: Dict[int, int] = {}
    layout: List[List[int]] = []
    for function in functions:
        _check_not_replica(function)
        indices = []
        for param in function.parameters():
            if not param.requires_grad:
                continue
            key = id(param)
            if key not in position:
                position[key] = len(params)
                params.append(param)
            indices.append(position[key])
        layout.append(indices)
    return params, layout


def _check_not_replica(function: nn.Module) -> None:
    # nn.DataParallel replicas keep their weights as plain attributes, so
    # ``parameters()`` is empty and they would get no gradient.
    if any(getattr(m, '_is_replica', False) for m in function.modules()):
        raise RuntimeError(
            'The memory-saving momentum stage does not support '
            'torch.nn.DataParallel replicas (their parameters are not '
            'visible to it, so they would get no gradient). Use '
            'DistributedDataParallel (what mmengine uses) or '
            'memory_saving=False.'
        )


class MomentumStageFunction(torch.autograd.Function):
    """``x_T = stage(x_0, v_0)`` with a reconstructing backward.

    Call through :func:`momentum_stage_memory_saving`; ``apply`` takes
    ``(settings, functions, layout, report, finite, x, v0, *params)`` with
    ``settings = (name, gamma, anchor_intervals, preserve_rng_state,
    first_state)``; ``first_state`` is the index of the input state in the
    stage's :class:`~.finite.FiniteRecord` ``finite`` (None: no record).
    """

    @staticmethod
    def forward(
        ctx, settings, functions, layout, report, finite, x, v0, *params
    ):
        (name, gamma, anchor_intervals, preserve_rng_state, first_state) = (
            settings
        )
        ctx.name = name
        ctx.gamma = gamma
        ctx.preserve_rng_state = preserve_rng_state
        ctx.report = report
        ctx.finite = finite
        ctx.first_state = first_state
        ctx.functions = functions
        ctx.layout = layout
        ctx.num_params = len(params)
        # References to the parameters themselves, not saved activations.
        ctx.params = params
        ctx.has_v0 = v0 is not None
        ctx.autocast = AutocastState(x.device.type)
        ctx.rng_states = []
        ctx.anchor_steps = []
        anchors = []
        x_start = x
        v = torch.zeros_like(x) if v0 is None else v0
        v_start = v
        interval = anchor_intervals[int(ctx.autocast.low_precision)]
        ranges = []
        if finite is not None:
            ranges.append(value_range(x))
            if v0 is not None:
                ranges[0] = merge_ranges(ranges[0], value_range(v0))
        with torch.no_grad():
            for step, function in enumerate(functions):
                if interval and step and step % interval == 0:
                    # Both halves of the state: a position error left in
                    # place would be amplified again by the next segment.
                    ctx.anchor_steps.append(step)
                    anchors += [x, v]
                if preserve_rng_state:
                    ctx.rng_states.append(RNGState(x))
                x, v = forward_step(x, v, function(x), gamma)
                if finite is not None:
                    ranges.append(value_range(v))
        if finite is not None:
            ranges[-1] = merge_ranges(ranges[-1], value_range(x))
            finite.add(FORWARD, first_state, ranges)
            if report is not None:
                finite.raise_if_nonfinite(name, FORWARD)
        saved = [x, v, *anchors]
        if report is not None:
            saved += [x_start, v_start]
        ctx.save_for_backward(*saved)
        return x

    @staticmethod
    @eager_under_compile  # run by autograd, also inside a compiled step
    def backward(ctx, grad_output):
        # First, before any local name refers to it (see _users).
        grad_output_users = _users(grad_output)
        if torch.is_grad_enabled():
            raise RuntimeError(
                f'Momentum stage {ctx.name!r}: double backward '
                '(create_graph=True) is not supported by the memory-saving '
                'path; build the stage with memory_saving=False for '
                'higher-order gradients.'
            )
        saved = ctx.saved_tensors
        x, v = saved[0], saved[1]
        num_anchors = len(ctx.anchor_steps)
        anchor_states = saved[2 : 2 + 2 * num_anchors]
        anchors = {
            step: anchor_states[2 * i : 2 * i + 2]
            for i, step in enumerate(ctx.anchor_steps)
        }
        drift_reference = saved[2 + 2 * num_anchors :]
        del saved, anchor_states
        report = ctx.report
        finite = ctx.finite
        # Value range of each rebuilt state, by step.
        rebuilt = [None] * len(ctx.functions) if finite is not None else None
        gamma = ctx.gamma
        params = ctx.params
        param_grads: List[Optional[Tensor]] = [None] * ctx.num_params
        # Buffers are reused so that a block's backward holds no more than
        # it needs: one working position, one velocity, the recomputed F_t,
        # and the two adjoints grad_x and cotangent. The saved velocity and
        # stored states become working memory when the graph is not kept
        # for another backward. The stage output x_T becomes the working
        # position, and autograd's grad_output the adjoint grad_x, only
        # when nothing but autograd itself refers to their memory (see
        # :func:`_only_autograd_holds`): the caller may still read x_T,
        # and a gradient may also be on its way to another node.
        saved_are_ours = not _graph_kept()
        owns_v = saved_are_ours
        owns_x = saved_are_ours and _only_autograd_holds(x, _users(x), 'saved')
        owns_grad_x = grad_output.dtype == x.dtype and _only_autograd_holds(
            grad_output, grad_output_users, 'grad'
        )
        grad_x = grad_output
        # A buffer of the stage's shape that is ours and free.
        spare: Optional[Tensor] = None
        # cotangent of F_t(x_t): (1 - gamma) * (dL/dx_{t+1} + dL/dv_{t+1}),
        # carried from step to step as
        #   cotangent_t = (1 - gamma) * grad_x + gamma * cotangent_{t+1},
        # one lerp; dL/dv_t = gamma / (1 - gamma) * cotangent_t.
        cotangent = None
        for step in range(len(ctx.functions) - 1, -1, -1):
            function = ctx.functions[step]
            if step in anchors:
                # The stored state is exact: evaluate F_t on it.
                x, v_stored = anchors[step]
                owns_x = saved_are_ours
            elif owns_x:
                x = inverse_position_(x, v)
            else:
                x, owns_x = inverse_position(x, v), True
            replay = (
                ctx.rng_states[step].replay()
                if ctx.preserve_rng_state
                else contextlib.nullcontext()
            )
            frozen = frozen_norm_buffers([function])
            with torch.enable_grad(), ctx.autocast.enter(), replay, frozen:
                x_in = x.detach().requires_grad_(True)
                fx = function(x_in)
            indices = ctx.layout[step]
            inputs = [x_in] + [params[i] for i in indices]
            if function not in _CLOSED_OVER_CHECKED:
                _check_closed_over(ctx.name, step, fx, inputs)
                _CLOSED_OVER_CHECKED.add(function)
            # v_t needs only F_t(x_t), not its gradient. Where nothing in
            # F_t's graph keeps its output, v_t is written into the
            # output's memory before the VJP and v_{t+1}'s is released.
            velocity_done = False
            if step in anchors:
                old_v, v = v, v_stored
                velocity_done = True
            elif _output_reusable(fx, v):
                old_v = v
                v = inverse_velocity(v, fx.detach(), gamma, out=fx.detach())
                velocity_done = True
            if velocity_done:
                if owns_v and spare is None:
                    spare = old_v
                owns_v = step not in anchors or saved_are_ours
                del old_v
            if cotangent is None:
                # The adjoint uses gamma itself, as autograd's derivative of
                # the forward's lerp does (only the inverse divides by the
                # rounded value the forward multiplied with): near gamma = 1
                # the fp32 rounding of gamma changes 1 - gamma by up to 1%
                # (0.999999: 1.3%), and the plain path's gradients, like
                # float64's, carry the exact 1 - gamma.
                if spare is not None and spare.dtype == grad_x.dtype:
                    cotangent = torch.mul(grad_x, 1.0 - gamma, out=spare)
                else:
                    cotangent = (1.0 - gamma) * grad_x
            else:
                cotangent.lerp_(grad_x, 1.0 - gamma)
            spare = None
            grads = list(
                torch.autograd.grad(
                    fx,
                    inputs,
                    grad_outputs=cotangent.to(fx.dtype),
                    allow_unused=True,
                )
            )
            del inputs, x_in
            # The rest of the loop updates cotangent in place: no gradient
            # may keep referring to it (an identity-like F passes the
            # cotangent itself through).
            for i, grad in enumerate(grads):
                if grad is not None and _shares_storage(grad, cotangent):
                    grads[i] = grad.clone()
            grad_in = grads[0]
            if grad_in is not None:
                grad_in = grad_in.to(grad_x.dtype)
                if owns_grad_x:
                    grad_x.add_(grad_in)
                elif _is_dense(grad_in):
                    # grad_output has other users; the fresh input
                    # gradient is ours.
                    grad_x, owns_grad_x = grad_in.add_(grad_x), True
                else:  # e.g. an expanded gradient: no in-place write
                    grad_x, owns_grad_x = grad_in + grad_x, True
            for index, grad in zip(indices, grads[1:]):
                if grad is None:
                    continue
                current = param_grads[index]
                param_grads[index] = (
                    grad if current is None else (current + grad)
                )
            del grads, grad_in
            if not velocity_done:
                fx = fx.detach()
                if owns_v:
                    v = inverse_velocity_(v, fx, gamma)
                else:
                    v, owns_v = inverse_velocity(v, fx, gamma), True
            del fx
            if rebuilt is not None:
                rebuilt[step] = value_range(v)
        if finite is not None:
            finite.add(RECONSTRUCTION, ctx.first_state, rebuilt)
            if report is not None:
                finite.raise_if_nonfinite(ctx.name, RECONSTRUCTION)
        if report is not None:
            x_true, v_true = drift_reference
            report.position_drift = _relative_max_error(x, x_true)
            report.velocity_drift = _relative_max_error(v, v_true, floor=1.0)
        grad_v0 = None
        if ctx.has_v0 and ctx.needs_input_grad[6] and cotangent is not None:
            grad_v0 = cotangent.mul_(gamma / (1.0 - gamma))
        grad_x0 = grad_x if ctx.needs_input_grad[5] else None
        return (None, None, None, None, None, grad_x0, grad_v0, *param_grads)


def _graph_kept() -> bool:
    """Whether the running backward keeps the graph (``retain_graph``).

    Unknown (the query is private to torch) counts as kept, which only
    costs memory.
    """
    query = getattr(
        torch._C._autograd, '_get_current_graph_task_keep_graph', None
    )
    if query is None:
        return True
    try:
        return bool(query())
    except RuntimeError:
        return True


def _users(tensor: Tensor) -> tuple:
    """``(memory users, tensor users, Python references)`` of ``tensor``.

    Three counts private to torch or CPython: how many tensors
    (TensorImpls) refer to its memory (``torch._C._storage_Use_Count``;
    the Python storage object made to ask counts once), how many
    references its TensorImpl has (``Tensor._use_count``) and how many
    Python references its object has (``sys.getrefcount``). Called
    directly from a backward's body, so that the frames between autograd
    and the call are the same as in :class:`_AutogradHolders`.
    """
    try:
        storage = torch._C._storage_Use_Count(tensor.untyped_storage()._cdata)
        return (storage, tensor._use_count(), sys.getrefcount(tensor))
    except (AttributeError, RuntimeError, TypeError):
        return ()


class _AutogradHolders(torch.autograd.Function):
    """Measures what autograd alone holds in a custom backward.

    The forward saves its output, as the stage does; nothing but autograd
    holds the output or the incoming gradient (the consumer makes a fresh
    one). The backward is wrapped and reads the counts as the stage's
    does.
    """

    counts: Optional[Dict[str, tuple]] = None

    @staticmethod
    def forward(ctx, x):
        out = x + 1
        ctx.save_for_backward(out)
        return out

    @staticmethod
    @eager_under_compile
    def backward(ctx, grad_output):
        grad_output_users = _users(grad_output)
        saved = ctx.saved_tensors
        out = saved[0]
        del saved
        _AutogradHolders.counts = dict(
            saved=_users(out)[:2], grad=grad_output_users
        )
        return grad_output


class _FreshGradient(torch.autograd.Function):
    """The probe's consumer: its backward makes a new gradient, held by
    autograd only, as a convolution's backward does."""

    @staticmethod
    def forward(ctx, x):
        return x.sum()

    @staticmethod
    def backward(ctx, grad_output):
        return grad_output.expand(2).clone()


def _autograd_holder_counts() -> Optional[Dict[str, tuple]]:
    """:func:`_users` of a saved output and of a gradient that only
    autograd holds, measured once per process on the installed torch
    (None when they cannot be measured: then nothing is reused).

    Measured in a new thread: the calling thread's saved-tensor hooks and
    tracer (a debugger's) would add users to the probe's tensors, and a
    baseline counted too high could take a held tensor for a free one.
    """
    if _AutogradHolders.counts is None:

        def measure():
            sys.settrace(None)
            try:
                with torch.enable_grad():
                    leaf = torch.zeros(2, requires_grad=True)
                    out = _FreshGradient.apply(_AutogradHolders.apply(leaf))
                    out.backward()
            except (AttributeError, RuntimeError, TypeError):
                _AutogradHolders.counts = {}

        probe = threading.Thread(target=measure, name='mmrevnet-probe')
        probe.start()
        probe.join()
        counts = _AutogradHolders.counts
        if not counts or not all(counts.values()):
            _AutogradHolders.counts = {}
    return _AutogradHolders.counts or None


def _only_autograd_holds(tensor: Tensor, users: tuple, kind: str) -> bool:
    """Whether ``tensor``'s memory is referred to by autograd alone.

    ``kind`` is ``'saved'`` for the stage's output as unpacked from the
    saved tensors (``users``: its first two counts), ``'grad'`` for the
    incoming gradient (``users`` read first thing in the backward). Any
    other reference to the same memory (the caller's to the output, a
    detached copy or a view of it, the same gradient passed to another
    node, a hook or ``retain_grad`` keeping it) adds a user, and then the
    memory is not overwritten. The counts are compared with those of a
    probe Function in the same situation, so a torch that counts
    differently reuses nothing rather than too much.
    """
    counts = _autograd_holder_counts()
    if counts is None or not _is_dense(tensor) or tensor._base is not None:
        return False
    if kind == 'saved':
        users = users[:2]
    return users == counts[kind]


def _output_reusable(fx: Tensor, v: Tensor) -> bool:
    """Whether ``fx``'s memory may take ``v_t`` before the VJP of ``F_t``.

    Only when no node of the graph can read ``fx`` again: it is not a view,
    its node does not keep its result (as ReLU or tanh do) and is not a
    custom Function (whose saved tensors are not visible), unless the
    Function declares ``output_unused_in_backward = True``. Same dtype and
    shape as ``v`` and no overlapping memory, so that ``v_t`` fits.
    """
    node = fx.grad_fn
    return (
        node is not None
        and fx._base is None
        and fx.dtype == v.dtype
        and fx.shape == v.shape
        and _is_dense(fx)
        and not hasattr(node, '_saved_result')
        and not (
            isinstance(node, torch.autograd.function.BackwardCFunction)
            and not getattr(
                getattr(node, '_forward_cls', None),
                'output_unused_in_backward',
                False,
            )
        )
    )


def _is_dense(tensor: Tensor) -> bool:
    """No two elements share memory, so an in-place update is allowed."""
    return tensor.is_contiguous() or tensor.is_contiguous(
        memory_format=torch.channels_last
    )


def _shares_storage(a: Tensor, b: Tensor) -> bool:
    return a.untyped_storage().data_ptr() == b.untyped_storage().data_ptr()


#: Residual functions whose recomputed graph was found closed over their
#: input and parameters. The graph a module builds is fixed by its code,
#: so it is walked at the module's first memory-saving backward only.
_CLOSED_OVER_CHECKED: 'weakref.WeakSet[nn.Module]' = weakref.WeakSet()


def _check_closed_over(
    name: str, step: int, output: Tensor, inputs: Sequence[Tensor]
) -> None:
    """Refuse a recomputed graph that reaches a tensor outside ``inputs``.

    The recomputation runs from a fresh leaf ``x_in``: any other tensor
    needing grad that ``F`` reaches (a closure, a module attribute that is
    not a parameter) would get no gradient through this Function.
    """
    known = {id(t) for t in inputs}
    pending = [output.grad_fn]
    seen = set()
    while pending:
        node = pending.pop()
        if node is None or node in seen:
            continue
        seen.add(node)
        variable = getattr(node, 'variable', None)
        if variable is not None:  # AccumulateGrad: a leaf
            if id(variable) not in known:
                _raise_closed_over(name, step, variable)
            continue
        pending.extend(fn for fn, _ in node.next_functions)


def _raise_closed_over(name: str, step: int, tensor: Tensor) -> None:
    raise RuntimeError(
        f'Momentum stage {name!r}: function {step} uses a tensor of shape '
        f'{tuple(tensor.shape)} that needs grad but is neither its input '
        'nor one of its parameters (a closure or a plain tensor '
        'attribute). The memory-saving backward cannot give it a '
        'gradient. Make it an nn.Parameter of the function, or use '
        'memory_saving=False.'
    )


def momentum_stage_memory_saving(
    config,
    functions: Sequence[nn.Module],
    x: Tensor,
    v0: Optional[Tensor],
    report: Optional[StageReport] = None,
    finite: Optional[FiniteRecord] = None,
) -> Tensor:
    """Run ``functions`` through :class:`MomentumStageFunction`.

    Args:
        config (StageConfig): The stage's settings.
        functions (Sequence[nn.Module]): The residual functions.
        x (Tensor): Stage input.
        v0 (Tensor, optional): Initial velocity (zero when None).
        report (StageReport, optional): Where the backward writes the
            measured drift; also makes the non-finite checks raise at
            once (host synchronisations). Defaults to None.
        finite (FiniteRecord, optional): Where forward and reconstruction
            record non-finite states; ``functions[0]`` is function
            ``config.stored_blocks`` of the stage. Defaults to None.
    """
    params, layout = _parameter_layout(functions)
    settings = (
        config.name,
        config.gamma,
        (config.anchor_interval, config.low_precision_anchor_interval),
        config.preserve_rng_state,
        config.stored_blocks,
    )
    return MomentumStageFunction.apply(
        settings, list(functions), layout, report, finite, x, v0, *params
    )
