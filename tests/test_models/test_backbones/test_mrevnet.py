"""MRevNet backbones against mmseg's ResNet (the plain reference)."""

import copy
import warnings

import pytest
import torch
from mmengine.registry import MODELS as ROOT_MODELS
from mmengine.registry import init_default_scope
from mmseg.models.backbones import ResNetV1c, ResNetV1d
from model_helpers import assert_matches_plain, randomize_norms
from torch.nn.modules.batchnorm import _BatchNorm

from benchmarks.memory import SavedTensorCounter
from mmrevnet.models import MRevNet, MRevNetV1c, MRevNetV1d
from mmrevnet.reversible import MomentumStageFunction

D8 = dict(dilations=(1, 1, 2, 4), strides=(1, 2, 1, 1), contract_dilation=True)
DEPTHS = (18, 34, 50, 101, 152)


def _activation_mib(model, x) -> float:
    model.train()
    with SavedTensorCounter(exclude=model.parameters()) as counter:
        outs = model(x)
    del outs
    return counter.mib


# -- 1. memory --------------------------------------------------------------


def test_activation_memory_ratios_d8():
    """Saved-for-backward bytes vs mmseg ResNetV1c-101-D8 (batch 2, 128x256).

    Measured here: ResNetV1c-101-D8 plain 449.6 MiB, with_cp 155.8 MiB,
    MRevNetV1c-101-D8 37.75 MiB (the floor: image, stem output and x_T, v_T
    per stage), identical at depth 50; depth 152 adds the one state
    (x_t, v_t) its 35-block layer3 stores at gamma 0.9 (two tensors of
    2x1024x16x32 fp32, 8 MiB; see docs/numerics.md).
    """
    torch.manual_seed(0)
    x = torch.randn(2, 3, 128, 256)
    plain = _activation_mib(ResNetV1c(depth=101, **D8), x)
    with warnings.catch_warnings():
        warnings.simplefilter('ignore', UserWarning)  # reentrant cp warning
        with_cp = _activation_mib(ResNetV1c(depth=101, with_cp=True, **D8), x)
    with warnings.catch_warnings():
        warnings.simplefilter('ignore', UserWarning)  # 152: a stored state
        mrev = {
            depth: _activation_mib(MRevNetV1c(depth=depth, **D8), x)
            for depth in (50, 101, 152)
        }
    assert mrev[101] <= 0.09 * plain, (mrev[101], plain)
    assert mrev[101] <= 0.26 * with_cp, (mrev[101], with_cp)
    assert mrev[101] == mrev[50], mrev
    stored_state_mib = 2 * (2 * 1024 * 16 * 32 * 4) / 2**20
    assert mrev[152] == pytest.approx(mrev[50] + stored_state_mib), mrev
    # The memory_saving=False path keeps everything, like a plain ResNet.
    full = _activation_mib(MRevNetV1c(depth=101, memory_saving=False, **D8), x)
    assert full >= 0.9 * plain, (full, plain)


# -- 2. gradients and BN buffers -------------------------------------------


