"""Memory-saving heads: exactness against the plain heads, and memory.

Every comparison runs the same weights twice, once with mmseg's plain heads
and once with memory-saving heads, from the same RNG seed, in float64,
train mode with dropout on, and compares element by element.
"""

import copy

import pytest
import torch
from mmengine.hub import get_config
from mmengine.registry import init_default_scope
from mmengine.structures import PixelData
from mmseg.registry import MODELS
from mmseg.structures import SegDataSample
from torch.nn.modules.batchnorm import _BatchNorm

from benchmarks.memory import SavedTensorCounter
from mmrevnet.models.memory_saving import (
    disable_memory_saving,
    enable_memory_saving,
    is_memory_saving,
    recompute_units,
)
from mmrevnet.models.segmentors import (
    MRevNetEncoderDecoder,
    enable_memory_saving_heads,
)
from tools.cli.config import sync_bn_to_bn

# float64 gradients of the same computation, recomputed: rounding only.
RTOL, ATOL = 1e-10, 1e-12
NUM_CLASSES = 5
SIZE = (32, 48)

_D8 = dict(
    dilations=(1, 1, 2, 4), strides=(1, 2, 1, 1), contract_dilation=True
)
_PLAIN = dict(dilations=(1, 1, 1, 1), strides=(1, 2, 2, 2))
BASES = {
    'pspnet': ('mmseg::_base_/models/pspnet_r50-d8.py', _D8),
    'deeplabv3': ('mmseg::_base_/models/deeplabv3_r50-d8.py', _D8),
    'upernet': ('mmseg::_base_/models/upernet_r50.py', _PLAIN),
}
CHANNELS = [16, 32, 64, 128]  # MRevNetV1c-18 with base_channels=16


def _model_cfg(name, **segmentor):
    base, layout = BASES[name]
    cfg = copy.deepcopy(get_config(base).model.to_dict())
    cfg.pop('data_preprocessor', None)
    cfg['pretrained'] = None
    cfg['backbone'] = dict(
        type='MRevNetV1c',
        depth=18,
        stem_channels=16,
        base_channels=16,
        norm_cfg=dict(type='BN', requires_grad=True),
        **layout,
    )
    sync_bn_to_bn(cfg)
    head = cfg['decode_head']
    head['in_channels'] = (
        CHANNELS if head['type'] == 'UPerHead' else CHANNELS[-1]
    )
    head['channels'] = 16
    head['num_classes'] = NUM_CLASSES
    aux = cfg['auxiliary_head']
    aux.update(in_channels=CHANNELS[2], channels=8, num_classes=NUM_CLASSES)
    cfg.update(segmentor)
    return cfg


def _build(name, **segmentor):
    init_default_scope('mmseg')
    torch.manual_seed(0)
    model = MODELS.build(_model_cfg(name, **segmentor)).double()
    model.train()
    return model


def _batch(seed=1):
    generator = torch.Generator().manual_seed(seed)
    inputs = torch.randn(2, 3, *SIZE, generator=generator).double()
    samples = []
    for _ in range(2):
        sample = SegDataSample(metainfo=dict(img_shape=SIZE, ori_shape=SIZE))
        labels = torch.randint(0, NUM_CLASSES, (1, *SIZE), generator=generator)
        sample.gt_sem_seg = PixelData(data=labels)
        samples.append(sample)
    return inputs, samples


def _step(model, seed=123):
    """One loss + backward from a fixed RNG seed; returns the loss."""
    inputs, samples = _batch()
    model.zero_grad(set_to_none=True)
    torch.manual_seed(seed)
    losses = model.loss(inputs, samples)
    loss = sum(v for k, v in losses.items() if 'loss' in k)
    loss.backward()
    return loss.detach(), torch.get_rng_state()


def _assert_same(plain, saving):
    for (name, p), (_, q) in zip(
        plain.named_parameters(), saving.named_parameters()
    ):
        assert p.grad is not None and q.grad is not None, name
        torch.testing.assert_close(
            q.grad, p.grad, rtol=RTOL, atol=ATOL, msg=name
        )
    for (name, b), (_, c) in zip(
        plain.named_buffers(), saving.named_buffers()
    ):
        torch.testing.assert_close(c, b, rtol=RTOL, atol=ATOL, msg=name)


