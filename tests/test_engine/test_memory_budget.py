"""``memory_budget``: parsing, planning on the whole segmentor, the hook."""

import copy
import dataclasses
import gc
import weakref

import pytest
import torch
from mmengine.hub import get_config
from mmengine.registry import RUNNERS, init_default_scope
from mmengine.structures import PixelData
from mmseg.registry import MODELS
from mmseg.structures import SegDataSample

from mmrevnet.engine.memory_budget import (
    MemoryBudgetError,
    MemoryPlan,
    MRevNetMemoryBudgetHook,
    PlanFigures,
    apply_plan,
    choose_plan,
    measure_plan_figures,
    plan_for_memory_budget,
)
from mmrevnet.engine.step_memory import optimizer_state, step_peak
from mmrevnet.models import MRevNetV1c
from mmrevnet.models.memory_saving.heads import is_memory_saving
from mmrevnet.models.segmentors.encoder_decoder import segmentor_heads
from mmrevnet.models.utils.memory_budget import parse_memory_budget
from tools.cli.config import build_train_config, sync_bn_to_bn
from tools.dataset_converters.generators.synthetic import generate_cityscapes

MIB = 2**20
# The planner's prediction is an upper bound; on the whole segmentor it
# must stay within 3% of the measured peak (the target).
MAX_PREDICTION_ERROR = 0.03


@pytest.mark.parametrize(
    'value, total, free, expected',
    [
        ('10GiB', 0, 0, 10 * 2**30),
        ('7.5G', 0, 0, int(7.5 * 2**30)),
        ('512MiB', 0, 0, 512 * MIB),
        ('24GB', 0, 0, 24 * 10**9),
        (' 3 kib ', 0, 0, 3 * 1024),
        (123456, 0, 0, 123456),
        (0.8, 1000, 500, 800),
        (1.0, 1000, 500, 1000),
        ('auto', 1000, 500, 450),
        ('AUTO', 1000, 1000, 900),
    ],
)
def test_budget_sizes_fractions_and_auto(value, total, free, expected):
    assert parse_memory_budget(value).resolve(total, free) == expected


@pytest.mark.parametrize(
    'value', [0, -5, 0.0, 1.5, True, '10 apples', 'GiB', '', '-1GiB', [1]]
)
def test_bad_budget_names_the_field_and_the_forms(value):
    with pytest.raises(ValueError, match=r"memory_budget must be .*'auto'"):
        parse_memory_budget(value)


def test_budget_excludes_a_plan_by_hand():
    with pytest.raises(ValueError, match='either memory_budget or a plan'):
        MRevNetV1c(depth=18, memory_budget='1GiB', stored_blocks=(1, 0, 0, 0))
    with pytest.raises(ValueError, match='either memory_budget or a plan'):
        MRevNetV1c(depth=18, memory_budget='1GiB', memory_saving=False)


def test_unplanned_budget_refuses_to_train_but_evaluates():
    backbone = MRevNetV1c(
        depth=18, stem_channels=8, base_channels=8, memory_budget=0.5
    )
    x = torch.randn(2, 3, 64, 64)
    with pytest.raises(RuntimeError, match='MRevNetMemoryBudgetHook'):
        backbone.train()(x)
    backbone.eval()(x)
    backbone.set_plan((0, 0, 0, 0), False)
    backbone.train()(x)


NUM_CLASSES = 5


def _figures(heads=True):
    """Two stages of one block each, with known figures."""
    return PlanFigures(
        last_stage_peaks=(100, 110),
        kept_bytes=((0, 5), (0, 7)),
        stem_bytes=3,
        block_seconds=((1.0, 0.5), (2.0, 0.0)),
        stem_seconds=0.25,
        optimizer_state_bytes=10,
        shape=(1, 3, 8, 8),
        stored_heads_peaks=(130, 135) if heads else None,
        heads_seconds=4.0 if heads else 0.0,
    )


