"""The block residual ``relu(branch + x) - x`` against autograd's."""

import pytest
import torch

from mmrevnet.models import MRevNetV1c
from mmrevnet.models.utils.res_layer import (
    MomentumBottleneck,
    _BlockResidual,
    block_residual,
)


def _autograd_residual(branch, x):
    return torch.relu(branch + x) - x


def _inputs(dtype, branch_dtype=None):
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(2, 3, 5, 7, generator=generator, dtype=dtype)
    branch = torch.randn(2, 3, 5, 7, generator=generator, dtype=dtype)
    branch = branch.to(branch_dtype or dtype)
    # Ties: branch + x exactly 0, where ReLU's derivative is taken as 0
    # (x rounded first, so that -x is exact in a 16-bit branch too).
    x[0, 0] = x[0, 0].to(branch.dtype).to(dtype)
    branch[0, 0] = -x[0, 0]
    # Non-finite sums: inf - inf and a NaN operand, where ReLU's
    # derivative passes the gradient (its result is not <= 0).
    x[0, 1, 0, :2] = torch.tensor([float('inf'), 1.0])
    branch[0, 1, 0, :2] = torch.tensor([float('-inf'), float('nan')])
    # Non-finite upstream gradients where the ReLU is on and off (the
    # branch shifted away from -x so that neither side is a tie).
    branch[1, 2, 0, :4] = (
        torch.tensor([10.0, -10.0, 10.0, -10.0]) - x[1, 2, 0, :4]
    ).to(branch.dtype)
    grad = torch.randn(2, 3, 5, 7, generator=generator, dtype=dtype)
    nan, inf = float('nan'), float('inf')
    grad[1, 2, 0, :4] = torch.tensor([nan, nan, inf, -inf])
    return branch, x, grad


def _grads(function, branch, x, grad):
    branch = branch.detach().requires_grad_()
    x = x.detach().requires_grad_()
    # A non-leaf, as a norm's output is, so that it may be written into.
    out = function(branch * 1, x)
    out.backward(grad)
    return out.detach(), branch.grad, x.grad


def _in_place(branch, x):
    return block_residual(branch, x, in_place=True)


@pytest.mark.parametrize(
    'dtype, branch_dtype',
    [
        (torch.float32, None),
        (torch.float64, None),
        (torch.bfloat16, None),
        (torch.float16, None),
        # Under autocast a branch may be 16-bit while the position is fp32.
        (torch.float32, torch.bfloat16),
    ],
)
@pytest.mark.parametrize('function', [block_residual, _in_place])
def test_matches_autograd_bitwise(dtype, branch_dtype, function):
    # Tolerance 0: the forward and the backward compute the operations
    # autograd's derivatives of add, relu and sub compute, in that order.
    branch, x, grad = _inputs(dtype, branch_dtype)
    ours = _grads(function, branch, x, grad)
    reference = _grads(_autograd_residual, branch, x, grad)
    for mine, theirs in zip(ours, reference):
        assert mine.dtype == theirs.dtype
        torch.testing.assert_close(
            mine, theirs, rtol=0, atol=0, equal_nan=True
        )
    # The non-finite entries were reached on both sides of the ReLU, and
    # a NaN sum passes the gradient to the branch as autograd's ReLU does.
    assert torch.isnan(ours[1][1, 2, 0, 0])
    assert ours[1][1, 2, 0, 1] == 0
    assert torch.isnan(ours[2][1, 2, 0, 1])
    assert torch.equal(ours[1][0, 1, 0, :2], grad[0, 1, 0, :2].to(ours[1]))


def test_without_grad_is_the_same_computation():
    branch, x, _ = _inputs(torch.float32)
    with torch.no_grad():
        out = block_residual(branch, x)
    torch.testing.assert_close(
        out, _autograd_residual(branch, x), rtol=0, atol=0, equal_nan=True
    )


def test_in_place_writes_into_the_branch_only_where_it_may():
    branch, x, _ = _inputs(torch.float32)
    fresh = branch * 1
    assert block_residual(fresh, x, in_place=True) is fresh
    # The same under grad (the Function marks the branch dirty).
    fresh = branch.clone().requires_grad_() * 1
    assert block_residual(fresh, x, in_place=True) is fresh
    refused = {
        # A 16-bit branch would round the fp32 sum.
        'bf16 branch': (branch.to(torch.bfloat16), x),
        # A leaf that requires grad is never written into.
        'leaf': (branch.clone().requires_grad_(), x),
        # A view's base may be read by someone else.
        'view': (branch.clone()[:, :2], x[:, :2]),
        # x broadcast over a larger branch: the result has x's shape.
        'broadcast': (branch.clone()[:1], x),
        # The branch is x itself: writing would change x before use.
        'same memory': (x.clone(), None),
    }
    for name, (candidate, other) in refused.items():
        other = candidate if other is None else other
        before = candidate.detach().clone()
        expected = torch.relu(before + other.detach()) - other.detach()
        out = block_residual(candidate, other, in_place=True)
        assert out is not candidate, name
        torch.testing.assert_close(
            candidate.detach(), before, rtol=0, atol=0, equal_nan=True
        )
        torch.testing.assert_close(
            out.detach(), expected, rtol=0, atol=0, equal_nan=True
        )