@pytest.mark.parametrize('granularity', ['head', 'module'])
@pytest.mark.parametrize('name', ['pspnet', 'deeplabv3', 'upernet'])
def test_segmentor_matches_plain_heads(name, granularity):
    plain = _build(name)
    saving = copy.deepcopy(plain)
    enable_memory_saving_heads(saving, granularity)
    assert is_memory_saving(saving.decode_head)
    assert not is_memory_saving(plain.decode_head)
    # Dropout is on in both heads (mmseg's Dropout2d(0.1)).
    assert plain.decode_head.dropout.p > 0 and plain.decode_head.training
    for _ in range(2):  # second step: BN buffers after two updates
        loss_plain, rng_plain = _step(plain)
        loss_saving, rng_saving = _step(saving)
        torch.testing.assert_close(
            loss_saving, loss_plain, rtol=RTOL, atol=ATOL
        )
        # The global generator ends where the plain step leaves it.
        assert torch.equal(rng_saving, rng_plain)
        _assert_same(plain, saving)
    # BN statistics counted once per step, not twice.
    for module in saving.modules():
        if isinstance(module, _BatchNorm):
            assert int(module.num_batches_tracked) == 2


def test_comparison_detects_a_different_dropout_mask():
    """The comparison can fail: another seed (another mask) differs."""
    plain = _build('pspnet')
    saving = copy.deepcopy(plain)
    enable_memory_saving_heads(saving)
    _step(plain, seed=123)
    _step(saving, seed=124)
    with pytest.raises(AssertionError):
        _assert_same(plain, saving)


def test_recompute_without_frozen_bn_would_be_detected(monkeypatch):
    """Without frozen buffers, the BN statistics would move twice."""
    import contextlib

    from mmrevnet.reversible import state

    monkeypatch.setattr(
        state,
        'frozen_norm_buffers',
        lambda modules: contextlib.nullcontext(),
    )
    plain = _build('pspnet')
    saving = copy.deepcopy(plain)
    enable_memory_saving_heads(saving)
    _step(plain)
    _step(saving)
    with pytest.raises(AssertionError):
        _assert_same(plain, saving)


def test_registered_segmentor_option_and_bad_value():
    model = _build('upernet', type='MRevNetEncoderDecoder')
    assert isinstance(model, MRevNetEncoderDecoder)
    assert model.memory_saving_heads == 'head'
    assert is_memory_saving(model.decode_head)
    assert is_memory_saving(model.auxiliary_head)
    # Same state-dict keys as mmseg's EncoderDecoder.
    assert list(model.state_dict()) == list(_build('upernet').state_dict())
    plain = _build('upernet', type='MRevNetEncoderDecoder')
    disable_memory_saving(plain.decode_head)
    disable_memory_saving(plain.auxiliary_head)
    assert not is_memory_saving(plain)
    with pytest.raises(ValueError, match='memory_saving_heads.*head'):
        _build('upernet', type='MRevNetEncoderDecoder', memory_saving_heads=1)
    off = _build(
        'upernet',
        type='MRevNetEncoderDecoder',
        **{'memory_saving_heads': None},
    )
    assert not is_memory_saving(off)


def test_bad_granularity_and_double_enable():
    model = _build('pspnet')
    with pytest.raises(ValueError, match="granularity.*'head', 'module'"):
        enable_memory_saving(model.decode_head, 'layer')
    enable_memory_saving(model.decode_head)
    with pytest.raises(ValueError, match='already enabled'):
        enable_memory_saving(model.decode_head, 'module')


def test_module_units_of_uperhead():
    head = _build('upernet').decode_head
    units = recompute_units(head, 'module')
    expected = (
        [head.psp_modules, head.bottleneck]
        + list(head.lateral_convs)
        + list(head.fpn_convs)
        + [head.fpn_bottleneck, head.conv_seg]
    )
    assert sorted(map(id, units)) == sorted(map(id, expected))


def _saved(model, fn):
    with SavedTensorCounter(exclude=model.parameters()) as counter:
        out = fn()
    del out
    return counter