@pytest.mark.parametrize(
    'residual_fn,plan,tol',
    [
        ('branch', {}, 2e-8),
        ('block', {}, 3e-9),
        # Memory plans: kept and reversed blocks mixed in every stage.
        ('branch', dict(stored_blocks=(1, 0, 3, 2)), 3e-9),
        ('block', dict(stored_blocks=(0, 2, 5, 1), store_stem=True), 3e-9),
        ('branch', dict(stored_blocks=(3, 4, 6, 3), store_stem=True), 3e-9),
    ],
)
def test_memory_saving_gradients_and_buffers_match_plain(
    residual_fn, plan, tol
):
    """float64, depth 50: every gradient and BN buffer, relative error
    within ``tol``, for the default plan (everything recomputed) and mixed
    plans.

    Measured (max over parameters of max|g - g_ref| / max|g_ref|): 'branch'
    with everything recomputed 1.2e-9 on one machine and 3.1e-9 to 3.8e-9
    from run to run of the same process on an AVX-512 one (vectorised fp64
    reductions round by the buffers' alignment), hence 2e-8 there; every
    other case at most 1.7e-11. The randomised BN statistics make some
    channels' 1/sigma large, which amplifies fp64 rounding of the
    reconstruction. An error of the backward itself is of order 1.
    """
    torch.manual_seed(0)
    reference = MRevNetV1c(
        depth=50,
        memory_saving=False,
        residual_fn=residual_fn,
        zero_init_residual=False,
    ).double()
    reference.init_weights()
    randomize_norms(reference)
    reference = reference.double()
    saving = MRevNetV1c(depth=50, residual_fn=residual_fn, **plan).double()
    saving.load_state_dict(reference.state_dict())
    reference.train()
    saving.train()
    x = torch.randn(2, 3, 32, 32, dtype=torch.float64)
    results = []
    for model in (reference, saving):
        outs = model(x)
        loss = sum(
            (
                out
                * torch.linspace(-1, 1, out.numel(), dtype=out.dtype).view_as(
                    out
                )
            ).sum()
            for out in outs
        )
        grads = torch.autograd.grad(loss, list(model.parameters()))
        results.append((outs, grads))
    assert saving.layer3.stage.uses_memory_saving(
        saving.layer3.functions, torch.zeros(1, requires_grad=True), None, True
    )
    stored = plan.get('stored_blocks', (0, 0, 0, 0))
    for index, name in enumerate(saving.res_layers):
        layer = getattr(saving, name)
        assert layer.keep_transition == (stored[index] > 0)
        assert layer.stage.config.num_reversed == len(layer) - max(
            stored[index], 1
        )
    assert_matches_plain(
        reference,
        saving,
        results[0][0],
        results[1][0],
        results[0][1],
        results[1][1],
        tol=tol,
    )


def test_momentum_stage_function_is_used_in_training_only():
    model = MRevNetV1c(
        depth=18,
        num_stages=2,
        strides=(1, 2),
        dilations=(1, 1),
        out_indices=(1,),
    )
    x = torch.randn(2, 3, 32, 32)
    model.train()
    out = model(x)[0]
    assert 'MomentumStageFunction' in type(out.grad_fn).__name__
    model.eval()
    calls = []
    original = MomentumStageFunction.apply

    def spy(*args):
        calls.append(args)
        return original(*args)

    MomentumStageFunction.apply = spy
    try:
        out = model(x)[0]
        model.train()
        with torch.no_grad():
            model(x)
    finally:
        MomentumStageFunction.apply = original
    assert calls == []
    assert 'MomentumStageFunction' not in type(out.grad_fn).__name__


# -- 3. keys, loading, ResNet equivalence ----------------------------------


@pytest.mark.parametrize('depth', DEPTHS)
@pytest.mark.parametrize(
    'ours,theirs', [(MRevNetV1c, ResNetV1c), (MRevNetV1d, ResNetV1d)]
)
def test_state_dict_keys_equal_mmseg(depth, ours, theirs):
    reference = theirs(depth=depth)
    model = ours(depth=depth)
    ref_state = reference.state_dict()
    state = model.state_dict()
    assert list(state) == list(ref_state)
    assert all(state[k].shape == ref_state[k].shape for k in state)
    model.load_state_dict(ref_state, strict=True)


def test_pretrained_checkpoint_loads_every_tensor(tmp_path):
    reference = ResNetV1c(depth=50)
    reference.init_weights()
    randomize_norms(reference, seed=3)
    path = tmp_path / 'resnet50_v1c.pth'
    torch.save({'state_dict': reference.state_dict()}, path)
    with pytest.warns(UserWarning, match='pretrained is a deprecated'):
        model = MRevNetV1c(depth=50, pretrained=str(path))
    assert model.init_cfg == dict(type='Pretrained', checkpoint=str(path))
    model.init_weights()
    for (name, ref), value in zip(
        reference.state_dict().items(), model.state_dict().values()
    ):
        assert torch.equal(ref, value), name


def test_pretrained_and_init_cfg_together_fail_like_mmseg():
    with pytest.raises(AssertionError, match='init_cfg and pretrained'):
        MRevNetV1c(
            depth=50,
            pretrained='a.pth',
            init_cfg=dict(type='Pretrained', checkpoint='a.pth'),
        )
    with pytest.raises(TypeError, match='pretrained must be a str'):
        MRevNetV1c(depth=50, pretrained=1)


