"""mmpretrain's ResNet arguments, checkpoint layouts and the warm start."""

import copy
import warnings

import pytest
import torch
import torchvision
from mmpretrain.models.backbones import ResNet as PretrainResNet
from mmpretrain.models.backbones import ResNetV1c as PretrainResNetV1c
from mmpretrain.models.backbones import ResNetV1d as PretrainResNetV1d
from mmseg.models.backbones import ResNetV1c
from model_helpers import assert_matches_plain, randomize_norms

from mmrevnet.models import MRevNet, MRevNetV1c, MRevNetV1d


def _weighted_loss(outs):
    return sum(
        (
            out
            * torch.linspace(-1, 1, out.numel(), dtype=out.dtype).view_as(out)
        ).sum()
        for out in outs
    )


# -- drop_path_rate ----------------------------------------------------------


def test_drop_path_rates_are_mmpretrains():
    """Same rate in every block as mmpretrain's ResNet (the linear rule)."""
    for depth, num_stages in ((50, 4), (18, 4), (101, 3)):
        layout = dict(
            num_stages=num_stages,
            strides=(1, 2, 2, 2)[:num_stages],
            dilations=(1,) * num_stages,
            out_indices=(num_stages - 1,),
            drop_path_rate=0.05,
        )
        theirs = PretrainResNet(depth=depth, **layout)
        ours = MRevNet(depth=depth, **layout)
        for name in theirs.res_layers:
            for block_t, block_o in zip(
                getattr(theirs, name), getattr(ours, name)
            ):
                rate_t = getattr(block_t.drop_path, 'drop_prob', 0.0)
                rate_o = getattr(block_o.drop_path, 'drop_prob', 0.0)
                assert rate_o == rate_t, (depth, name)
    assert MRevNet(depth=50).layer4[2].drop_path.__class__ is torch.nn.Identity


@pytest.mark.parametrize('residual_fn', ['branch', 'block'])
def test_drop_path_memory_saving_grads_and_buffers_equal_plain(residual_fn):
    """float64, drop_path_rate 0.5: the recomputation drops the same paths.

    Same weights, same seed; memory-saving against memory_saving=False:
    outputs and BN buffers bit-equal, gradients within 3e-9 relative
    (max|g - g_ref| / max|g_ref| per parameter), the tolerance of the
    drop-path-free test in test_mrevnet.py. Paths are really dropped: the
    loss differs from the one of drop_path_rate=0 with the same weights.
    """
    kwargs = dict(depth=50, residual_fn=residual_fn, drop_path_rate=0.5)
    torch.manual_seed(0)
    reference = MRevNetV1c(
        memory_saving=False, zero_init_residual=False, **kwargs
    )
    reference.init_weights()
    randomize_norms(reference)
    reference = reference.double()
    saving = MRevNetV1c(**kwargs).double()
    no_drop = MRevNetV1c(depth=50, residual_fn=residual_fn).double()
    state = reference.state_dict()
    saving.load_state_dict(state)
    no_drop.load_state_dict(state)
    x = torch.randn(4, 3, 32, 32, dtype=torch.float64)
    results = []
    for model in (reference, saving, no_drop):
        model.train()
        torch.manual_seed(1)
        outs = model(x)
        loss = _weighted_loss(outs)
        grads = torch.autograd.grad(loss, list(model.parameters()))
        results.append((outs, grads, loss.item()))
    assert results[0][2] != results[2][2]  # drop path changed the function
    assert_matches_plain(
        reference,
        saving,
        results[0][0],
        results[1][0],
        results[0][1],
        results[1][1],
        tol=3e-9,
    )