@pytest.mark.parametrize('name', ['pspnet', 'deeplabv3', 'upernet'])
def test_whole_head_stores_nothing_beyond_the_backbone(name):
    plain = _build(name)
    saving = copy.deepcopy(plain)
    enable_memory_saving_heads(saving)
    inputs, samples = _batch()
    backbone = _saved(saving, lambda: saving.extract_feat(inputs))
    everything = _saved(saving, lambda: saving.loss(inputs, samples))
    assert (
        everything.bytes
        < _saved(plain, lambda: plain.loss(inputs, samples)).bytes
    )
    # Beyond the backbone's storages, only the losses' tensors remain:
    # per head the log-softmax of the logits upsampled to the labels, the
    # labels (stacked by each head) and a scalar; no head feature.
    extra = everything.storages[len(backbone.storages) :]
    assert [
        r.shape for r in everything.storages[: len(backbone.storages)]
    ] == [r.shape for r in backbone.storages]
    loss_shapes = {
        (2, NUM_CLASSES, *SIZE),
        (2, *SIZE),
        (2, 1, *SIZE),
        (),
    }
    assert {r.shape for r in extra} == loss_shapes
    assert len(extra) == 2 * 4  # two heads


def _saved_outside_checkpoints(fn) -> int:
    """Tensors the graph of ``fn()`` saves for backward, leaving out those
    a checkpoint recomputes (its own hooks take them)."""
    count = [0]

    def pack(tensor):
        count[0] += 1
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        fn()
    return count[0]


def test_eval_and_no_grad_run_the_plain_head():
    model = _build('pspnet')
    enable_memory_saving_heads(model)
    feats = [
        torch.randn(2, c, 4, 6, dtype=torch.float64, requires_grad=True)
        for c in CHANNELS
    ]
    head = model.decode_head
    assert _saved_outside_checkpoints(lambda: head(feats)) == 0
    head.eval()
    assert _saved_outside_checkpoints(lambda: head(feats)) > 10
    head.train()
    with torch.no_grad():
        assert head(feats).grad_fn is None


def test_autograd_grad_on_parameters_with_frozen_inputs():
    """Inputs that do not require grad: parameter grads still flow, and
    ``torch.autograd.grad`` works (parameters are Function arguments)."""
    model = _build('upernet')
    plain = copy.deepcopy(model.decode_head)
    head = model.decode_head
    enable_memory_saving(head)
    feats = [
        torch.randn(2, c, 8 >> i, 12 >> i, dtype=torch.float64)
        for i, c in enumerate(CHANNELS)
    ]
    results = []
    for module in (plain, head):
        torch.manual_seed(5)
        out = module(feats)
        results.append(
            torch.autograd.grad(out.square().sum(), list(module.parameters()))
        )
    for a, b in zip(*results):
        torch.testing.assert_close(b, a, rtol=RTOL, atol=ATOL)
    assert all(p.grad is None for p in head.parameters())


class _DictHead(torch.nn.Module):
    """Takes tensors inside a dict and a list, returns a dict."""

    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 4, 3, padding=1)
        self.bn = torch.nn.BatchNorm2d(4)
        self.drop = torch.nn.Dropout(0.5)

    def forward(self, feats, scale=1.0):
        x = feats['a'] + feats['pair'][1] * scale
        y = self.drop(torch.relu(self.bn(self.conv(x))))
        return dict(out=y, aux=[y.mean()])


def test_nested_inputs_and_outputs():
    torch.manual_seed(0)
    plain = _DictHead().double()
    saving = copy.deepcopy(plain)
    enable_memory_saving(saving)

    def run(module):
        a = torch.randn(2, 3, 5, 5, dtype=torch.float64, requires_grad=True)
        b = torch.randn(2, 3, 5, 5, dtype=torch.float64, requires_grad=True)
        torch.manual_seed(9)
        out = module(dict(a=a, pair=[None, b]), scale=0.5)
        (out['out'].sum() * 2 + out['aux'][0]).backward()
        return [a.grad, b.grad] + [p.grad for p in module.parameters()]

    torch.manual_seed(1)
    expected = run(plain)
    torch.manual_seed(1)
    got = run(saving)
    for a, b in zip(expected, got):
        torch.testing.assert_close(b, a, rtol=RTOL, atol=ATOL)
    torch.testing.assert_close(saving.bn.running_mean, plain.bn.running_mean)
    assert int(saving.bn.num_batches_tracked) == 1