def test_prediction_and_cost_terms_of_stem_blocks_and_heads():
    figures = _figures()
    assert len(figures.plans()) == 16
    assert figures.floor() == MemoryPlan((0, 0), False, False)
    # Stored heads read their own last-stage peaks.
    assert figures.predict_peak(MemoryPlan((1, 1), True, True)) == 135 + 18
    assert figures.predict_peak(MemoryPlan((1, 1), True, False)) == 110 + 18
    assert figures.predict_peak(figures.floor()) == 110
    # Recomputed: stem, heads, both transition blocks.
    assert figures.recompute_seconds(figures.floor()) == 7.25
    assert figures.recompute_seconds(MemoryPlan((1, 1), True, False)) == 4
    assert figures.recompute_seconds(MemoryPlan((1, 1), True, True)) == 0
    # 150: keep all blocks and the heads, recompute the stem (0.25 s);
    # 149: stored heads and stem, stage 1 recomputed (1.0 s) beats
    # recomputing the heads (4.0 s).
    assert choose_plan(figures, 150).plan == MemoryPlan((1, 1), False, True)
    assert choose_plan(figures, 149).plan == MemoryPlan((0, 1), True, True)
    plain = _figures(heads=False)
    assert {p.store_heads for p in plain.plans()} == {None}
    assert plain.floor() == MemoryPlan((0, 0), False, None)
    assert plain.recompute_seconds(plain.floor()) == 3.25


def test_prediction_holds_kept_blocks_only_until_their_stage_backward():
    """Stage 0 has three blocks; its backward phases were measured."""
    figures = PlanFigures(
        last_stage_peaks=(100, 110),
        kept_bytes=((0, 5, 9, 12), (0, 7)),
        stem_bytes=3,
        block_seconds=((1.0, 0.5), (2.0, 0.0)),
        stem_seconds=0.25,
        optimizer_state_bytes=10,
        shape=(1, 3, 8, 8),
        # blocks 0, 1, 2, then from the gradient of the stage's output
        earlier_stage_peaks=((140, 120, 104, 100),),
    )
    # Floor: the last phase of stage 0 (block 0, 140) holds the most.
    assert figures.predict_peak(MemoryPlan((0, 0), False)) == 140 + 10
    # Keeping stage 0 entirely: 110 + 12 until the last stage is done,
    # then block 2's phase holds 104 + 12 and block 0's 140 + 5.
    assert figures.predict_peak(MemoryPlan((3, 1), False)) == 145 + 10
    # Keeping one block: held through the recomputed blocks' phases
    # (104 + 5, 120 + 5) and block 0's own (140 + 5).
    assert figures.predict_peak(MemoryPlan((1, 0), False)) == 145 + 10
    assert (
        figures.predict_peak(MemoryPlan((2, 1), True))
        == max(110 + 9, 104 + 9, 120 + 9, 140 + 5) + 10 + 3
    )
    # Without phases the last stage's peaks are whole step peaks.
    whole = dataclasses.replace(figures, earlier_stage_peaks=None)
    assert whole.predict_peak(MemoryPlan((3, 1), False)) == 110 + 12 + 10


SHAPE = (2, 3, 64, 96)


def _segmentor(segmentor=None, **backbone):
    init_default_scope('mmseg')
    cfg = get_config('mmseg::_base_/models/pspnet_r50-d8.py').model
    cfg = copy.deepcopy(cfg.to_dict())
    cfg.pop('data_preprocessor')
    cfg.update(type='MRevNetEncoderDecoder', pretrained=None)
    cfg.update(segmentor or {})
    cfg['backbone'] = dict(
        type='MRevNetV1c',
        depth=18,
        stem_channels=16,
        base_channels=16,
        dilations=(1, 1, 2, 4),
        strides=(1, 2, 1, 1),
        contract_dilation=True,
        **backbone,
    )
    sync_bn_to_bn(cfg)
    cfg['decode_head'].update(
        in_channels=128,
        channels=16,
        num_classes=NUM_CLASSES,
        dropout_ratio=0.1,
    )
    cfg['auxiliary_head'].update(
        in_channels=64, channels=8, num_classes=NUM_CLASSES
    )
    torch.manual_seed(0)
    return MODELS.build(cfg).train()


