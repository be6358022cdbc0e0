"""SavedTensorCounter (bytes saved for backward) and step_peak (peak live
bytes of a training step)."""

import copy
import gc
import weakref

import pytest
import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from benchmarks.memory import (
    SavedTensorCounter,
    StepPeak,
    cuda_peak_memory,
    saved_bytes,
    step_peak,
    step_peak_bytes,
)


def _chain(channels=4):
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(channels, channels, 3, padding=1, bias=False),
        nn.BatchNorm2d(channels),
        nn.ReLU(),
        nn.Conv2d(channels, channels, 3, padding=1, bias=False),
        nn.BatchNorm2d(channels),
    )


def _x(shape=(2, 4, 6, 6), grad=True):
    return torch.randn(shape).requires_grad_(grad)


def test_linear_relu_exact_count():
    model = nn.Sequential(nn.Linear(8, 8), nn.ReLU())
    x = _x((4, 8))
    with SavedTensorCounter(exclude=model.parameters()) as counter:
        model(x).sum()
    # Linear saves x (and the excluded weight), ReLU its output.
    assert counter.bytes == 2 * x.nbytes == 256
    assert counter.mib == 256 / 2**20
    assert len(counter.storages) == 2
    assert counter.excluded_bytes == model[0].weight.nbytes


def test_parameters_excluded_only_when_asked():
    model = nn.Sequential(nn.Linear(8, 8), nn.ReLU())
    x = _x((4, 8))
    with SavedTensorCounter() as counter:
        model(x)
    assert counter.bytes == 2 * x.nbytes + model[0].weight.nbytes


def test_views_of_one_storage_count_once():

    class SaveViews(torch.autograd.Function):
        @staticmethod
        def forward(ctx, x):
            ctx.save_for_backward(x, x[0], x.t(), x.view(-1))
            return x * 2

        @staticmethod
        def backward(ctx, grad):
            saved = ctx.saved_tensors
            assert saved[1].shape == (8,)
            return grad * 2

    x = _x((6, 8))
    with SavedTensorCounter() as counter:
        out = SaveViews.apply(x)
    assert counter.num_saved == 4
    assert counter.bytes == x.nbytes
    assert counter.storages[0].count == 4
    out.sum().backward()
    assert torch.equal(x.grad, torch.full_like(x, 2.0))


def test_custom_function_saves_are_counted():

    class SaveTwo(torch.autograd.Function):
        @staticmethod
        def forward(ctx, x):
            y = x.exp()
            ctx.save_for_backward(y, torch.zeros(100))
            return y

        @staticmethod
        def backward(ctx, grad):
            y, _ = ctx.saved_tensors
            return grad * y

    x = _x((5, 5))
    with SavedTensorCounter() as counter:
        SaveTwo.apply(x)
    assert counter.bytes == x.nbytes + 400


def test_checkpoint_inputs_are_counted():
    """Non-reentrant checkpoint saves its inputs outside its own hooks."""
    chain = _chain()
    x = _x()
    with SavedTensorCounter(exclude=chain.parameters()) as counter:
        checkpoint(chain, x, use_reentrant=False)
    assert counter.bytes == x.nbytes
    with SavedTensorCounter(exclude=chain.parameters()) as plain:
        chain(x)
    # conv-BN-ReLU-conv-BN keeps four activations plus BN statistics.
    assert plain.bytes > 3 * counter.bytes


def test_backward_unchanged_under_counter():
    chain = _chain()
    ref = copy.deepcopy(chain)
    x = _x()
    x_ref = x.detach().clone().requires_grad_()
    with SavedTensorCounter(exclude=chain.parameters()):
        loss = chain(x).pow(2).sum()
    loss.backward()
    ref(x_ref).pow(2).sum().backward()
    assert torch.equal(x.grad, x_ref.grad)
    for p, q in zip(chain.parameters(), ref.parameters()):
        assert torch.equal(p.grad, q.grad)


