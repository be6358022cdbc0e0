"""Acceptance 4: what a stage saves for backward (distinct storages)."""

import torch

from benchmarks.memory import SavedTensorCounter
from mmrevnet.reversible import MomentumSequential


def _saved(module, x):
    with SavedTensorCounter(exclude=module.parameters()) as counter:
        out = module(x)
    assert out.requires_grad
    return counter


def _x(rh):
    return rh.data((2, 4, 6, 6), dtype=torch.float32)


def test_memory_saving_stage_is_constant_in_depth(rh):
    x = _x(rh)
    # 22 blocks: ResNet-101's longest stage, no stored state at gamma 0.9.
    deep, plain = rh.make_pair(rh.conv_bn_list(22, dtype=torch.float32), 0.9)
    shallow = MomentumSequential(rh.conv_bn_list(3, dtype=torch.float32), 0.9)
    deep_bytes = _saved(deep, x).bytes
    shallow_bytes = _saved(shallow, x).bytes
    plain_bytes = _saved(plain, x).bytes
    # x_T and v_T only.
    assert deep_bytes <= 3 * x.nbytes
    assert deep_bytes == 2 * x.nbytes
    assert deep_bytes <= 1.1 * shallow_bytes
    # Plain autograd keeps ~4 activations of x's size per block.
    assert plain_bytes >= 19 * deep_bytes


def test_stored_states_are_counted(rh):
    """gamma 0.5 over 35 blocks stores (x_t, v_t) every 3 blocks."""
    x = _x(rh)
    rev, _ = rh.make_pair(rh.conv_bn_list(35, dtype=torch.float32), 0.5)
    assert rev.stage.num_stored_states == 11
    counter = _saved(rev, x)
    assert counter.bytes == (2 + 2 * 11) * x.nbytes


def test_track_drift_keeps_the_stage_input(rh):
    x = _x(rh)
    rev, _ = rh.make_pair(
        rh.conv_bn_list(5, dtype=torch.float32), 0.9, track_drift=True
    )
    assert _saved(rev, x).bytes == 4 * x.nbytes


def test_with_cp_plain_path_keeps_block_inputs(rh):
    x = _x(rh)
    functions = rh.conv_bn_list(10, dtype=torch.float32)
    cp = MomentumSequential(functions, 0.9, memory_saving=False, with_cp=True)
    plain = MomentumSequential(functions, 0.9, memory_saving=False)
    cp_bytes = _saved(cp, x).bytes
    assert cp_bytes == 10 * x.nbytes
    assert _saved(plain, x).bytes > 3 * cp_bytes


def test_nothing_saved_under_no_grad(rh):
    rev, _ = rh.make_pair(rh.conv_bn_list(5, dtype=torch.float32), 0.9)
    with SavedTensorCounter(exclude=rev.parameters()) as counter:
        with torch.no_grad():
            rev(_x(rh))
    assert counter.bytes == 0
    assert counter.num_saved == 0
