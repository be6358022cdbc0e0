"""SavedTensorCounter: bytes of distinct storages saved for backward."""

import copy
import gc
import weakref

import pytest
import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from mmrevnet.analysis.memory import (
    SavedTensorCounter,
    cuda_peak_memory,
    saved_bytes,
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