def test_recomputed_head_leaves_no_reference_cycle_to_its_inputs():
    """Its inputs are freed by reference counting once the step is over
    (a reference cycle would keep a model's feature maps alive until the
    cyclic garbage collector runs, and the stage before the head could not
    reuse its output's memory in its backward)."""
    import gc
    import weakref

    head = _DictHead().double()
    enable_memory_saving(head)
    a = torch.randn(2, 3, 5, 5, dtype=torch.float64, requires_grad=True)
    b = torch.randn(2, 3, 5, 5, dtype=torch.float64, requires_grad=True)

    def step():
        feature = a * 2
        alive = weakref.ref(feature)
        out = head(dict(a=feature, pair=[None, b]), scale=0.5)
        del feature
        (out['out'].sum() + out['aux'][0]).backward()
        return alive

    # The first memory-saving call imports torch's compiler stack (see
    # eager_under_compile), whose import leaves cycles through the frames
    # of that call; the steps after it are what training repeats.
    step()
    gc.collect()
    enabled = gc.isenabled()
    gc.disable()
    try:
        assert step()() is None
    finally:
        if enabled:
            gc.enable()


def test_bf16_autocast_is_reentered():
    torch.manual_seed(0)
    plain = _DictHead()
    saving = copy.deepcopy(plain)
    enable_memory_saving(saving)
    grads = []
    x = torch.randn(2, 3, 5, 5)
    for module in (plain, saving):
        torch.manual_seed(3)
        with torch.autocast('cpu', dtype=torch.bfloat16):
            out = module(dict(a=x, pair=[x, x]))['out']
        assert out.dtype == torch.bfloat16
        out.float().sum().backward()
        grads.append(module.conv.weight.grad)
    # The recomputation runs in bf16 like the forward: equal, not close.
    assert torch.equal(grads[1], grads[0])


def test_ddp_marks_every_parameter_ready_once():
    """DDP (gloo, one process, ``find_unused_parameters=False``): two
    steps with memory-saving heads give the plain model's gradients; a
    parameter marked ready twice, or never, would raise in the reducer."""
    import socket

    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel

    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(('127.0.0.1', 0))
        port = sock.getsockname()[1]
    plain = _build('pspnet')
    saving = copy.deepcopy(plain)
    enable_memory_saving_heads(saving)
    dist.init_process_group(
        'gloo',
        init_method=f'tcp://127.0.0.1:{port}',
        rank=0,
        world_size=1,
    )
    try:
        wrapped = DistributedDataParallel(saving)
        for _ in range(2):
            inputs, samples = _batch()
            for model in (plain, wrapped):
                model.zero_grad(set_to_none=True)
                torch.manual_seed(7)
                # Through DDP's forward, as mmengine's train_step does, so
                # that the reducer expects every parameter's gradient.
                losses = model(inputs, samples, mode='loss')
                sum(v for k, v in losses.items() if 'loss' in k).backward()
            _assert_same(plain, saving)
    finally:
        dist.destroy_process_group()


def test_benchmark_variants_enable_the_heads():
    from benchmarks.benchmark import (
        HEAD_VARIANTS,
        build_benchmark_model,
    )

    for variant, (_, granularity) in HEAD_VARIANTS.items():
        if granularity not in ('head', 'module', 'segmentor'):
            continue
        model = build_benchmark_model(variant, 50, 'upernet')
        assert type(model.backbone).__name__ == 'MRevNetV1c'
        assert is_memory_saving(model.decode_head)
        assert is_memory_saving(model.auxiliary_head)
        head_forward = model.decode_head.__dict__.get('forward')
        assert (head_forward is not None) == (granularity != 'module')
        assert isinstance(model, MRevNetEncoderDecoder) == (
            granularity == 'segmentor'
        )


