"""The widest momentum bottlenecks compute conv3/norm3 by channel chunks
(``res_layer._ChunkedConvNorm``); the step must stay that of the plain
path: every gradient, output and BN buffer equal within rounding."""

import copy

import pytest
import torch
from model_helpers import randomize_norms

from mmrevnet.models import MRevNetV1c
from mmrevnet.models.utils import res_layer

# float64, the same operations per channel: rounding only, measured as
# max|a - b| / max|b| (the reconstruction of the memory-saving path carries
# rounding from large elements to small ones).
RTOL, ATOL = 1e-10, 1e-12


def _assert_close(got, expected, name=''):
    scale = expected.abs().max().clamp_min(1e-30)
    error = ((got - expected).abs().max() / scale).item()
    assert error <= RTOL, (name, error)


def _count_calls(monkeypatch, function):
    """A list that gets one entry per ``function.apply`` call."""
    calls = []
    original = function.apply
    monkeypatch.setattr(
        function, 'apply', lambda *a: calls.append(1) or original(*a)
    )
    return calls


def _step(model, x):
    torch.manual_seed(4)
    outs = model(x)
    weights = [
        torch.linspace(-1, 1, out.numel(), dtype=out.dtype).view_as(out)
        for out in outs
    ]
    loss = sum((out * w).sum() for out, w in zip(outs, weights))
    loss.backward()
    return outs


#: mmseg's D8 layout (dilated layer3 and layer4, as in PSPNet/DeepLabV3).
D8 = dict(strides=(1, 2, 1, 1), dilations=(1, 1, 2, 4))


@pytest.mark.parametrize(
    'memory_saving, with_cp, layout',
    [(True, False, {}), (False, True, {}), (True, False, D8)],
    ids=['memory_saving', 'with_cp', 'memory_saving-d8'],
)
def test_chunked_bottleneck_matches_unchunked(
    monkeypatch, memory_saving, with_cp, layout
):
    """Chunked against unchunked, both on the memory-saving path or both
    checkpointed (the two modes that recompute; their own agreement with
    the plain path is tested in test_mrevnet.py): conv3/norm3 of the
    momentum blocks and the transition's conv3/norm3 plus downsample by
    output chunks, and (D8) the dilated conv2's backward by input
    chunks."""
    # Chunks of 8 output channels: layer3 (256) and layer4 (512) of this
    # narrow ResNet-50 are chunked, as layer4 (2048) of the full width is;
    # input chunks of 16: the dilated conv2 of layer3 (64) and layer4
    # (128), as of the full width (256, 512) by 128.
    monkeypatch.setattr(res_layer, 'CHANNEL_CHUNK', 8)
    monkeypatch.setattr(res_layer, 'INPUT_CHUNK', 16)
    torch.manual_seed(0)
    kwargs = dict(
        depth=50,
        base_channels=16,
        stem_channels=16,
        memory_saving=memory_saving,
        with_cp=with_cp,
        **layout,
    )
    reference = MRevNetV1c(**kwargs).double()
    randomize_norms(reference, count=3)
    reference = reference.double()
    chunked = MRevNetV1c(**kwargs).double()
    chunked.load_state_dict(reference.state_dict())
    reference.train()
    chunked.train()
    x = torch.randn(2, 3, 32, 32, dtype=torch.float64)
    calls = {'output': [], 'input': []}
    for name, function in (
        ('output', res_layer._ChunkedConvNorm),
        ('input', res_layer._InputChunkedConv),
    ):
        original = function.apply
        monkeypatch.setattr(
            function,
            'apply',
            lambda *a, c=calls[name], f=original: c.append(a[1]) or f(*a),
        )
    with monkeypatch.context() as plain:
        plain.setattr(res_layer, '_chunkable', lambda block: False)
        plain.setattr(res_layer, 'INPUT_CHUNK', 10**9)
        outs_ref = _step(reference, x)
    assert not calls['output'] and not calls['input']
    outs = _step(chunked, x)
    # The chunked paths ran: momentum blocks and transitions (relu=True).
    assert False in calls['output'] and True in calls['output']
    assert bool(calls['input']) == bool(layout)
    for a, b in zip(outs_ref, outs):
        _assert_close(b, a)
    for (name, p), q in zip(
        reference.named_parameters(), chunked.parameters()
    ):
        _assert_close(q.grad, p.grad, name)
    for (name, b), c in zip(reference.named_buffers(), chunked.buffers()):
        if b.dtype.is_floating_point:
            _assert_close(c, b, name)
        else:  # num_batches_tracked: one step each
            assert torch.equal(c, b), name