def test_gamma_zero_block_with_drop_path_is_mmpretrains_resnet():
    """gamma=0, 'block', drop path: mmpretrain's ResNetV1c in training.

    Same seed before each forward, so both draw the same drops (fp32;
    outputs within 1e-5 absolute, measured 0 here).
    """
    torch.manual_seed(0)
    theirs = PretrainResNetV1c(
        depth=50, drop_path_rate=0.3, out_indices=(0, 1, 2, 3)
    )
    theirs.init_weights()
    randomize_norms(theirs)
    ours = MRevNetV1c(
        depth=50,
        gamma=0.0,
        memory_saving=False,
        residual_fn='block',
        drop_path_rate=0.3,
    )
    ours.load_state_dict(theirs.state_dict(), strict=True)
    theirs.train()
    ours.train()
    x = torch.randn(4, 3, 64, 64)
    with torch.no_grad():
        torch.manual_seed(5)
        ref = theirs(x)
        torch.manual_seed(5)
        out = ours(x)
        torch.manual_seed(6)
        other = ours(x)
    for r, o in zip(ref, out):
        assert (r - o).abs().max().item() <= 1e-5
    assert not torch.equal(out[-1], other[-1])  # the drops are random


@pytest.mark.parametrize('value', [-0.1, 1.0, True, '0.1'])
def test_bad_drop_path_rate_is_refused(value):
    with pytest.raises(ValueError, match='drop_path_rate must be'):
        MRevNet(depth=18, drop_path_rate=value)


# -- expansion ---------------------------------------------------------------


@pytest.mark.parametrize('expansion', [None, 2, 4])
def test_expansion_shapes_equal_mmpretrains(expansion):
    theirs = PretrainResNetV1c(
        depth=50, expansion=expansion, out_indices=(0, 1, 2, 3)
    )
    ours = MRevNetV1c(depth=50, expansion=expansion)
    assert ours.feat_dim == theirs.feat_dim
    ours.load_state_dict(theirs.state_dict(), strict=True)
    x = torch.randn(1, 3, 64, 64)
    ours.eval()
    theirs.eval()
    with torch.no_grad():
        for r, o in zip(theirs(x), ours(x)):
            assert r.shape == o.shape


def test_expansion_of_basic_blocks_must_be_one():
    assert MRevNet(depth=18, expansion=1).feat_dim == 512
    with pytest.raises(ValueError, match='expansion must be 1'):
        MRevNet(depth=18, expansion=2)
    with pytest.raises(ValueError, match='expansion must be None or a pos'):
        MRevNet(depth=50, expansion=0)


# -- checkpoints of mmpretrain and torchvision, loaded as they are ----------


@pytest.mark.parametrize(
    'theirs_type,ours_type',
    [(PretrainResNetV1c, MRevNetV1c), (PretrainResNetV1d, MRevNetV1d)],
)
def test_mmpretrain_checkpoint_loads_through_pretrained(
    tmp_path, theirs_type, ours_type
):
    """ConvModule stem keys are mapped on load; every tensor arrives."""
    torch.manual_seed(0)
    theirs = theirs_type(depth=18)
    theirs.init_weights()
    randomize_norms(theirs)
    state = theirs.state_dict()
    assert 'stem.0.conv.weight' in state
    path = tmp_path / 'resnet.pth'
    torch.save({'state_dict': state}, path)
    model = ours_type(
        depth=18, init_cfg=dict(type='Pretrained', checkpoint=str(path))
    )
    assert model.residual_fn == 'block'
    with warnings.catch_warnings():
        warnings.simplefilter('error')  # no residual_fn warning either
        model.init_weights()
    reference = ours_type(depth=18)
    reference.load_state_dict(state, strict=True)  # torch's own loader
    for (name, ref), value in zip(
        reference.state_dict().items(), model.state_dict().values()
    ):
        assert torch.equal(ref, value), name
    # Same function as mmpretrain's network (gamma 0, 'block').
    same = ours_type(
        depth=18, gamma=0.0, memory_saving=False, residual_fn='block'
    )
    same.load_state_dict(state, strict=True)
    same.eval()
    theirs.eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        ref, out = theirs(x)[-1], same(x)[-1]
    assert (ref - out).abs().max().item() <= 1e-5


