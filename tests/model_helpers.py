"""Helpers shared by the model tests: non-trivial BN state, plain-path
comparison of outputs, gradients and BN buffers."""

from typing import Optional, Sequence

import torch
from torch.nn.modules.batchnorm import _BatchNorm


def randomize_norms(
    model: torch.nn.Module, seed: int = 0, count: Optional[int] = None
) -> torch.nn.Module:
    """Non-trivial BN affine parameters and running statistics (and, with
    ``count``, ``num_batches_tracked``), so that comparisons see them."""
    generator = torch.Generator().manual_seed(seed)
    for module in model.modules():
        if isinstance(module, _BatchNorm):
            n = module.num_features
            module.weight.data = 0.5 + torch.rand(n, generator=generator)
            module.bias.data = 0.2 * torch.randn(n, generator=generator)
            module.running_mean = 0.1 * torch.randn(n, generator=generator)
            module.running_var = 0.5 + torch.rand(n, generator=generator)
            if count is not None:
                module.num_batches_tracked.fill_(count)
    return model


def assert_matches_plain(
    reference: torch.nn.Module,
    saving: torch.nn.Module,
    outs_ref: Sequence[torch.Tensor],
    outs: Sequence[torch.Tensor],
    grads_ref: Sequence[torch.Tensor],
    grads: Sequence[torch.Tensor],
    tol: float = 3e-9,
) -> None:
    """Outputs and BN buffers bit-equal; every parameter gradient within
    ``tol`` of the plain path's (``max|g - g_ref| / max|g_ref|``)."""
    for out_ref, out in zip(outs_ref, outs):
        assert torch.equal(out_ref, out)
    names = [name for name, _ in reference.named_parameters()]
    for name, g_ref, g in zip(names, grads_ref, grads):
        scale = g_ref.abs().max().clamp_min(1e-30)
        error = ((g - g_ref).abs().max() / scale).item()
        assert error <= tol, (name, error)
    for (name, b_ref), b in zip(reference.named_buffers(), saving.buffers()):
        assert torch.equal(b_ref, b), name
