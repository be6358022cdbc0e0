"""StageConfig and MomentumStage: one validated, immutable configuration.

Also the properties of the default memory-saving backward that do not
show in its numbers: no host synchronisation, and no silently missing
gradient (DataParallel replicas, closures over tensors needing grad).
"""

import copy
import dataclasses

import pytest
import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode

from mmrevnet.reversible import (
    MomentumSequential,
    MomentumStage,
    StageConfig,
    stage_mode,
)

SYNC_OPS = ('aten::_local_scalar_dense', 'aten::item', 'aten::is_nonzero')


class _OpCounter(TorchDispatchMode):
    """Counts every aten op dispatched while active, by name."""

    def __init__(self):
        super().__init__()
        self.counts = {}

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = func._schema.name
        self.counts[name] = self.counts.get(name, 0) + 1
        return func(*args, **(kwargs or {}))


def _conv_functions(num, seed=0):
    torch.manual_seed(seed)
    return [
        nn.Sequential(
            nn.Conv2d(4, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU()
        )
        for _ in range(num)
    ]


def test_modes_follow_public_arguments():
    assert stage_mode(True) == 'reversible'
    assert stage_mode(True, with_cp=True) == 'reversible'
    assert stage_mode(False, with_cp=True) == 'checkpoint'
    assert stage_mode(False) == 'plain'
    with pytest.raises(TypeError, match='memory_saving'):
        stage_mode(1)


def test_config_is_frozen_and_validated_on_every_change():
    config = StageConfig(10, gamma=0.9)
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.gamma = 0.5
    # The plain mode accepts gamma = 0; the reversible one does not.
    plain = config.replace(memory_saving=False, gamma=0.0)
    assert plain.mode == 'plain' and plain.gamma == 0.0
    with pytest.raises(ValueError, match='memory_saving=True'):
        plain.replace(memory_saving=True)
    with pytest.raises(ValueError, match='mode must be one of'):
        config.replace(mode='fast')
    with pytest.raises(TypeError, match='unknown stage settings'):
        config.replace(gama=0.5)
    with pytest.raises(TypeError, match='track_drift'):
        config.replace(track_drift='yes')


def test_stage_settings_cannot_be_poked():
    stage = MomentumStage(4, gamma=0.9)
    for name in ('gamma', 'memory_saving', 'track_drift', 'with_cp'):
        with pytest.raises(AttributeError):
            setattr(stage, name, getattr(stage, name))
    with pytest.raises(AttributeError):
        stage.config = StageConfig(4)


def test_switching_to_memory_saving_plans_stored_states():
    """A small gamma gets its stored states when memory saving turns on."""
    stage = MomentumStage(20, gamma=0.5, memory_saving=False)
    assert stage.anchor_interval == 0
    with pytest.warns(UserWarning, match='intermediate state'):
        stage.configure(memory_saving=True)
    assert stage.anchor_interval == 3
    assert stage.num_stored_states == 6


def test_configure_track_drift_keeps_other_settings():
    stage = MomentumSequential(_conv_functions(3), gamma=0.8, name='s')
    before = stage.config
    after = stage.configure(track_drift=True)
    assert after == dataclasses.replace(before, track_drift=True)


def _backward_counts(stage, x):
    out = stage(x)
    loss = out.pow(2).sum()
    with _OpCounter() as counter:
        loss.backward()
    return counter.counts


@pytest.mark.parametrize('gamma', [0.9, 0.5])
def test_default_backward_makes_no_host_sync(gamma):
    """No ``.item()`` / ``_local_scalar_dense`` in the default backward."""
    functions = _conv_functions(20)
    if gamma == 0.5:
        with pytest.warns(UserWarning, match='intermediate state'):
            stage = MomentumSequential(functions, gamma=gamma)
    else:
        stage = MomentumSequential(functions, gamma=gamma)
    x = torch.randn(2, 4, 6, 6, requires_grad=True)
    counts = _backward_counts(stage, x)
    assert 'aten::convolution_backward' in counts  # the counter works
    assert {op: counts.get(op, 0) for op in SYNC_OPS} == dict.fromkeys(
        SYNC_OPS, 0
    )
    # Drift tracking is the debugging aid that does synchronise.
    stage.configure(track_drift=True)
    counts = _backward_counts(stage, x)
    assert sum(counts.get(op, 0) for op in SYNC_OPS) > 0


def test_dataparallel_replica_is_refused():
    stage = MomentumSequential(_conv_functions(2), gamma=0.9)
    replica = copy.deepcopy(stage)
    replica.functions = nn.ModuleList(
        f._replicate_for_data_parallel() for f in replica.functions
    )
    x = torch.randn(2, 4, 6, 6, requires_grad=True)
    with pytest.raises(RuntimeError, match='DataParallel'):
        replica(x)
    # The plain path runs replicas like any module.
    replica.configure(memory_saving=False)
    replica(x)


class _ClosureFunction(nn.Module):
    """``F(x) = tanh(W x) * scale`` where ``scale`` is a free tensor."""

    def __init__(self, scale):
        super().__init__()
        self.linear = nn.Linear(3, 3)
        self.scale = scale

    def forward(self, x):
        return torch.tanh(self.linear(x)) * self.scale


@pytest.mark.parametrize('memory_saving', [False, True])
def test_closure_over_tensor_needing_grad(memory_saving):
    """Plain path: the closed-over tensor gets its gradient; reversible
    path: refused with an error, never a silently missing gradient."""
    scale = torch.ones(3, requires_grad=True)
    torch.manual_seed(0)
    stage = MomentumSequential(
        [_ClosureFunction(scale) for _ in range(3)],
        gamma=0.9,
        memory_saving=memory_saving,
    )
    x = torch.randn(4, 3, requires_grad=True)
    out = stage(x).sum()
    if memory_saving:
        with pytest.raises(RuntimeError, match='neither its input nor'):
            out.backward()
    else:
        out.backward()
        assert scale.grad is not None and scale.grad.abs().sum() > 0


def test_closure_over_non_leaf_tensor_is_refused():
    base = torch.ones(3, requires_grad=True)
    scale = base * 2.0  # another graph's output
    stage = MomentumSequential([_ClosureFunction(scale)] * 2, gamma=0.9)
    out = stage(torch.randn(4, 3, requires_grad=True)).sum()
    with pytest.raises(RuntimeError, match='neither its input nor'):
        out.backward()


def test_closure_check_walks_each_function_once(monkeypatch):
    """The closure check runs at a function's first memory-saving
    backward, not at every one; a refused function is checked again."""
    from mmrevnet.reversible import function as function_module

    walked = []
    original = function_module._check_closed_over
    monkeypatch.setattr(
        function_module,
        '_check_closed_over',
        lambda name, step, *a: walked.append(step) or original(name, step, *a),
    )
    stage = MomentumSequential(_conv_functions(3), gamma=0.9)
    for _ in range(3):
        x = torch.randn(2, 4, 6, 6, requires_grad=True)
        stage(x).sum().backward()
    assert sorted(walked) == [0, 1, 2]
    walked.clear()
    refused = MomentumSequential(
        [_ClosureFunction(torch.ones(3, requires_grad=True))], gamma=0.9
    )
    for _ in range(2):
        out = refused(torch.randn(4, 3, requires_grad=True)).sum()
        with pytest.raises(RuntimeError, match='neither its input nor'):
            out.backward()
    assert walked == [0, 0]


def test_frozen_parameter_is_not_a_closure():
    """A parameter with requires_grad=False is simply not trained."""
    functions = _conv_functions(3)
    functions[1][0].weight.requires_grad_(False)
    stage = MomentumSequential(functions, gamma=0.9)
    x = torch.randn(2, 4, 6, 6, requires_grad=True)
    stage(x).sum().backward()
    assert functions[1][0].weight.grad is None
    assert functions[0][0].weight.grad is not None


@pytest.mark.parametrize('gamma', [0.9, 0.5])
def test_retain_graph_twice_with_buffer_reuse(gamma):
    """The saved stage end and stored states become working memory only
    when the graph is not kept: two backward passes give twice the grads."""
    functions = _conv_functions(20, seed=3)
    for f in functions:
        f.double()
    kwargs = dict(gamma=gamma)
    if gamma == 0.5:
        with pytest.warns(UserWarning, match='intermediate state'):
            stage = MomentumSequential(functions, **kwargs)
    else:
        stage = MomentumSequential(functions, **kwargs)
    plain = copy.deepcopy(stage)
    plain.configure(memory_saving=False)
    grads = []
    for module in (stage, plain):
        torch.manual_seed(0)
        x = torch.randn(2, 4, 6, 6, dtype=torch.float64, requires_grad=True)
        loss = module(x).pow(2).sum()
        loss.backward(retain_graph=True)
        first = x.grad.clone()
        loss.backward()
        grads.append((first, x.grad))
    (first, second), (plain_first, plain_second) = grads
    torch.testing.assert_close(second, 2 * first, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(first, plain_first, rtol=1e-9, atol=1e-12)


_ELEMENTWISE = {
    'aten::add',
    'aten::add_',
    'aten::sub',
    'aten::sub_',
    'aten::mul',
    'aten::mul_',
    'aten::div',
    'aten::div_',
    'aten::lerp',
    'aten::lerp_',
}


class _FullSizeCounter(TorchDispatchMode):
    """Counts elementwise ops whose output has ``numel`` elements."""

    def __init__(self, numel):
        super().__init__()
        self.numel = numel
        self.count = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        if (
            func._schema.name.split('.')[0] in _ELEMENTWISE
            and isinstance(out, torch.Tensor)
            and out.numel() == self.numel
        ):
            self.count += 1
        return out


def test_passes_over_full_tensors_per_block():
    """Forward: v = lerp(F, v, gamma), x + v. Backward per block: x - v,
    the cotangent lerp, grad_x += J^T g, v - (1 - g) F, / g (and one
    (1 - gamma) * grad at the start). F is a bias-free conv, which adds no
    elementwise pass of its own."""
    blocks = 6
    torch.manual_seed(0)
    functions = [nn.Conv2d(4, 4, 3, padding=1, bias=False)] * blocks
    stage = MomentumSequential(functions, gamma=0.9)
    x = torch.randn(2, 4, 6, 6, requires_grad=True)
    with _FullSizeCounter(x.numel()) as forward:
        out = stage(x)
    loss = (out * out).sum()
    with _FullSizeCounter(x.numel()) as backward:
        loss.backward()
    assert forward.count == 2 * blocks
    # (out * out).sum() backward adds 2 multiplications of its own.
    assert backward.count - 2 == 5 * blocks + 1


@pytest.mark.parametrize('kept', [0, 1, 7, 12])
def test_plans_match_plain_path(kept):
    """float64: any number of kept functions gives the plain path's
    output, input/velocity gradients, parameter gradients and BN buffers."""
    functions = _conv_functions(12, seed=5)
    for f in functions:
        f.double()
    stage = MomentumSequential(functions, gamma=0.9, stored_blocks=kept)
    plain = copy.deepcopy(stage)
    plain.configure(memory_saving=False)
    assert stage.config.num_reversed == 12 - kept
    results = []
    for module in (stage, plain):
        torch.manual_seed(0)
        x = torch.randn(2, 4, 6, 6, dtype=torch.float64, requires_grad=True)
        v0 = torch.randn_like(x).requires_grad_()
        out = module(x, v0)
        params = list(module.parameters())
        grads = torch.autograd.grad(out.pow(2).sum(), [x, v0, *params])
        results.append((out, grads, [b.clone() for b in module.buffers()]))
    (out, grads, buffers), (out_ref, grads_ref, buffers_ref) = results
    assert torch.equal(out, out_ref)
    for g, g_ref in zip(grads, grads_ref):
        torch.testing.assert_close(g, g_ref, rtol=1e-10, atol=1e-12)
    for b, b_ref in zip(buffers, buffers_ref):
        assert torch.equal(b, b_ref)


def test_plan_is_validated_and_shortens_stored_states():
    with pytest.raises(ValueError, match=r'stored_blocks must be an int'):
        StageConfig(5, stored_blocks=6)
    with pytest.warns(UserWarning, match='intermediate state'):
        full = StageConfig(20, gamma=0.5)
    # Only the 3 reversed functions divide by gamma: no stored state.
    short = full.replace(stored_blocks=17)
    assert short.num_reversed == 3 and short.anchor_interval == 0