def test_mmpretrain_classifier_checkpoint_with_prefix(tmp_path):
    from mmengine.registry import DefaultScope
    from mmpretrain.models import ImageClassifier

    torch.manual_seed(0)
    # Another test may have left mmseg as the default scope.
    with DefaultScope.overwrite_default_scope('mmpretrain'):
        classifier = ImageClassifier(
            backbone=dict(type='ResNetV1c', depth=18),
            neck=dict(type='GlobalAveragePooling'),
            head=dict(type='LinearClsHead', num_classes=4, in_channels=512),
        )
    randomize_norms(classifier)
    path = tmp_path / 'classifier.pth'
    torch.save({'state_dict': classifier.state_dict()}, path)
    model = MRevNetV1c(
        depth=18,
        init_cfg=dict(
            type='Pretrained', checkpoint=str(path), prefix='backbone.'
        ),
    )
    model.init_weights()
    reference = MRevNetV1c(depth=18)
    reference.load_state_dict(classifier.backbone.state_dict(), strict=True)
    for (name, ref), value in zip(
        reference.state_dict().items(), model.state_dict().values()
    ):
        assert torch.equal(ref, value), name


def test_torchvision_checkpoint_loads_into_the_matching_variant(tmp_path):
    torch.manual_seed(0)
    theirs = torchvision.models.resnet18()
    randomize_norms(theirs)
    path = tmp_path / 'resnet18-tv.pth'
    torch.save(theirs.state_dict(), path)
    model = MRevNet(
        depth=18, init_cfg=dict(type='Pretrained', checkpoint=str(path))
    )
    model.init_weights()
    reference = MRevNet(depth=18)
    reference.load_state_dict(theirs.state_dict(), strict=True)  # fc dropped
    for (name, ref), value in zip(
        reference.state_dict().items(), model.state_dict().values()
    ):
        assert torch.equal(ref, value), name
    # The wrong variant is refused, even by a non-strict load.
    for strict in (True, False):
        with pytest.raises(ValueError, match='Build MRevNet .deep_stem=False'):
            MRevNetV1c(depth=18).load_state_dict(theirs.state_dict(), strict)
    bad = MRevNetV1c(
        depth=18, init_cfg=dict(type='Pretrained', checkpoint=str(path))
    )
    with pytest.raises(ValueError, match='Build MRevNet .deep_stem=False'):
        bad.init_weights()
    with pytest.raises(ValueError, match='Build MRevNetV1c or MRevNetV1d'):
        MRevNet(depth=18).load_state_dict(MRevNetV1c(depth=18).state_dict())


# -- residual_fn: the warm start --------------------------------------------


def test_residual_fn_follows_pretrained_weights():
    assert MRevNetV1c(depth=18).residual_fn == 'branch'
    assert MRevNetV1c(depth=18, residual_fn='auto').residual_fn == 'branch'
    with pytest.warns(UserWarning, match='pretrained is a deprecated'):
        assert MRevNetV1c(depth=18, pretrained='x.pth').residual_fn == 'block'
    pretrained = dict(type='Pretrained', checkpoint='x.pth')
    assert MRevNetV1c(depth=18, init_cfg=pretrained).residual_fn == 'block'
    assert (
        MRevNetV1c(
            depth=18,
            init_cfg=[dict(type='Kaiming', layer='Conv2d'), pretrained],
        ).residual_fn
        == 'block'
    )
    explicit = MRevNetV1c(depth=18, init_cfg=pretrained, residual_fn='branch')
    assert explicit.residual_fn == 'branch'
    with pytest.raises(ValueError, match='residual_fn must be one of'):
        MRevNetV1c(depth=18, residual_fn='ResNet')