def test_measured_graph_is_freed():
    """A saved output must not keep its own graph alive.

    ReLU saves its output. Before the fix, the pack hook returned that
    tensor itself, so the graph held a reference to its own output: a
    cycle gc cannot break, and each measurement of the benchmark leaked
    a whole step's activations (7 GiB per model at 512x1024 on a GPU).
    """
    model = nn.Sequential(nn.Linear(8, 8), nn.ReLU())
    with SavedTensorCounter(exclude=model.parameters()) as counter:
        out = model(_x((4, 8)))
    assert counter.bytes == 256
    alive = weakref.ref(out)
    del out
    gc.collect()
    assert alive() is None


def test_no_grad_saves_nothing():
    chain = _chain()
    with SavedTensorCounter() as counter:
        with torch.no_grad():
            chain(_x())
    assert counter.bytes == 0 and counter.num_saved == 0


def test_counter_restarts_and_rejects_nesting():
    model = nn.Linear(4, 4)
    counter = SavedTensorCounter(exclude=model.parameters())
    x = _x((3, 4))
    with counter:
        model(x)
        with pytest.raises(RuntimeError, match='already active'):
            counter.__enter__()
    first = counter.bytes
    with counter:
        model(x)
        model(x)  # the same x saved twice: still one storage
    assert counter.bytes == first == x.nbytes


def test_saved_bytes_helper():
    chain = _chain()
    x = _x()
    with SavedTensorCounter(exclude=chain.parameters()) as counter:
        chain(x)
    assert saved_bytes(chain, x, exclude=chain.parameters()) == counter.bytes


@pytest.mark.skipif(torch.cuda.is_available(), reason='CPU-only check')
def test_cuda_peak_memory_is_none_on_cpu():
    assert cuda_peak_memory(lambda: None) is None


@pytest.mark.skipif(not torch.cuda.is_available(), reason='needs CUDA')
def test_cuda_peak_memory_on_gpu():

    def allocate():
        return torch.empty(2**20, dtype=torch.uint8, device='cuda')

    peak = cuda_peak_memory(allocate)
    assert peak >= 2**20


# -- step_peak ---------------------------------------------------------


class _ScaleExp(nn.Module):
    """``sum(exp(x * w))`` with a one-element weight ``w``."""

    def __init__(self):
        super().__init__()
        self.w = nn.Parameter(torch.ones(1))

    def forward(self, x):
        return (x * self.w).exp().sum()


def test_step_peak_hand_computed():
    """Every allocation of an elementwise chain, derived by hand.

    x (N bytes) exists before the step and needs no grad. Forward:
    ``a = x * w`` (N), ``b = exp(a)`` (N, saved by exp's backward), ``a``
    freed (mul saves x and w, not a), ``loss = b.sum()`` (4 B). Backward:
    the seed ``ones_like(loss)`` (4 B) expands to b's shape as a view;
    exp's backward ``g = grad * b`` (N) while b, loss and the seed are
    live: 2N + 8, the peak; b is released; mul's backward ``g * x`` (N)
    beside g: 2N + 8 again, then its sum (4 B) becomes ``w.grad``, left
    out.
    """
    model = _ScaleExp()
    x = torch.randn(1024)
    n = x.nbytes
    result = step_peak(model, lambda: model(x))
    assert result.peak_bytes == 2 * n + 8
    assert result.allocated_bytes == 4 * n + 8
    assert result.num_allocations == 6
    assert result.excluded_bytes == model.w.nbytes
    assert result.end_bytes == 0
    assert result.peak_op == 'aten::mul'
    assert result.cuda_step_peak_bytes is None
    assert result.peak_mib == result.peak_bytes / 2**20
    # Saved for backward: only b (x exists before, w is a parameter).
    with SavedTensorCounter(exclude=model.parameters()) as counter:
        model(x)
    assert counter.bytes == x.nbytes + n