# -- concat-free bottlenecks and banded losses (the default) ---------------
@pytest.mark.parametrize('name', ['pspnet', 'deeplabv3'])
def test_default_segmentor_with_bottlenecks_matches_plain(monkeypatch, name):
    """A D8 bottleneck backbone, memory saving on (``MRevNetEncoderDecoder``
    with its defaults) against off (mmseg's ``EncoderDecoder``, plain
    autograd), same weights, with chunk widths small enough that every
    chunked path runs: momentum and transition bottlenecks by output
    chunks, dilated conv2 and dilated concat-free convolutions (ASPP) by
    input chunks. Loss, every gradient and BN buffer, dropout on."""
    from mmrevnet.models.memory_saving import concat_conv
    from mmrevnet.models.utils import res_layer

    monkeypatch.setattr(res_layer, 'CHANNEL_CHUNK', 32)
    monkeypatch.setattr(res_layer, 'INPUT_CHUNK', 16)
    monkeypatch.setattr(concat_conv, 'DILATED_CPU_SLICE_CHANNELS', 16)
    backbone = dict(depth=50, strides=(1, 2, 1, 1), dilations=(1, 1, 2, 4))
    channels = [64, 128, 256, 512]

    def build(memory_saving, **segmentor):
        cfg = _model_cfg(name, **segmentor)
        cfg['backbone'].update(backbone, memory_saving=memory_saving)
        cfg['decode_head']['in_channels'] = channels[-1]
        cfg['auxiliary_head']['in_channels'] = channels[2]
        init_default_scope('mmseg')
        torch.manual_seed(0)
        return MODELS.build(cfg).double().train()

    plain = build(False)
    saving = build(True, type='MRevNetEncoderDecoder')
    saving.load_state_dict(plain.state_dict())
    calls = []
    for function in (res_layer._InputChunkedConv, res_layer._ChunkedConvNorm):
        original = function.apply
        monkeypatch.setattr(
            function,
            'apply',
            lambda *a, f=original, n=function.__name__: (
                calls.append(n) or f(*a)
            ),
        )
    widths = []
    slices = concat_conv._slices
    monkeypatch.setattr(
        concat_conv,
        '_slices',
        lambda *a: widths.append(a[2] if len(a) > 2 else None) or slices(*a),
    )
    results = []
    for model in (plain, saving):
        results.append(_step(model)[0])
    assert {'_InputChunkedConv', '_ChunkedConvNorm'} <= set(calls)
    # ASPP's dilated branches: their CPU backward by 16-channel slices.
    assert (16 in widths) == (name == 'deeplabv3')
    torch.testing.assert_close(results[1], results[0], rtol=RTOL, atol=ATOL)
    _assert_same(plain, saving)


@pytest.mark.parametrize('name', ['pspnet', 'deeplabv3', 'upernet'])
def test_default_segmentor_matches_mmseg(name):
    """``MRevNetEncoderDecoder`` with its defaults (recomputed heads,
    concat-free bottlenecks, banded losses) against mmseg's own
    ``EncoderDecoder`` with the same weights: loss, accuracy, every
    gradient and BN buffer, two steps, dropout on."""
    plain = _build(name)
    saving = _build(name, type='MRevNetEncoderDecoder')
    saving.load_state_dict(plain.state_dict())
    assert type(plain).__name__ == 'EncoderDecoder'
    assert 'loss_by_feat' in saving.decode_head.__dict__
    assert 'loss_by_feat' in saving.auxiliary_head.__dict__
    assert '_forward_feature' in saving.decode_head.__dict__
    for _ in range(2):
        inputs, samples = _batch()
        results = []
        for model in (plain, saving):
            model.zero_grad(set_to_none=True)
            torch.manual_seed(123)
            losses = model.loss(inputs, samples)
            sum(v for k, v in losses.items() if 'loss' in k).backward()
            results.append(losses)
        assert list(results[0]) == list(results[1])
        for key in results[0]:
            torch.testing.assert_close(
                results[1][key], results[0][key], rtol=RTOL, atol=ATOL
            )
        _assert_same(plain, saving)
    for module in saving.modules():
        if isinstance(module, _BatchNorm):
            assert int(module.num_batches_tracked) == 2