def test_resnet_weights_into_branch_warn_once():
    resnet = ResNetV1c(depth=18).state_dict()
    model = MRevNetV1c(depth=18, residual_fn='branch')
    with pytest.warns(UserWarning, match="residual_fn='branch'") as record:
        model.load_state_dict(resnet)
        model.load_state_dict(resnet)
    assert (
        len([w for w in record if 'no m-RevNet mark' in str(w.message)]) == 1
    )
    with warnings.catch_warnings():
        warnings.simplefilter('error')
        MRevNetV1c(depth=18, residual_fn='block').load_state_dict(resnet)
        # m-RevNet weights saved with 'branch' load into 'branch' quietly.
        MRevNetV1c(depth=18).load_state_dict(MRevNetV1c(depth=18).state_dict())


def test_mrevnet_weights_with_another_residual_fn_warn(tmp_path):
    from mmengine.runner import load_checkpoint, save_checkpoint

    path = str(tmp_path / 'block.pth')
    save_checkpoint(
        MRevNetV1c(depth=18, residual_fn='block').state_dict(), path
    )
    with pytest.warns(UserWarning, match="residual_fn='block', but this"):
        load_checkpoint(MRevNetV1c(depth=18), path, strict=True)


def test_mmpretrain_rsb_recipe_builds_with_only_the_type_changed(tmp_path):
    """mmpretrain's RSB A1 recipe (drop_path_rate=0.05): swap the type."""
    from mmengine.config import Config
    from mmengine.registry import init_default_scope
    from mmpretrain.registry import MODELS

    config = tmp_path / 'rsb.py'
    config.write_text(
        "_base_ = 'mmpretrain::resnet/resnet50_8xb256-rsb-a1-600e_in1k.py'\n"
        "custom_imports = dict(imports=['mmrevnet'])\n"
        "model = dict(backbone=dict(type='MRevNet'))\n"
    )
    cfg = Config.fromfile(str(config))
    assert cfg.model.backbone.drop_path_rate == 0.05
    cfg.model.backbone.norm_cfg = dict(type='BN', requires_grad=True)
    init_default_scope('mmpretrain')
    model = MODELS.build(cfg.model)
    assert type(model.backbone).__name__ == 'MRevNet'
    assert model.backbone.residual_fn == 'branch'  # trained from scratch
    # float32 linspace, as in mmpretrain (see the rates test above)
    assert model.backbone.layer4[2].drop_path.drop_prob == pytest.approx(0.05)
    model.train()
    feats = model.extract_feat(torch.randn(2, 3, 64, 64))
    assert feats[0].shape == (2, 2048)


def test_readme_swap_builds_block_for_the_inherited_pretrained(tmp_path):
    """mmseg's config keeps pretrained='open-mmlab://resnet50_v1c'."""
    from mmengine.config import Config
    from mmengine.registry import init_default_scope
    from mmseg.registry import MODELS

    config = tmp_path / 'swap.py'
    config.write_text(
        "_base_ = 'mmseg::pspnet/pspnet_r50-d8_4xb2-80k_cityscapes-"
        "512x1024.py'\n"
        "custom_imports = dict(imports=['mmrevnet'])\n"
        "model = dict(backbone=dict(type='MRevNetV1c'))\n"
    )
    cfg = Config.fromfile(str(config))
    assert cfg.model.pretrained == 'open-mmlab://resnet50_v1c'
    cfg.model.backbone.norm_cfg = dict(type='BN', requires_grad=True)
    cfg.model.decode_head.norm_cfg = dict(type='BN', requires_grad=True)
    cfg.model.auxiliary_head.norm_cfg = dict(type='BN', requires_grad=True)
    init_default_scope('mmseg')
    with pytest.warns(UserWarning, match='pretrained is a deprecated'):
        # EncoderDecoder writes pretrained into the backbone dict it gets.
        model = MODELS.build(copy.deepcopy(cfg.model))
    assert model.backbone.residual_fn == 'block'
    cfg.model.pretrained = None
    assert MODELS.build(cfg.model).backbone.residual_fn == 'branch'