def _batch(seed=0):
    generator = torch.Generator().manual_seed(seed)
    inputs = torch.randn(*SHAPE, generator=generator)
    samples = []
    for _ in range(SHAPE[0]):
        sample = SegDataSample(
            metainfo=dict(img_shape=SHAPE[2:], ori_shape=SHAPE[2:])
        )
        labels = torch.randint(
            0, NUM_CLASSES, (1, *SHAPE[2:]), generator=generator
        )
        sample.gt_sem_seg = PixelData(data=labels)
        samples.append(sample)
    return inputs, samples


def _forward_loss(model, batch):
    def forward_loss():
        loss, _ = model.parse_losses(model.loss(*batch))
        return loss

    return forward_loss


@pytest.fixture(scope='module')
def planned():
    """A budget-planned segmentor and the figures of its first batch."""
    torch.set_num_threads(1)
    model = _segmentor(memory_budget='1TiB')
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    batch = _batch()
    choice, figures = plan_for_memory_budget(
        model, model.backbone, _forward_loss(model, batch), 2**40, optimizer
    )
    return model, optimizer, batch, choice, figures


def test_a_budget_that_holds_everything_keeps_everything(planned):
    model, _, _, choice, figures = planned
    assert choice.plan == MemoryPlan((2, 2, 2, 2), True, store_heads=True)
    assert choice.recompute_seconds == 0.0 < choice.floor_recompute_seconds
    assert not model.backbone.plan_pending
    assert model.backbone.stored_blocks == (2, 2, 2, 2)
    assert not any(is_memory_saving(h) for h in segmentor_heads(model))
    assert figures.shape == SHAPE
    # The heads' forward is what their recomputation costs; their stored
    # peaks are measured for every count of the last stage.
    assert figures.heads_seconds > 0
    assert len(figures.stored_heads_peaks) == len(figures.last_stage_peaks)


def test_heads_are_planned_only_where_they_recompute(planned):
    figures = planned[-1]
    assert {p.store_heads for p in figures.plans()} == {False, True}
    model = _segmentor(dict(memory_saving_heads=None), memory_budget='1GiB')
    with pytest.raises(ValueError, match='store_heads=True: a bool for an'):
        apply_plan(
            model, model.backbone, MemoryPlan((0, 0, 0, 0), False, True)
        )
    choice, stored = plan_for_memory_budget(
        model, model.backbone, _forward_loss(model, _batch()), 2**40
    )
    assert stored.stored_heads_peaks is None and stored.heads_seconds == 0
    assert choice.plan == MemoryPlan((2, 2, 2, 2), True, store_heads=None)