@pytest.mark.parametrize('memory_saving_heads', [None, 'module'])
def test_uperhead_concat_free_matches_mmseg_without_head_recompute(
    memory_saving_heads,
):
    """UPerNet's concat-free head where its laterals are not recomputed
    units of a recomputed head (their outputs are saved, so the top-down
    sums are not taken in place) or are units of their own: one step
    against mmseg's ``EncoderDecoder``."""
    plain = _build('upernet')
    saving = _build(
        'upernet',
        type='MRevNetEncoderDecoder',
        memory_saving_heads=memory_saving_heads,
    )
    saving.load_state_dict(plain.state_dict())
    head = saving.decode_head
    assert is_memory_saving(head.lateral_convs[0]) == (
        memory_saving_heads == 'module'
    )
    inputs, samples = _batch()
    losses = []
    for model in (plain, saving):
        model.zero_grad(set_to_none=True)
        torch.manual_seed(123)
        loss = model.loss(inputs, samples)
        sum(v for k, v in loss.items() if 'loss' in k).backward()
        losses.append(loss)
    for key in losses[0]:
        torch.testing.assert_close(
            losses[1][key], losses[0][key], rtol=RTOL, atol=ATOL
        )
    _assert_same(plain, saving)


def test_uperhead_nested_units_are_the_laterals():
    """In the default segmentor the lateral convolutions are recomputed
    inside the head's recomputation, the FPN output convolutions not."""
    head = _build('upernet', type='MRevNetEncoderDecoder').decode_head
    assert all(is_memory_saving(m) for m in head.lateral_convs)
    assert not any(is_memory_saving(m) for m in head.fpn_convs)
    assert 'cls_seg' in head.__dict__


def _head_loss(head, logits, samples, seed=3):
    head.zero_grad(set_to_none=True)
    logits = logits.detach().requires_grad_(True)
    torch.manual_seed(seed)
    losses = head.loss_by_feat(logits, samples)
    sum(v for k, v in losses.items() if 'loss' in k).backward()
    return losses, logits.grad


@pytest.mark.parametrize(
    'align_corners, avg_non_ignore, shape, bands',
    [
        (False, False, (5, 7), 16),  # non-integer scale, 2-row bands
        (True, True, (4, 6), 3),  # uneven bands, mean over labelled
        (False, True, (32, 48), 1),  # same size: one band
    ],
)
def test_banded_loss_matches_mmseg(
    align_corners, avg_non_ignore, shape, bands
):
    """Loss, accuracy and the logits' gradient of the banded loss equal
    mmseg's ``loss_by_feat``, with ignored pixels (255) in the labels."""
    from mmrevnet.models.memory_saving.banded_loss import (
        disable_banded_loss,
        enable_banded_loss,
    )

    head = _build('pspnet').decode_head
    head.align_corners = align_corners
    head.loss_decode.avg_non_ignore = avg_non_ignore
    _, samples = _batch()
    for sample in samples:
        sample.gt_sem_seg.data[0, :3, :5] = head.ignore_index
    logits = torch.randn(2, NUM_CLASSES, *shape, dtype=torch.float64)
    expected, expected_grad = _head_loss(head, logits, samples)
    assert enable_banded_loss(head, bands)
    got, grad = _head_loss(head, logits, samples)
    assert list(got) == list(expected)
    for key in expected:
        torch.testing.assert_close(
            got[key], expected[key], rtol=RTOL, atol=ATOL
        )
    torch.testing.assert_close(grad, expected_grad, rtol=RTOL, atol=ATOL)
    # The comparison can fail: another ignore pattern changes the loss.
    samples[0].gt_sem_seg.data[0, -1, -1] = head.ignore_index
    changed, _ = _head_loss(head, logits, samples)
    assert not torch.allclose(changed['loss_ce'], expected['loss_ce'])
    disable_banded_loss(head)
    assert 'loss_by_feat' not in head.__dict__