@pytest.mark.parametrize('layout', [D8, {}])
def test_gamma_zero_block_residual_equals_resnet(layout):
    """F = block(x) - x and gamma = 0 is exactly ResNetV1c (fp32, 1e-5)."""
    torch.manual_seed(0)
    reference = ResNetV1c(depth=50, **layout)
    reference.init_weights()
    randomize_norms(reference)
    model = MRevNetV1c(
        depth=50, gamma=0.0, memory_saving=False, residual_fn='block', **layout
    )
    model.load_state_dict(reference.state_dict(), strict=True)
    x = torch.randn(2, 3, 64, 96)
    for mode in ('eval', 'train'):
        getattr(reference, mode)()
        getattr(model, mode)()
        with torch.no_grad():
            for ref, out in zip(reference(x), model(x)):
                assert (ref - out).abs().max().item() <= 1e-5


def test_gamma_positive_differs_from_resnet():
    """The equivalence test above can fail: gamma > 0 changes the output."""
    torch.manual_seed(0)
    reference = ResNetV1c(depth=18, zero_init_residual=False)
    reference.init_weights()
    model = MRevNetV1c(
        depth=18, gamma=0.5, residual_fn='block', zero_init_residual=False
    )
    model.load_state_dict(reference.state_dict())
    reference.eval()
    model.eval()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        assert (reference(x)[-1] - model(x)[-1]).abs().max() > 1e-3


# -- 4. shapes, freezing, norm_eval, invalid arguments ---------------------


@pytest.mark.parametrize(
    'layout,sizes',
    [
        (D8, [(256, 16, 16), (512, 8, 8), (1024, 8, 8), (2048, 8, 8)]),
        ({}, [(256, 16, 16), (512, 8, 8), (1024, 4, 4), (2048, 2, 2)]),
    ],
)
def test_output_shapes(layout, sizes):
    model = MRevNetV1c(depth=50, **layout)
    model.train()
    outs = model(torch.randn(2, 3, 64, 64))
    assert [tuple(o.shape) for o in outs] == [(2,) + s for s in sizes]
    model = MRevNetV1c(depth=18, out_indices=(1, 3), **layout)
    model.eval()
    outs = model(torch.randn(1, 3, 64, 64))
    assert [o.shape[1] for o in outs] == [128, 512]


@pytest.mark.parametrize('frozen_stages', [0, 1, 3])
def test_frozen_stages(frozen_stages):
    model = MRevNetV1c(depth=18, frozen_stages=frozen_stages)
    model.train()
    frozen = [model.stem] + [
        getattr(model, f'layer{i}') for i in range(1, frozen_stages + 1)
    ]
    for module in frozen:
        assert not module.training
        assert all(not p.requires_grad for p in module.parameters())
        assert all(
            not m.training
            for m in module.modules()
            if isinstance(m, _BatchNorm)
        )
    trainable = getattr(model, f'layer{frozen_stages + 1}')
    assert trainable.training
    assert all(p.requires_grad for p in trainable.parameters())
    before = {k: v.clone() for k, v in model.state_dict().items()}
    outs = model(torch.randn(2, 3, 64, 64))
    sum(o.sum() for o in outs).backward()
    for name, param in model.named_parameters():
        assert (param.grad is None) == (not param.requires_grad), name
    # Frozen BN running statistics did not move.
    for name, value in model.state_dict().items():
        if name.startswith('stem.') and 'running' in name:
            assert torch.equal(value, before[name]), name


def test_norm_eval_keeps_bn_in_eval_and_buffers_fixed():
    model = MRevNetV1c(depth=18, norm_eval=True)
    model.train()
    assert all(
        not m.training for m in model.modules() if isinstance(m, _BatchNorm)
    )
    before = copy.deepcopy(model.state_dict())
    outs = model(torch.randn(2, 3, 64, 64))
    sum(o.sum() for o in outs).backward()
    for name, value in model.state_dict().items():
        assert torch.equal(value, before[name]), name


