"""What a training step holds: the CPU allocator's replayed peak, the
optimizer state a first step allocates, the whole step peak."""

import torch
from torch import nn

from mmrevnet.engine.step_memory import (
    PhaseMarks,
    cpu_phase_peaks,
    cpu_step_peak,
    optimizer_state,
    optimizer_state_bytes,
    step_peak,
    step_phase_peaks,
    storage_bytes,
)

MIB = 2**20


def test_cpu_step_peak_replays_the_allocator():
    def run():
        a = torch.empty(MIB, dtype=torch.uint8)
        b = torch.empty(2 * MIB, dtype=torch.uint8)
        del a, b
        torch.empty(MIB, dtype=torch.uint8)

    assert cpu_step_peak(run) == 3 * MIB


def test_optimizer_state_bytes():
    params = [torch.nn.Parameter(torch.zeros(10))]  # 40 bytes
    assert optimizer_state_bytes(torch.optim.SGD(params, lr=1)) == 0
    sgd = torch.optim.SGD(params, lr=1, momentum=0.9)
    assert optimizer_state_bytes(sgd) == 40
    assert optimizer_state_bytes(torch.optim.AdamW(params)) == 80
    params[0].grad = torch.ones(10)
    sgd.step()
    assert optimizer_state_bytes(sgd) == 0  # allocated already


def test_step_peak_counts_what_the_step_holds_above_the_model():
    model = nn.Linear(256, 256)  # 256 KiB of weight, 1 KiB of bias
    x = torch.zeros(64, 256)

    def run():
        model(x).sum().backward()

    held = storage_bytes(model.parameters())
    peak = step_peak(model, run, torch.device('cpu'))
    # The gradients (as large as the parameters) are allocated in the
    # step, so the peak holds the parameters twice at least.
    assert peak >= 2 * held
    assert peak < 2 * held + MIB
    assert model.weight.grad is None  # set to None again, as zero_grad


def test_storage_bytes_counts_a_shared_storage_once():
    base = torch.zeros(1024)
    assert storage_bytes([base, base[:10], base.view(32, 32)]) == 4096


def test_optimizer_state_lists_the_tensors_held():
    params = [nn.Parameter(torch.zeros(10))]
    sgd = torch.optim.SGD(params, lr=1, momentum=0.9)
    assert optimizer_state(sgd) == [] and optimizer_state(None) == []
    params[0].grad = torch.ones(10)
    sgd.step()
    assert [t.numel() for t in optimizer_state(sgd)] == [10]


def test_marks_split_the_peak_into_phases():
    marks = PhaseMarks(torch.device('cpu'))

    def run():
        a = torch.empty(2 * MIB, dtype=torch.uint8)
        del a
        marks.mark()
        b = torch.empty(MIB, dtype=torch.uint8)
        c = torch.empty(MIB, dtype=torch.uint8)
        marks.mark()
        del b, c

    assert cpu_phase_peaks(run) == (2 * MIB, 2 * MIB, 2 * MIB)

    def grows():
        kept = torch.empty(MIB, dtype=torch.uint8)
        marks.mark()
        more = torch.empty(3 * MIB, dtype=torch.uint8)
        del kept, more

    # A phase starts from what is held at its mark.
    assert cpu_phase_peaks(grows) == (MIB, 4 * MIB)
    assert cpu_step_peak(grows) == 4 * MIB


def test_marks_set_by_backward_hooks_end_phases_in_the_backward():
    model = nn.Sequential(nn.Linear(64, 64), nn.Linear(64, 64))
    marks = PhaseMarks(torch.device('cpu'))
    x = torch.zeros(8, 64)

    def run():
        hidden = model[0](x)
        hidden.register_hook(lambda grad: marks.mark())
        model[1](hidden).sum().backward()

    peaks = step_phase_peaks(model, run, torch.device('cpu'), marks=marks)
    assert len(peaks) == 2
    assert max(peaks) == step_peak(model, run, torch.device('cpu'))