def test_step_peak_counts_what_the_caller_holds():
    """A tensor the step keeps alive is live bytes like any other.

    Holding ``b = exp(x * w)`` through backward keeps it beside mul's
    backward ``g`` and ``g * x``: 3N + 8 instead of 2N + 8. (Holding a
    backbone's outputs this way is what made an earlier measurement of
    ResNetV1c-50-D8 read 278.2 MiB instead of 270.2.)
    """
    model = _ScaleExp()
    x = torch.randn(1024)
    held = []

    def step():
        held.append((x * model.w).exp())
        return held[-1].sum()

    result = step_peak(model, step)
    assert result.peak_bytes == 3 * x.nbytes + 8
    assert result.end_bytes == x.nbytes
    held.clear()


def test_existing_gradients_are_accumulated_into():
    """With ``set_grads_to_none=False`` and ``w.grad`` already there,
    backward adds into it in place: nothing is left out, and the 4-byte
    part ``sum(g * x)`` is a temporary, allocated while g and g * x are
    live: 2N + 12."""
    model = _ScaleExp()
    x = torch.randn(1024)
    step_peak(model, lambda: model(x))
    grad = model.w.grad
    result = step_peak(model, lambda: model(x), set_grads_to_none=False)
    assert model.w.grad is grad
    assert result.excluded_bytes == 0
    assert result.peak_bytes == 2 * x.nbytes + 12
    assert result.end_bytes == 0


class _Scratch(torch.autograd.Function):
    """``x * w`` that allocates and frees a scratch buffer in forward."""

    scratch_bytes = 0

    @staticmethod
    def forward(ctx, x, w):
        scratch = torch.empty(_Scratch.scratch_bytes, dtype=torch.uint8)
        del scratch
        ctx.save_for_backward(x)
        return x * w

    @staticmethod
    def backward(ctx, grad):
        (x,) = ctx.saved_tensors
        return None, (grad * x).sum().reshape(1)


def test_step_peak_counts_temporaries_autograd_never_sees():
    """A buffer freed inside an op is invisible to the saved counter."""
    w = nn.Parameter(torch.ones(1))
    model = nn.Module()
    model.w = w
    x = torch.randn(256)
    _Scratch.scratch_bytes = 16 * x.nbytes
    result = step_peak(model, lambda: _Scratch.apply(x, w).sum())
    # Nothing else is live while the scratch exists; afterwards at most
    # two N-byte tensors and a few scalars are.
    assert result.peak_bytes == 16 * x.nbytes
    assert result.peak_op == 'aten::empty'
    with SavedTensorCounter(exclude=[w]) as counter:
        _Scratch.apply(x, w).sum()
    assert counter.bytes == x.nbytes


def test_step_peak_is_deterministic():
    chain = _chain()
    x = _x(grad=False)
    results = [step_peak(chain, lambda: chain(x).pow(2).sum())]
    results.append(step_peak(chain, lambda: chain(x).pow(2).sum()))
    assert results[0] == results[1]
    assert isinstance(results[0], StepPeak)
    assert step_peak_bytes(chain, lambda: chain(x).pow(2).sum()) == (
        results[0].peak_bytes
    )
    assert results[0].end_bytes == 0
    assert results[0].excluded_bytes == sum(
        p.nbytes for p in chain.parameters()
    )


class _WideScale(nn.Module):
    """A conv after ``x * w.sum()``: ``w``'s size changes no activation."""

    def __init__(self, numel):
        super().__init__()
        torch.manual_seed(0)
        self.w = nn.Parameter(torch.full((numel,), 1.0 / numel))
        self.conv = nn.Conv2d(4, 4, 3, padding=1)

    def forward(self, x):
        return self.conv(x * self.w.sum()).relu().sum()