@pytest.mark.parametrize(
    'kwargs,error,match',
    [
        (dict(depth=42), KeyError, 'depth'),
        (dict(depth=50, num_stages=5), ValueError, 'num_stages'),
        (dict(depth=50, num_stages=0), ValueError, 'num_stages'),
        (dict(depth=50, strides=(1, 2)), ValueError, 'strides'),
        (dict(depth=50, dilations=(1, 1, 1)), ValueError, 'dilations'),
        (dict(depth=50, out_indices=(4,)), ValueError, 'out_indices'),
        (dict(depth=50, out_indices=()), ValueError, 'out_indices'),
        (dict(depth=50, frozen_stages=5), ValueError, 'frozen_stages'),
        (dict(depth=50, frozen_stages=-2), ValueError, 'frozen_stages'),
        (dict(depth=50, style='tf'), ValueError, 'style'),
        (dict(depth=50, in_channels=0), ValueError, 'in_channels'),
        (dict(depth=50, gamma=1.0), ValueError, 'gamma'),
        (dict(depth=50, gamma=0.0), ValueError, 'gamma'),
        (dict(depth=50, gamma='0.9'), TypeError, 'gamma'),
        (dict(depth=152, gamma=0.05), ValueError, 'gamma=0.05 is too small'),
        (dict(depth=50, residual_fn='identity'), ValueError, 'residual_fn'),
        (dict(depth=50, multi_grid=(1, 2)), ValueError, 'multi_grid'),
        (
            dict(depth=50, dcn=dict(type='DCNv2', deform_groups=1)),
            NotImplementedError,
            'dcn',
        ),
        (
            dict(depth=50, stage_with_dcn=(False, True, True, True)),
            NotImplementedError,
            'dcn',
        ),
        (
            dict(
                depth=50,
                plugins=[
                    dict(cfg=dict(type='ContextBlock'), position='after_conv3')
                ],
            ),
            NotImplementedError,
            'plugins',
        ),
    ],
)
def test_invalid_arguments_raise_naming_the_argument(kwargs, error, match):
    with pytest.raises(error, match=match):
        MRevNet(**kwargs)


def test_variants_refuse_contradicting_stem_arguments():
    with pytest.raises(ValueError, match='deep_stem'):
        MRevNetV1c(depth=50, deep_stem=False)
    with pytest.raises(ValueError, match='avg_down'):
        MRevNetV1d(depth=50, avg_down=False)


def test_wrong_input_channels_raise():
    model = MRevNetV1c(depth=18)
    with pytest.raises(ValueError, match='in_channels=3'):
        model(torch.randn(1, 4, 32, 32))


def test_multi_grid_sets_last_stage_dilations():
    model = MRevNetV1c(depth=50, multi_grid=(1, 2, 4), **D8)
    dilations = [block.conv2.dilation[0] for block in model.layer4]
    assert dilations == [1, 2, 4]
    model.eval()
    assert model(torch.randn(1, 3, 32, 32))[-1].shape[1] == 2048


def test_with_cp_plain_path_matches_without():
    torch.manual_seed(0)
    plain = MRevNetV1c(
        depth=18, memory_saving=False, gamma=0.5, zero_init_residual=False
    )
    checkpointed = MRevNetV1c(
        depth=18,
        memory_saving=False,
        gamma=0.5,
        with_cp=True,
        zero_init_residual=False,
    )
    checkpointed.load_state_dict(plain.state_dict())
    x = torch.randn(2, 3, 32, 32)
    grads = []
    for model in (plain, checkpointed):
        model.train()
        loss = sum(o.square().sum() for o in model(x))
        grads.append(torch.autograd.grad(loss, list(model.parameters())))
    for g_ref, g in zip(*grads):
        assert torch.allclose(g_ref, g, rtol=1e-4, atol=1e-6)
    for b_ref, b in zip(plain.buffers(), checkpointed.buffers()):
        assert torch.equal(b_ref, b)
    saved_plain = _activation_mib(plain, x)
    saved_cp = _activation_mib(checkpointed, x)
    assert saved_cp < 0.5 * saved_plain


# -- 5. registry and FLOP counting -----------------------------------------


@pytest.mark.parametrize('scope', ['mmseg', 'mmpretrain'])
def test_builds_from_config_under_default_scope(scope):
    init_default_scope(scope)
    if scope == 'mmseg':
        from mmseg.registry import MODELS
    else:
        from mmpretrain.registry import MODELS
    backbone = MODELS.build(
        dict(type='MRevNetV1c', depth=18, out_indices=(3,))
    )
    assert isinstance(backbone, MRevNetV1c)
    assert ROOT_MODELS.get('MRevNetV1d') is MRevNetV1d
    assert ROOT_MODELS.get('MRevNet') is MRevNet