def test_planned_peaks_fit_and_are_predicted_within_3_percent(planned):
    model, optimizer, batch, _, figures = planned
    floor = figures.predict_peak(figures.floor())
    most = figures.predict_peak(MemoryPlan((2, 2, 2, 2), True, True))
    assert floor < most
    chosen = set()
    for budget in (floor, (floor + most) // 2, most):
        choice, _ = plan_for_memory_budget(
            model,
            model.backbone,
            _forward_loss(model, batch),
            budget,
            optimizer,
        )
        chosen.add(choice.plan)
        measured = choice.measured_peak_bytes
        assert choice.predicted_peak_bytes <= budget
        assert measured <= budget
        error = abs(choice.predicted_peak_bytes - measured) / measured
        assert error <= MAX_PREDICTION_ERROR, (choice, error)
    assert len(chosen) == 3  # the three budgets choose three plans


def test_backward_phases_of_every_earlier_block_are_measured(planned):
    """Depth 18: every block of stages 0-2 marks its backward phase (a
    BasicBlock transition recomputes through its module); the phases
    together hold the floor's whole step peak."""
    model, optimizer, batch, _, figures = planned
    assert len(figures.earlier_stage_peaks) == 3
    assert all(
        len(row) == 3 and all(peak > 0 for peak in row)
        for row in figures.earlier_stage_peaks
    )
    apply_plan(model, model.backbone, figures.floor())
    whole = step_peak(
        model,
        lambda: _forward_loss(model, batch)().backward(),
        torch.device('cpu'),
        optimizer_state(optimizer),
    )
    phases = max(
        figures.last_stage_peaks[0],
        *(max(row) for row in figures.earlier_stage_peaks),
    )
    assert phases == pytest.approx(whole, rel=1e-4)


def test_no_fitting_plan_raises_with_the_smallest_peak_and_remedies(planned):
    model, optimizer, batch, _, figures = planned
    floor = figures.predict_peak(figures.floor())
    plan = (model.backbone.stored_blocks, model.backbone.store_stem)
    heads_stored = not any(is_memory_saving(h) for h in segmentor_heads(model))
    with pytest.raises(MemoryBudgetError) as error:
        plan_for_memory_budget(
            model,
            model.backbone,
            _forward_loss(model, batch),
            int(floor * 0.99),
            optimizer,
        )
    message = str(error.value)
    assert f'{floor / MIB:.1f} MiB' in message
    for remedy in ('crop_size', 'batch_size', 'AmpOptimWrapper'):
        assert remedy in message
    # The model keeps the plan it had, nothing half-applied.
    assert (model.backbone.stored_blocks, model.backbone.store_stem) == plan
    assert heads_stored == (
        not any(is_memory_saving(h) for h in segmentor_heads(model))
    )
    assert not model.backbone.plan_pending


@pytest.mark.parametrize('budget', ['middle', 'most'])
def test_planning_then_training_equals_the_plan_set_by_hand(planned, budget):
    """Planning restores BN statistics, RNG and gradients: the first step
    after it is bit-equal to a model built with the chosen plan (with
    ``memory_saving_heads=None`` where the plan stores the heads)."""
    figures = planned[-1]
    floor = figures.predict_peak(figures.floor())
    most = figures.predict_peak(MemoryPlan((2, 2, 2, 2), True, True))
    planned_model = _segmentor(memory_budget='1GiB')
    batch = _batch(1)
    forward_loss = _forward_loss(planned_model, batch)
    optimizer = torch.optim.SGD(
        planned_model.parameters(), lr=0.1, momentum=0.9
    )
    rng = torch.get_rng_state()
    choice, _ = plan_for_memory_budget(
        planned_model,
        planned_model.backbone,
        forward_loss,
        (floor + most) // 2 if budget == 'middle' else most,
        optimizer,
    )
    assert torch.equal(torch.get_rng_state(), rng)
    assert all(p.grad is None for p in planned_model.parameters())
    if budget == 'middle':
        assert 0 < sum(choice.plan.stored_blocks) < 8  # a plan in between
    else:
        assert choice.plan.store_heads
    heads = dict(memory_saving_heads=None) if choice.plan.store_heads else {}
    by_hand = _segmentor(heads, **dict(choice.plan.as_config()))
    results = []
    for model in (planned_model, by_hand):
        torch.manual_seed(7)  # dropout in the decode head
        _forward_loss(model, batch)().backward()
        results.append(model)
    grads = [{n: p.grad for n, p in m.named_parameters()} for m in results]
    assert grads[0].keys() == grads[1].keys()
    for name, grad in grads[0].items():
        assert torch.equal(grad, grads[1][name]), name
    buffers = [dict(m.named_buffers()) for m in results]
    for name, buffer in buffers[0].items():
        assert torch.equal(buffer, buffers[1][name]), name
    # set_plan configures what building with the plan configures.
    for model in results:
        assert model.backbone.store_stem == choice.plan.store_stem
        assert choice.plan.store_heads == (
            not any(is_memory_saving(h) for h in segmentor_heads(model))
        )
    for name in planned_model.backbone.res_layers:
        planned_layer = getattr(planned_model.backbone, name)
        hand_layer = getattr(by_hand.backbone, name)
        assert planned_layer.stage.config == hand_layer.stage.config
        assert planned_layer.keep_transition == hand_layer.keep_transition


def test_planning_under_autocast_times_blocks_in_the_forward_precision(
    planned,
):
    """Under mixed precision the captured block inputs are bf16: timing
    them outside the training context would fail on fp32 weights."""
    model, optimizer, batch, _, figures = planned
    most = figures.predict_peak(MemoryPlan((2, 2, 2, 2), True, True))

    def context():
        return torch.autocast('cpu', dtype=torch.bfloat16)

    def forward_loss():
        with context():
            loss, _ = model.parse_losses(model.loss(*batch))
        return loss

    choice, bf16 = plan_for_memory_budget(
        model, model.backbone, forward_loss, most, optimizer, context=context
    )
    assert all(t > 0 for stage in bf16.block_seconds for t in stage)
    assert choice.measured_peak_bytes <= choice.predicted_peak_bytes
    # bf16 activations: the floor's step needs less than in float32.
    assert bf16.last_stage_peaks[0] < figures.last_stage_peaks[0]


def test_segmentor_budget_goes_to_an_mrevnet_backbone():
    model = _segmentor()
    assert model.backbone.memory_budget is None
    init_default_scope('mmseg')
    cfg = dict(
        type='MRevNetEncoderDecoder',
        memory_budget='8GiB',
        backbone=dict(type='ResNetV1c', depth=18),
        decode_head=dict(
            type='FCNHead', in_channels=512, channels=8, num_classes=2
        ),
    )
    with pytest.raises(ValueError, match="got type='ResNetV1c'"):
        MODELS.build(cfg)
    cfg['backbone'] = dict(type='MRevNetV1c', depth=18, memory_budget=0.5)
    with pytest.raises(ValueError, match='differ; set one of them'):
        MODELS.build(cfg)


DEMO = (
    'configs/demo/pspnet_mrevnet34-d8_1xb8-300iter_synthetic-cityscapes-'
    '128x256.py'
)


def _runner(root, work_dir, max_iters, resume=False):
    cfg = build_train_config(
        DEMO,
        work_dir=str(work_dir),
        resume=resume,
        cfg_options={
            'model.type': 'MRevNetEncoderDecoder',
            'model.backbone.memory_budget': '64GiB',
            'model.data_preprocessor.size': (64, 128),
            'train_dataloader.dataset.data_root': str(root),
            'train_dataloader.batch_size': 2,
            'train_dataloader.num_workers': 0,
            'train_dataloader.persistent_workers': False,
            'val_dataloader.dataset.data_root': str(root),
            'test_dataloader.dataset.data_root': str(root),
            'train_cfg.max_iters': max_iters,
            'train_cfg.val_interval': 100,
            'default_hooks.checkpoint.interval': 1,
            'log_level': 'INFO',
        },
    )
    return RUNNERS.build(cfg)


@pytest.mark.slow
def test_runner_plans_logs_trains_and_resumes_with_the_plan(tmp_path):
    """The one config line, through the Runner: plan, log, train, save
    the plan, resume with it."""
    root = tmp_path / 'data'
    generate_cityscapes(str(root), num_train=2, num_val=1, size=(64, 128))
    runner = _runner(root, tmp_path / 'work', max_iters=1)
    runner.train()
    log = ''.join(p.read_text() for p in (tmp_path / 'work').rglob('*.log'))
    backbone = runner.model.backbone
    assert not backbone.plan_pending
    assert 'memory_budget=' in log and 'memory plan: stored_blocks=' in log
    assert 'whole step peak predicted' in log and 'measured' in log
    assert f'stored_blocks={backbone.stored_blocks!r}' in log
    # 64 GiB holds everything: the heads store too.
    assert 'store_heads=True' in log and 'memory_saving_heads=None' in log
    assert not any(is_memory_saving(h) for h in segmentor_heads(runner.model))
    checkpoint = torch.load(
        tmp_path / 'work' / 'iter_1.pth', weights_only=True
    )
    assert checkpoint['meta']['memory_plan'] == dict(
        stored_blocks=list(backbone.stored_blocks),
        store_stem=backbone.store_stem,
        store_heads=True,
    )
    resumed = _runner(root, tmp_path / 'work', max_iters=2, resume=True)
    resumed.train()
    assert resumed.iter == 2
    assert resumed.model.backbone.stored_blocks == backbone.stored_blocks
    assert not any(is_memory_saving(h) for h in segmentor_heads(resumed.model))
    log = ''.join(p.read_text() for p in (tmp_path / 'work').rglob('*.log'))
    assert 'memory plan of the resumed checkpoint' in log


class _Runner:
    """What the hook reads of a resumed Runner."""

    def __init__(self, model, iteration):
        self.model, self.iter = model, iteration


@pytest.mark.parametrize(
    'plan',
    [
        dict(stored_blocks=[9, 0, 0, 0], store_stem=False),
        dict(stored_blocks=[1, 1]),
        dict(stored_blocks=[1, 1, 1, 1], store_stem=False, store_heads=1),
        'everything',
    ],
)
def test_a_bad_plan_in_checkpoint_meta_is_refused_by_name(plan):
    model = _segmentor(memory_budget='1GiB')
    hook = MRevNetMemoryBudgetHook()
    hook.after_load_checkpoint(None, dict(meta=dict(memory_plan=plan)))
    with pytest.raises(ValueError, match=r"meta\['memory_plan'\]"):
        hook.before_train_iter(_Runner(model, 1), 0)
    assert model.backbone.plan_pending


def test_a_saved_plan_is_reapplied_on_resume():
    model = _segmentor(memory_budget='1GiB')
    hook = MRevNetMemoryBudgetHook()
    plan = dict(stored_blocks=[1, 2, 0, 0], store_stem=True, store_heads=True)
    hook.after_load_checkpoint(None, dict(meta=dict(memory_plan=plan)))
    hook.before_train_iter(_Runner(model, 5), 0)
    assert model.backbone.stored_blocks == (1, 2, 0, 0)
    assert model.backbone.store_stem and not model.backbone.plan_pending
    assert not any(is_memory_saving(h) for h in segmentor_heads(model))
    saved = dict(meta={})
    hook.before_save_checkpoint(_Runner(model, 6), saved)
    assert saved['meta']['memory_plan'] == plan


def test_a_plan_saved_before_heads_were_planned_leaves_them_as_built():
    model = _segmentor(memory_budget='1GiB')
    hook = MRevNetMemoryBudgetHook()
    plan = dict(stored_blocks=[1, 1, 1, 1], store_stem=False)
    hook.after_load_checkpoint(None, dict(meta=dict(memory_plan=plan)))
    hook.before_train_iter(_Runner(model, 5), 0)
    assert model.backbone.stored_blocks == (1, 1, 1, 1)
    assert all(is_memory_saving(h) for h in segmentor_heads(model))
    saved = dict(meta={})
    hook.before_save_checkpoint(_Runner(model, 6), saved)
    assert saved['meta']['memory_plan'] == dict(plan, store_heads=False)


def test_block_timings_reach_blocks_that_run_by_chunks(monkeypatch):
    """Recomputed transition blocks of real width run by channel chunks,
    without their own ``__call__``; the planner still times every block
    (narrow blocks made chunkable by a small chunk)."""
    from mmrevnet.models.utils import res_layer

    monkeypatch.setattr(res_layer, 'CHANNEL_CHUNK', 4)
    torch.manual_seed(0)
    backbone = MRevNetV1c(depth=50, stem_channels=8, base_channels=4)
    backbone.train()
    assert res_layer._chunkable(backbone.layer1[0])
    inputs = torch.randn(2, 3, 32, 32)
    figures = measure_plan_figures(
        backbone,
        backbone,
        lambda: sum(out.mean() for out in backbone(inputs)),
        torch.device('cpu'),
    )
    assert all(t > 0 for stage in figures.block_seconds for t in stage)
    assert figures.stored_heads_peaks is None
    # The chunked transition blocks mark no phase of their own.
    for row in figures.earlier_stage_peaks:
        assert row[0] == 0 and all(peak > 0 for peak in row[1:])


def test_counted_forwards_do_not_keep_their_graph():
    """A ReLU saves its own output: packing that tensor itself would make
    a cycle through autograd's graph that the garbage collector cannot
    free, and every counted forward of the planner would stay in memory.
    """
    from mmrevnet.engine.memory_budget import _SavedBytes

    layer = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.ReLU())
    with _SavedBytes(layer.parameters()) as counter:
        out = layer(torch.randn(2, 4))
    # The input of the linear layer and the ReLU's output.
    assert counter.bytes == 2 * 2 * 4 * 4
    alive = weakref.ref(out)
    del out
    gc.collect()
    assert alive() is None
    with _SavedBytes(layer.parameters()):
        loss = layer(torch.randn(2, 4)).sum()
    with pytest.raises(RuntimeError, match='not differentiated'):
        loss.backward()