def test_banded_loss_keeps_mmseg_for_other_losses_and_bad_bands():
    from mmrevnet.models.memory_saving.banded_loss import (
        enable_banded_loss,
        supports_banded_loss,
    )

    head = _build('pspnet').decode_head
    with pytest.raises(ValueError, match='bands must be a positive int'):
        enable_banded_loss(head, 0)
    head.loss_decode.class_weight = [1.0] * NUM_CLASSES
    assert 'class weights' in supports_banded_loss(head)
    assert not enable_banded_loss(head)
    assert 'loss_by_feat' not in head.__dict__
    with pytest.raises(ValueError, match='loss_bands must be a positive'):
        _build('pspnet', type='MRevNetEncoderDecoder', loss_bands=0)
    with pytest.raises(ValueError, match='concat_free must be True or'):
        _build('pspnet', type='MRevNetEncoderDecoder', concat_free=1)


def test_concat_conv_matches_conv_of_cat():
    """Slices wider than SLICE_CHANNELS, a bias, strides and dilations, an
    upsampled part: output and every gradient equal the plain
    ``conv(cat(...))``."""
    from mmrevnet.models.memory_saving import concat_conv as module

    torch.manual_seed(0)
    conv = torch.nn.Conv2d(
        module.SLICE_CHANNELS + 9, 6, 3, stride=2, padding=2, dilation=2
    ).double()
    wide = torch.randn(
        2, module.SLICE_CHANNELS + 5, 9, 11, dtype=torch.float64
    )
    small = torch.randn(2, 4, 3, 4, dtype=torch.float64)
    parts = [wide.requires_grad_(), small.requires_grad_()]
    grad = torch.randn(2, 6, 5, 6, dtype=torch.float64)

    def run(fn):
        for t in [*parts, *conv.parameters()]:
            t.grad = None
        out = fn()
        out.backward(grad)
        return [out] + [t.grad for t in [*parts, *conv.parameters()]]

    expected = run(
        lambda: conv(
            torch.cat(
                [
                    wide,
                    torch.nn.functional.interpolate(
                        small, size=(9, 11), mode='bilinear'
                    ),
                ],
                1,
            )
        )
    )
    got = run(
        lambda: module.concat_conv(conv, [wide, (small, (9, 11), False)])
    )
    for a, b in zip(expected, got):
        torch.testing.assert_close(b, a, rtol=RTOL, atol=ATOL)
    # a part scaled per sample and channel (a channel dropout's mask)
    scale = torch.rand(2, small.shape[1], 1, 1, dtype=torch.float64)
    conv, plain_conv = (
        torch.nn.Conv2d(module.SLICE_CHANNELS + 9, 6, 1).double(),
        conv,
    )
    corner = (..., slice(0, 3), slice(0, 4))
    grad = torch.randn(2, 6, 3, 4, dtype=torch.float64)
    expected = run(lambda: conv(torch.cat([wide[corner], small * scale], 1)))
    got = run(lambda: module.concat_conv(conv, [wide[corner], (small, scale)]))
    for a, b in zip(expected, got):
        torch.testing.assert_close(b, a, rtol=RTOL, atol=ATOL)
    conv = plain_conv
    with pytest.raises(ValueError, match='the parts have 4 channels'):
        module.concat_conv(conv, [small])
    with pytest.raises(ValueError, match='groups=2'):
        module.concat_conv(torch.nn.Conv2d(4, 4, 1, groups=2), [small])


def test_concat_free_heads_run_mmseg_in_eval():
    model = _build('upernet', type='MRevNetEncoderDecoder')
    head = model.decode_head
    feats = [
        torch.randn(2, c, 8 >> i, 12 >> i, dtype=torch.float64)
        for i, c in enumerate(CHANNELS)
    ]
    model.eval()
    with torch.no_grad():
        out = head(feats)
    from mmrevnet.models.memory_saving.concat_conv import disable_concat_free

    disable_concat_free(head)
    assert '_forward_feature' not in head.__dict__
    with torch.no_grad():
        torch.testing.assert_close(head(feats), out, rtol=0, atol=0)
    # deepcopy rebinds the replaced methods to the copy
    copied = copy.deepcopy(_build('pspnet', type='MRevNetEncoderDecoder'))
    bound = copied.decode_head.__dict__['_forward_feature']
    assert bound.__self__ is copied.decode_head