def test_double_backward_matches_numerical():
    # Higher-order gradients go through the plain path (docs/bad_input.md
    # recommends memory_saving=False for them): the backward must itself
    # be differentiable. Away from the ReLU's kink, in fp64.
    generator = torch.Generator().manual_seed(1)
    x = torch.randn(2, 3, 4, 4, generator=generator, dtype=torch.float64)
    branch = torch.randn(2, 3, 4, 4, generator=generator, dtype=torch.float64)
    branch = branch + 0.1 * (branch + x).sign()
    x.requires_grad_()
    branch.requires_grad_()
    assert torch.autograd.gradgradcheck(
        lambda b, t: block_residual(b * 1, t, in_place=True), (branch, x)
    )


def test_in_place_on_a_saved_output_fails_loudly():
    # A producer that saved its output (exp) would read the overwritten
    # memory in its backward: autograd's version check refuses it.
    branch, x, _ = _inputs(torch.float32)
    leaf = branch.requires_grad_()
    out = block_residual(torch.exp(leaf), x, in_place=True)
    with pytest.raises(RuntimeError, match='inplace operation'):
        out.sum().backward()


def _saved_bytes(function, *args):
    sizes = []

    def pack(tensor):
        sizes.append(tensor.numel() * tensor.element_size())
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        function(*args)
    return sum(sizes)


def test_saves_a_bool_mask_only():
    branch, x, _ = _inputs(torch.float32)
    branch.requires_grad_()
    assert _saved_bytes(_BlockResidual.apply, branch, x, False) == x.numel()
    # autograd's composition saves the ReLU's fp32 output instead.
    assert _saved_bytes(_autograd_residual, branch, x) == 4 * x.numel()


def test_momentum_block_saves_its_branch_and_a_mask():
    # What keeping a block costs beyond a ResNet block's branch: one bool
    # per element of its output, not a full-precision map.
    block = MomentumBottleneck(
        residual_fn='block', inplanes=16, planes=4, style='pytorch'
    )
    block.train()
    x = torch.randn(2, 16, 6, 6, requires_grad=True)
    params = {p.data_ptr() for p in block.parameters()}

    def saved(function):
        storages = {}

        def pack(tensor):
            key = tensor.untyped_storage().data_ptr()
            if key not in params:
                storages[key] = tensor.untyped_storage().nbytes()
            return tensor

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            function(x)
        return sum(storages.values())

    assert saved(block) == saved(block._branch) + x.numel()
    # relu(branch + x) - x in autograd's operations saves the fp32 map.
    composed = saved(lambda t: _autograd_residual(block._branch(t), t))
    assert composed == saved(block._branch) + 4 * x.numel()


def _graph_nodes(tensor):
    names, stack, seen = set(), [tensor.grad_fn], set()
    while stack:
        node = stack.pop()
        if node is None or node in seen:
            continue
        seen.add(node)
        names.add(type(node).__name__)
        stack.extend(next_node for next_node, _ in node.next_functions)
    return names


def test_kept_blocks_keep_plain_autograd():
    # Only reversed blocks compute conv3/norm3 by chunks: a chunked kept
    # block would recompute them in the backward, a cost a memory plan
    # that keeps it does not expect. layer4 of a ResNet-50 (2048 wide)
    # is wide enough to chunk.
    # Backbone plans count the transition block: 2 in layer4 keeps it and
    # the first momentum block; the second is reversed.
    backbone = MRevNetV1c(
        depth=50, residual_fn='block', stored_blocks=(0, 0, 0, 2)
    ).train()
    layer4 = backbone.layer4
    outputs = {}

    def record(module, args, output):
        outputs[module] = output

    for function in layer4.functions:
        function.register_forward_hook(record)
    backbone(torch.randn(2, 3, 32, 32))
    kept, reversed_ = layer4.functions
    assert (kept.recomputed, reversed_.recomputed) == (False, True)
    assert all(f.recomputed for f in backbone.layer3.functions)
    kept_nodes = _graph_nodes(outputs[kept])
    assert '_BlockResidualBackward' in kept_nodes
    assert '_ChunkedConvNormBackward' not in kept_nodes
    # The same block, recomputed, chunks conv3/norm3 (a custom Function).
    with torch.enable_grad():
        chunked = reversed_(outputs[kept].detach().requires_grad_())
    assert '_ChunkedConvNormBackward' in _graph_nodes(chunked)
