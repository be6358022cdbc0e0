"""The momentum coupling and its inverse (the only place the math lives).

Forward (m-RevNet, Li & Gao, ICCV 2021, Eq. 6; Momentum ResNets, Sander et
al., ICML 2021), with ``gamma = 1 - mu``::

    v_{t+1} = gamma * v_t + (1 - gamma) * F_t(x_t)
    x_{t+1} = x_t + v_{t+1}

Inverse (m-RevNet Eq. 7)::

    x_t = x_{t+1} - v_{t+1}
    v_t = (v_{t+1} - (1 - gamma) * F_t(x_t)) / gamma

The division by ``gamma`` amplifies the rounding error already in ``v`` by
``1 / gamma`` per block, ``(1 / gamma) ** T`` over ``T`` blocks (measured:
about 2.1x per block at gamma = 0.5, 1.1x at 0.9). The memory-saving path
bounds that factor by storing the state ``(x_t, v_t)`` every
:func:`state_anchor_interval` blocks; storing ``v`` alone is not enough,
because the position error left at a stored velocity is amplified again by
the next run of blocks.
"""

import math
import struct
from typing import Optional, Tuple

import torch
from torch import Tensor

#: Largest rounding-error amplification accepted between two stored
#: states when the functions run in fp32 or fp64. Chosen by measurement
#: (docs/numerics.md, precision table): it keeps the memory-saving
#: gradients of MRevNetV1c-50/101/152 within 2x of the plain path's own
#: error against float64 on every parameter tensor, for gamma 0.5 to
#: 0.999999 (worst measured ratio 1.3). Segments of growth 40 (ResNet-152's
#: 35-block stage at gamma 0.9 without a stored state) gave 38x, of 256
#: (gamma 0.5, 8 blocks) 400x: a reconstructed ReLU input a few ulps off
#: flips the sign of a gradient element. At the default gamma 0.9 a stage
#: of up to 23 momentum blocks stores nothing (ResNet-50/101); the 35-block
#: stage of ResNet-152 stores one state.
DEFAULT_MAX_AMPLIFICATION = 12.0

#: The same bound under 16-bit autocast (fp16 / bf16). Recomputing F on a
#: position that differs from the forward one by a few fp32 ulps may round
#: differently to 16 bits, so each block adds an error of 16-bit size
#: instead of fp32 size; segments must stay short (6 blocks at gamma 0.9).
LOW_PRECISION_MAX_AMPLIFICATION = 2.0


def forward_step(
    x: Tensor, v: Tensor, fx: Tensor, gamma: float
) -> Tuple[Tensor, Tensor]:
    """One momentum update; returns ``(x_{t+1}, v_{t+1})``."""
    # lerp(fx, v, gamma) = gamma * v + (1 - gamma) * fx in one elementwise
    # kernel instead of three: on a GPU these full-size updates, not the
    # convolutions, are what the momentum adds to a step.
    v = torch.lerp(fx.to(v.dtype), v, gamma)
    return x + v, v


def inverse_position(x_next: Tensor, v_next: Tensor) -> Tensor:
    """``x_t`` from ``x_{t+1}`` and ``v_{t+1}``."""
    return x_next - v_next


def inverse_position_(x_next: Tensor, v_next: Tensor) -> Tensor:
    """:func:`inverse_position` written into ``x_next``'s memory."""
    return x_next.sub_(v_next)


def gamma_as_computed(gamma: float, dtype: torch.dtype) -> float:
    """``gamma`` rounded as :func:`forward_step`'s kernel rounds it.

    ``torch.lerp`` computes in the tensor's precision, and in fp32 for
    16-bit tensors, with the weight rounded to that precision: in fp32 the
    forward update is ``v' = g * v + (1 - g) * fx`` with ``g`` the fp32
    value nearest to ``gamma``. The inverse must divide by that ``g``, not
    by ``gamma``: a mismatch of one fp32 rounding (about 4e-8) would be a
    systematic error of every inverse step, amplified like rounding error.
    ``1 - g`` is exact in the same precision for ``g`` in [0.5, 1).
    Computed on the host without torch, so it never synchronises a device.
    """
    if dtype == torch.float64:
        return float(gamma)
    # fp32, and the fp32 opmath of 16-bit lerp.
    return struct.unpack('<f', struct.pack('<f', gamma))[0]


def inverse_velocity(
    v_next: Tensor, fx: Tensor, gamma: float, out: Optional[Tensor] = None
) -> Tensor:
    """``v_t`` from ``v_{t+1}`` and ``F_t(x_t)`` (into ``out`` if given)."""
    g = gamma_as_computed(gamma, v_next.dtype)
    fx = fx.to(v_next.dtype)
    return torch.sub(v_next, fx, alpha=1.0 - g, out=out).div_(g)


def inverse_velocity_(v_next: Tensor, fx: Tensor, gamma: float) -> Tensor:
    """:func:`inverse_velocity` written into ``v_next``'s memory."""
    g = gamma_as_computed(gamma, v_next.dtype)
    return v_next.sub_(fx.to(v_next.dtype), alpha=1.0 - g).div_(g)


def amplification(gamma: float, steps: int) -> float:
    """Rounding-error growth of ``steps`` inverse velocity updates."""
    if steps <= 0:
        return 1.0
    exponent = steps * math.log(1.0 / gamma)
    return math.inf if exponent > 700.0 else math.exp(exponent)


def state_anchor_interval(gamma: float, max_amplification: float) -> int:
    """Most blocks that may be inverted before a stored state is needed.

    Args:
        gamma (float): Momentum in (0, 1).
        max_amplification (float): Largest accepted ``(1/gamma)**k``.

    Returns:
        int: ``k >= 1``, the largest run of blocks whose amplification stays
        within ``max_amplification`` (at least 1 block).
    """
    if not 0.0 < gamma < 1.0:
        raise ValueError(f'gamma must be in (0, 1), got {gamma}')
    if max_amplification <= 1.0:
        raise ValueError(
            f'max_amplification must be > 1, got {max_amplification}'
        )
    steps = math.log(max_amplification) / math.log(1.0 / gamma)
    return max(1, int(math.floor(steps + 1e-9)))