def test_eval_mode_flops_are_counted():
    from mmengine.analysis import get_model_complexity_info

    model = MRevNetV1c(depth=18)
    model.eval()
    info = get_model_complexity_info(model, input_shape=(3, 64, 64))
    reference = ResNetV1c(depth=18)
    reference.eval()
    ref_info = get_model_complexity_info(reference, input_shape=(3, 64, 64))
    # Same convolutions plus a few elementwise momentum updates.
    assert info['flops'] >= ref_info['flops'] > 0
    assert info['flops'] <= 1.05 * ref_info['flops']
    assert info['params'] == ref_info['params']


def test_drift_report_per_stage():
    model = MRevNetV1c(depth=50, track_drift=True)
    model.train()
    assert set(model.reconstruction_drift()) == {
        'layer1',
        'layer2',
        'layer3',
        'layer4',
    }
    outs = model(torch.randn(2, 3, 32, 32))
    sum(o.sum() for o in outs).backward()
    drift = model.reconstruction_drift()
    assert all(
        value is not None and value < 1e-4 for value in drift.values()
    ), drift


# -- mixed precision and non-finite values ---------------------------------


def _relative_grad_errors(grads, reference):
    return sorted(
        ((g - r).norm() / r.norm().clamp_min(1e-30)).item()
        for g, r in zip(grads, reference)
    )


def test_bf16_autocast_memory_saving_grads_near_plain():
    """CPU bf16 autocast, narrow MRevNetV1c-50, per-parameter norm errors.

    Measured (torch 2.14, CPU): memory-saving vs plain, both under bf16
    autocast: median 0.053, max 0.125. For scale, plain bf16 vs plain fp32
    on the same model: median 0.43, max 0.86. The reconstruction adds an
    error of bf16 size (F is recomputed at a position a few fp32 ulps off,
    which may round differently to bf16), well below bf16's own.
    """
    torch.manual_seed(0)
    kwargs = dict(
        depth=50, zero_init_residual=False, base_channels=16, stem_channels=32
    )
    plain = MRevNetV1c(memory_saving=False, **kwargs)
    plain.init_weights()
    saving = MRevNetV1c(**kwargs)
    saving.load_state_dict(plain.state_dict())
    x = torch.randn(2, 3, 64, 64)

    def grads(model, amp):
        model.train()
        with torch.autocast('cpu', dtype=torch.bfloat16, enabled=amp):
            outs = model(x)
        assert all(o.dtype == torch.float32 for o in outs)
        loss = sum(o.float().square().mean() for o in outs)
        return torch.autograd.grad(loss, list(model.parameters()))

    reference = grads(plain, True)
    errors = _relative_grad_errors(grads(saving, True), reference)
    bf16_vs_fp32 = _relative_grad_errors(reference, grads(plain, False))
    median = errors[len(errors) // 2]
    assert median <= 0.1 and errors[-1] <= 0.3, (median, errors[-1])
    assert median <= 0.5 * bf16_vs_fp32[len(bf16_vs_fp32) // 2]


@pytest.mark.parametrize('value', [float('nan'), float('inf')])
def test_non_finite_input_is_reported_naming_the_stage(value):
    """With track_drift (the debugging aid; it synchronises the host)."""
    model = MRevNetV1c(depth=18, track_drift=True)
    model.train()
    x = torch.randn(2, 3, 32, 32)
    x[0, 0, 0, 0] = value
    # Raised in the forward of the first stage the value reached, though
    # it then reaches every stage (the backward would meet layer4 first).
    with pytest.raises(FloatingPointError, match="stage 'layer1'.*input"):
        model(x)


def test_max_amplification_argument():
    with pytest.raises(ValueError, match='max_amplification'):
        MRevNetV1c(depth=50, max_amplification=1.0)
    model = MRevNetV1c(depth=50, max_amplification=1e30, gamma=0.3)
    assert all(s.num_stored_states == 0 for s in model.stages.values())
