"""Shared helpers of the reversible-stage tests.

Every comparison runs the memory-saving path (``memory_saving=True``)
against the plain path of a deep copy (same weights, same buffers) with
``configure(memory_saving=False)``; the plain path is ordinary autograd.
The helpers are exposed through the ``rh`` fixture.
"""

import copy
import sys
import warnings

import pytest
import torch
from torch import nn

from mmrevnet.reversible import (
    DEFAULT_MAX_AMPLIFICATION,
    MomentumSequential,
    amplification,
)


def conv_bn(channels=4, dtype=torch.float64, dropout=0.0, momentum=0.1):
    """``conv-BN-ReLU-[dropout]-conv-BN``, convs without bias."""
    layers = [
        nn.Conv2d(channels, channels, 3, padding=1, bias=False),
        nn.BatchNorm2d(channels, momentum=momentum),
        nn.ReLU(),
    ]
    if dropout:
        layers.append(nn.Dropout(dropout))
    layers += [
        nn.Conv2d(channels, channels, 3, padding=1, bias=False),
        nn.BatchNorm2d(channels, momentum=momentum),
    ]
    block = nn.Sequential(*layers).to(dtype)
    # Non-trivial affine parameters, so their gradients are exercised.
    with torch.no_grad():
        for module in block.modules():
            if isinstance(module, nn.BatchNorm2d):
                module.weight.uniform_(0.5, 1.5)
                module.bias.uniform_(-0.2, 0.2)
    return block


def conv_bn_list(num, seed=0, **kwargs):
    torch.manual_seed(seed)
    return [conv_bn(**kwargs) for _ in range(num)]


def expects_stored_states(gamma, num):
    return amplification(gamma, num) > DEFAULT_MAX_AMPLIFICATION


def make_pair(functions, gamma=0.9, **kwargs):
    """``(memory_saving, plain)`` stages with identical weights.

    Asserts the UserWarning about stored states exactly when the stage
    has to store intermediate states.
    """
    if expects_stored_states(gamma, len(functions)):
        with pytest.warns(UserWarning, match='intermediate state'):
            rev = MomentumSequential(functions, gamma, **kwargs)
    else:
        with warnings.catch_warnings():
            warnings.simplefilter('error')
            rev = MomentumSequential(functions, gamma, **kwargs)
    plain = copy.deepcopy(rev)
    plain.configure(memory_saving=False)
    return rev, plain


def data(shape=(2, 4, 6, 6), dtype=torch.float64, seed=1, grad=True):
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(shape, generator=generator, dtype=dtype)
    return x.requires_grad_(grad)


def run(module, x, v0=None, seed=None, weight=None):
    """One forward/backward; returns ``(out, x.grad, v0.grad, grads)``.

    ``grads`` maps parameter names to their ``.grad`` (None when unset).
    The loss is a weighted sum, so every output element gets a different
    cotangent.
    """
    x = x.detach().clone().requires_grad_(x.requires_grad)
    if v0 is not None:
        v0 = v0.detach().clone().requires_grad_(v0.requires_grad)
    module.zero_grad(set_to_none=True)
    if seed is not None:
        torch.manual_seed(seed)
    out = module(x) if v0 is None else module(x, v0)
    if weight is None:
        weight = data(out.shape, seed=123, grad=False)
    (out * weight.to(out.dtype)).sum().backward()
    grads = {
        name: (None if p.grad is None else p.grad.clone())
        for name, p in module.named_parameters()
    }
    return (out.detach(), x.grad, None if v0 is None else v0.grad, grads)


def max_rel(estimate, truth):
    """``max|estimate - truth| / max|truth|`` (absolute if truth is 0)."""
    estimate = estimate.detach().double()
    truth = truth.detach().double()
    scale = truth.abs().max().item()
    error = (estimate - truth).abs().max().item()
    return error / scale if scale > 0 else error


def norm_rel(estimate, truth):
    """``||estimate - truth|| / ||truth||``."""
    estimate = estimate.detach().double()
    truth = truth.detach().double()
    return ((estimate - truth).norm() / truth.norm()).item()


def assert_runs_match(rev_run, plain_run, tol, metric=max_rel):
    """Element-wise agreement of two :func:`run` results."""
    out, gx, gv, grads = rev_run
    out_p, gx_p, gv_p, grads_p = plain_run
    assert metric(out, out_p) <= tol
    for a, b, what in ((gx, gx_p, 'input'), (gv, gv_p, 'v0')):
        assert (a is None) == (b is None), what
        if a is not None:
            err = metric(a, b)
            assert err <= tol, f'{what} grad: {err:.3g} > {tol:g}'
    assert grads.keys() == grads_p.keys()
    for name, grad in grads.items():
        grad_p = grads_p[name]
        assert (grad is None) == (grad_p is None), name
        if grad is not None:
            err = metric(grad, grad_p)
            assert err <= tol, f'{name}: {err:.3g} > {tol:g}'


def norm_buffers(module):
    return {
        name: buf.clone()
        for name, buf in module.named_buffers()
        if name.split('.')[-1]
        in ('running_mean', 'running_var', 'num_batches_tracked')
    }


@pytest.fixture(autouse=True)
def _one_thread():
    """The tensors are tiny: intra-op threads only add contention."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope='session')
def rh():
    """This module: the helpers above."""
    return sys.modules[__name__]