def test_parameter_gradients_are_not_counted():
    """Twice the parameters, the same activations: the same peak."""
    x = torch.randn(2, 4, 8, 8)
    conv = 4 * 4 * 9 + 4
    small, large = _WideScale(4096 - conv), _WideScale(8192 - conv)
    count = [sum(p.numel() for p in m.parameters()) for m in (small, large)]
    assert count == [4096, 8192]
    peak_small = step_peak(small, lambda: small(x))
    peak_large = step_peak(large, lambda: large(x))
    assert peak_small.peak_bytes == peak_large.peak_bytes
    # w.grad (a scalar's gradient expanded to w's shape, materialised
    # by AccumulateGrad) is allocated in the step and left out.
    assert peak_large.excluded_bytes == 2 * peak_small.excluded_bytes
    assert peak_large.excluded_bytes == 8192 * 4


def test_exclude_leaves_out_storages_made_in_step():
    model = _ScaleExp()
    x = torch.randn(1024)
    kept = []

    def step():
        kept.append(torch.zeros(4096))  # outlives the step
        return model(x)

    held = step_peak(model, step)
    assert held.end_bytes == 4096 * 4
    kept.clear()
    left_out = step_peak(model, step, exclude=kept)
    assert left_out.end_bytes == 0
    assert left_out.excluded_bytes == held.excluded_bytes + 4096 * 4


class _Block(nn.Module):
    def __init__(self, channels, with_cp):
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(channels, channels, 3, padding=1, bias=False),
            nn.BatchNorm2d(channels),
            nn.ReLU(),
            nn.Conv2d(channels, channels, 3, padding=1, bias=False),
            nn.BatchNorm2d(channels),
        )
        self.with_cp = with_cp

    def forward(self, x):
        if self.with_cp and x.requires_grad:
            out = checkpoint(self.body, x, use_reentrant=False)
        else:
            out = self.body(x)
        return torch.relu(out + x)


def _resnet_like(with_cp, blocks=4, channels=8):
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, channels, 3, padding=1),
        *[_Block(channels, with_cp) for _ in range(blocks)],
    )


def test_checkpointing_lowers_the_step_peak():
    x = torch.randn(2, 3, 16, 16)
    peaks, saved = {}, {}
    for with_cp in (False, True):
        model = _resnet_like(with_cp)
        peaks[with_cp] = step_peak(model, lambda: model(x).mean())
        saved[with_cp] = saved_bytes(
            lambda: model(x).mean(), exclude=model.parameters()
        )
    assert peaks[True].peak_bytes < peaks[False].peak_bytes
    assert saved[True] < saved[False]
    # The peak holds what is saved and more: temporaries, gradients.
    for with_cp in (False, True):
        assert peaks[with_cp].peak_bytes > saved[with_cp]
    # Same parameters, same gradients left out.
    assert peaks[True].excluded_bytes == peaks[False].excluded_bytes


def test_step_peak_traced_to_a_module():
    """``trace_modules``: the same peak, the live set sums to it, and a
    backward allocation is traced to the module whose forward made it."""

    class Wide(nn.Module):
        def __init__(self):
            super().__init__()
            self.small = nn.Linear(8, 8)
            self.wide = nn.Linear(8, 4096)

        def forward(self, x):
            return self.wide(torch.relu(self.small(x))).square().sum()

    torch.manual_seed(0)
    model = Wide()
    x = torch.randn(64, 8)
    plain = step_peak(model, lambda: model(x))
    traced = step_peak(model, lambda: model(x), trace_modules=True)
    assert plain.peak_site is None and plain.live_at_peak is None
    assert traced.peak_bytes == plain.peak_bytes
    assert sum(t.nbytes for t in traced.live_at_peak) == traced.peak_bytes
    sizes = [t.nbytes for t in traced.live_at_peak]
    assert sizes == sorted(sizes, reverse=True)
    # The 64x4096 output of ``wide`` is made in its forward.
    assert any(
        (t.phase, t.module) == ('forward', 'wide')
        and t.nbytes == 64 * 4096 * 4
        for t in traced.live_at_peak
    )
    phases = {t.phase for t in traced.live_at_peak}
    assert phases <= {'forward', 'backward', 'recompute'}
    # The hooks are gone afterwards.
    assert not model.wide._forward_hooks and not model._forward_pre_hooks
