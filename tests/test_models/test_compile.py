"""``torch.compile`` of a whole mmseg training step with the m-RevNet backbone.

mmengine's ``compile=True`` wraps ``model.train_step`` in ``torch.compile``
(default inductor backend). The memory-saving pieces (checkpointed stem and
transition blocks, the reversible stages, the recomputed heads) run eagerly
inside the compiled step, one graph break each; everything around them is
compiled. A tiny model keeps compilation short on a shared CPU.
"""

import copy

import pytest
import torch
from mmengine.optim import OptimWrapper
from mmengine.registry import DefaultScope
from mmengine.structures import PixelData
from mmseg.registry import MODELS
from mmseg.structures import SegDataSample
from torch.nn.modules.batchnorm import _BatchNorm

from mmrevnet.reversible import checkpointed_call
from mmrevnet.reversible.function import momentum_stage_memory_saving

pytestmark = pytest.mark.slow

SIZE = 32
NUM_CLASSES = 4
#: float32, inductor's fused kernels against eager ATen: relative error of
#: each parameter gradient (``max|g - g_ref| / max|g_ref|``) and of the BN
#: running statistics.
GRAD_TOL = 1e-4
BUFFER_TOL = 1e-5


def _segmentor():
    norm = dict(type='BN', requires_grad=True)
    with DefaultScope.overwrite_default_scope('mmseg'):
        return _build(norm)


def _build(norm):
    return MODELS.build(
        dict(
            type='MRevNetEncoderDecoder',
            memory_saving_heads='head',
            data_preprocessor=dict(
                type='SegDataPreProcessor',
                mean=[123.675, 116.28, 103.53],
                std=[58.395, 57.12, 57.375],
                size=(SIZE, SIZE),
            ),
            backbone=dict(
                type='MRevNetV1c',
                depth=18,
                stem_channels=8,
                base_channels=8,
                dilations=(1, 1, 2, 4),
                strides=(1, 2, 1, 1),
                contract_dilation=True,
                norm_cfg=norm,
                memory_saving=True,
                # Warm-started configs' F, relu(branch + x) - x; layer2
                # kept, so that its blocks are traced into the graph.
                residual_fn='block',
                stored_blocks=(0, 2, 0, 0),
            ),
            decode_head=dict(
                type='PSPHead',
                in_channels=64,
                in_index=3,
                channels=8,
                pool_scales=(2, 4),
                dropout_ratio=0.0,
                num_classes=NUM_CLASSES,
                norm_cfg=norm,
                align_corners=False,
                loss_decode=dict(type='CrossEntropyLoss', loss_weight=1.0),
            ),
            auxiliary_head=dict(
                type='FCNHead',
                in_channels=32,
                in_index=2,
                channels=8,
                num_convs=1,
                concat_input=False,
                dropout_ratio=0.0,
                num_classes=NUM_CLASSES,
                norm_cfg=norm,
                align_corners=False,
                loss_decode=dict(type='CrossEntropyLoss', loss_weight=0.4),
            ),
        )
    )


def _batch(seed=0):
    generator = torch.Generator().manual_seed(seed)
    inputs, samples = [], []
    for _ in range(2):
        inputs.append(
            torch.randint(0, 256, (3, SIZE, SIZE), generator=generator).to(
                torch.uint8
            )
        )
        sample = SegDataSample()
        sample.gt_sem_seg = PixelData(
            data=torch.randint(
                0, NUM_CLASSES, (1, SIZE, SIZE), generator=generator
            )
        )
        shape = (SIZE, SIZE)
        sample.set_metainfo(
            dict(img_shape=shape, ori_shape=shape, pad_shape=shape)
        )
        samples.append(sample)
    return dict(inputs=inputs, data_samples=samples)


class _BackwardOnly(OptimWrapper):
    """Keeps the gradients of ``train_step`` (no step, no zero_grad)."""

    def update_params(self, loss, step_kwargs=None, zero_kwargs=None):
        self.backward(loss)


def _relative(a, b):
    return ((a - b).abs().max() / b.abs().max().clamp_min(1e-30)).item()


def test_compiled_train_step_matches_eager():
    from torch._dynamo.utils import counters

    torch.manual_seed(0)
    eager = _segmentor().train()
    compiled = copy.deepcopy(eager)
    assert eager.backbone.memory_saving
    data = _batch()

    torch._dynamo.reset()
    counters.clear()
    step = torch.compile(compiled.train_step)
    losses = step(
        copy.deepcopy(data),
        _BackwardOnly(torch.optim.SGD(compiled.parameters())),
    )

    # The eager step second: the compiled one made the first calls of the
    # eager-only wrappers, as in mmengine's compile=True.
    eager_losses = eager.train_step(
        copy.deepcopy(data), _BackwardOnly(torch.optim.SGD(eager.parameters()))
    )
    assert eager_losses.keys() == losses.keys()
    for key in eager_losses:
        assert _relative(losses[key], eager_losses[key]) <= GRAD_TOL, key
    for (name, p_ref), p in zip(
        eager.named_parameters(), compiled.parameters()
    ):
        assert p_ref.grad is not None, name
        assert _relative(p.grad, p_ref.grad) <= GRAD_TOL, name
    # BN running statistics updated once per step, as in eager mode.
    for (name, m_ref), m in zip(eager.named_modules(), compiled.modules()):
        if isinstance(m_ref, _BatchNorm):
            assert torch.equal(
                m.num_batches_tracked, m_ref.num_batches_tracked
            )
            assert m.num_batches_tracked.item() == 1, name
            for buffer in ('running_mean', 'running_var'):
                error = _relative(getattr(m, buffer), getattr(m_ref, buffer))
                assert error <= BUFFER_TOL, (name, buffer, error)

    # The only graph breaks: the eager memory-saving calls (stem and
    # transition checkpoints, reversible stages, recomputed heads) and the
    # creation of their wrappers, mmseg's accuracy (data-dependent nonzero)
    # and the backward call.
    breaks = counters['graph_break']
    eager_calls = {
        checkpointed_call.__name__,
        # What checkpointed_call recomputes through (forward and backward).
        '_call_with_arguments',
        momentum_stage_memory_saving.__name__,
        # The backward of every memory-saving Function (the stage, the
        # concat-free heads, the banded loss, the
        # chunked conv3/norm3 of the widest blocks); which of them dynamo
        # meets depends on what earlier compiled code already traced.
        'MomentumStageFunction.backward',
        '_BandedCrossEntropy.backward',
        '_ConcatConvFunction.backward',
        '_ChunkedConvNorm.backward',
    }
    for reason in breaks:
        assert (
            any(
                f'function `<function {name} ' in reason
                for name in eager_calls
            )
            or 'aten.nonzero' in reason
            # The first call of each eager wrapper creates it (lazily, so
            # that importing mmrevnet does not import torch._dynamo).
            or reason.startswith('Call to `torch.compiler.disable()`')
            or 'Tensor.backward()' in reason
        ), reason
