"""The reversed backward of a momentum stage, written as its equations.

:class:`~.function.MomentumStageFunction` computes the same thing with
reused buffers and in-place updates, so that a block's backward holds as
little as it can. This version allocates freely and follows the method's
equations line by line; the tests hold the fast one to it element by
element in float64. It is not used in training.

For ``t = T-1 .. 0``, from ``(x_T, v_T)`` and ``g_x = dL/dx_T``,
``g_v = dL/dv_T``::

    x_t   = x_{t+1} - v_{t+1}
    f     = F_t(x_t)
    v_t   = (v_{t+1} - (1 - gamma) * f) / gamma
    g     = g_x + g_v
    g_x   = g_x + (1 - gamma) * J_x(F_t)^T g
    dθ_t  = (1 - gamma) * J_θ(F_t)^T g
    g_v   = gamma * g
"""

from typing import List, Optional, Sequence, Tuple

import torch
from torch import Tensor, nn

from .state import frozen_norm_buffers


def reference_forward(
    functions: Sequence[nn.Module],
    gamma: float,
    x: Tensor,
    v: Optional[Tensor] = None,
) -> Tuple[Tensor, Tensor]:
    """``(x_T, v_T)`` of the stage, without a graph and with BN buffers
    left as they are.

    Args:
        functions (Sequence[nn.Module]): The residual functions ``F_t``.
        gamma (float): Momentum.
        x (Tensor): ``x_0``.
        v (Tensor, optional): ``v_0``; zero when None.
    """
    v = torch.zeros_like(x) if v is None else v
    with torch.no_grad(), frozen_norm_buffers(functions):
        for function in functions:
            v = gamma * v + (1 - gamma) * function(x)
            x = x + v
    return x, v


def reference_backward(
    functions: Sequence[nn.Module],
    gamma: float,
    x: Tensor,
    v: Tensor,
    grad_x: Tensor,
    grad_v: Optional[Tensor] = None,
) -> Tuple[Tensor, Tensor, List[List[Optional[Tensor]]]]:
    """Gradients of a stage from its end state, by the equations above.

    Args:
        functions (Sequence[nn.Module]): The residual functions ``F_t``.
        gamma (float): Momentum.
        x (Tensor): ``x_T``.
        v (Tensor): ``v_T``.
        grad_x (Tensor): ``dL/dx_T``.
        grad_v (Tensor, optional): ``dL/dv_T``; zero when None.

    Returns:
        tuple: ``(dL/dx_0, dL/dv_0, per function the gradients of its
        parameters, in ``parameters()`` order; None where a parameter
        needs no grad)``.
    """
    grad_v = torch.zeros_like(grad_x) if grad_v is None else grad_v
    param_grads: List[List[Optional[Tensor]]] = [[] for _ in functions]
    for t in range(len(functions) - 1, -1, -1):
        function = functions[t]
        x = x - v
        params = [p for p in function.parameters() if p.requires_grad]
        with torch.enable_grad(), frozen_norm_buffers([function]):
            x_in = x.detach().requires_grad_(True)
            f = function(x_in)
        v = (v - (1 - gamma) * f.detach()) / gamma
        g = grad_x + grad_v
        grads = torch.autograd.grad(
            f, [x_in, *params], (1 - gamma) * g, allow_unused=True
        )
        grad_x = grad_x if grads[0] is None else grad_x + grads[0]
        by_param = dict(zip(map(id, params), grads[1:]))
        param_grads[t] = [by_param.get(id(p)) for p in function.parameters()]
        grad_v = gamma * g
    return grad_x, grad_v, param_grads