def test_plain_stage_is_plain_autograd(monkeypatch):
    """``memory_saving=False`` without ``with_cp`` trains with plain
    autograd: no block computes conv3/norm3 by chunks (so it saves what a
    ResNet block saves)."""
    monkeypatch.setattr(res_layer, 'CHANNEL_CHUNK', 8)
    calls = _count_calls(monkeypatch, res_layer._ChunkedConvNorm)
    model = MRevNetV1c(
        depth=50, base_channels=16, stem_channels=16, memory_saving=False
    ).train()
    assert all(
        res_layer._chunkable(f) for f in model.layer4.functions
    )  # wide enough: only the mode keeps them plain
    _step(model, torch.randn(2, 3, 32, 32))
    assert not calls


def test_comparison_would_see_a_wrong_chunk(monkeypatch):
    """The comparison can fail: a chunk normalised with its neighbour's
    affine parameters is detected."""
    monkeypatch.setattr(res_layer, 'CHANNEL_CHUNK', 8)
    conv = torch.nn.Conv2d(4, 32, 1, bias=False).double()
    norm = randomize_norms(torch.nn.BatchNorm2d(32)).double().train()
    h = torch.randn(2, 4, 3, 3, dtype=torch.float64)
    expected = norm(conv(h)).detach()
    gamma = norm.weight.detach().roll(8)
    got = res_layer._ChunkedConvNorm.apply(
        ((conv, copy.deepcopy(norm)),), False, h, conv.weight, gamma, norm.bias
    )
    assert not torch.allclose(got, expected)
    got = res_layer._ChunkedConvNorm.apply(
        ((conv, copy.deepcopy(norm)),),
        False,
        h,
        conv.weight,
        norm.weight,
        norm.bias,
    )
    torch.testing.assert_close(got, expected, rtol=RTOL, atol=ATOL)


def _narrow_d8(**kwargs):
    torch.manual_seed(0)
    return MRevNetV1c(
        depth=50, base_channels=16, stem_channels=16, **D8, **kwargs
    ).train()


def test_no_grad_forward_before_backward_keeps_the_recomputation(
    monkeypatch,
):
    """A no-grad forward between a training forward and its backward (a
    validation step, a logging hook) does not change how the checkpointed
    transition is recomputed: same gradients as without it."""
    monkeypatch.setattr(res_layer, 'CHANNEL_CHUNK', 8)
    monkeypatch.setattr(res_layer, 'INPUT_CHUNK', 16)
    model = _narrow_d8().double()
    x = torch.randn(2, 3, 32, 32, dtype=torch.float64)

    def grads(no_grad_forward_between):
        model.zero_grad(set_to_none=True)
        loss = sum(out.sum() for out in model(x))
        if no_grad_forward_between:
            with torch.no_grad():
                model(x)
        loss.backward()
        return [p.grad.clone() for p in model.parameters()]

    state = copy.deepcopy(model.state_dict())
    expected = grads(False)
    model.load_state_dict(state)
    for got, want in zip(grads(True), expected):
        _assert_close(got, want)


def test_dilated_input_chunks_under_bf16_autocast(monkeypatch):
    """The input-chunked backward computes in the dtype autocast gave the
    forward's convolution (bf16), as the unchunked one does."""
    monkeypatch.setattr(res_layer, 'INPUT_CHUNK', 16)
    model = _narrow_d8()
    x = torch.randn(2, 3, 32, 32)
    state = copy.deepcopy(model.state_dict())
    calls = _count_calls(monkeypatch, res_layer._InputChunkedConv)

    def grads():
        model.load_state_dict(state)
        model.zero_grad(set_to_none=True)
        with torch.autocast('cpu', dtype=torch.bfloat16):
            loss = sum(out.float().sum() for out in model(x))
        loss.backward()
        return [p.grad for p in model.parameters()]

    chunked = grads()
    assert calls
    with monkeypatch.context() as plain:
        plain.setattr(res_layer, 'INPUT_CHUNK', 10**9)
        unchunked = grads()
    for got, want in zip(chunked, unchunked):
        assert got.dtype == want.dtype == torch.float32
        error = ((got - want).norm() / want.norm().clamp_min(1e-30)).item()
        assert error <= 2e-2, error
