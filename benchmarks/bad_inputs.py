"""Catalogue of invalid inputs and the errors they give.

Shared by ``tests/test_models/test_backbones/test_bad_inputs.py`` (each
case is a test) and ``tools/analysis_tools/bad_input_table.py`` (writes
``docs/bad_input.md``), so that the documented messages are the ones the
code raises.
"""

import os
from typing import Callable, List, NamedTuple, Optional, Tuple, Type

import torch


class BadInput(NamedTuple):
    """One invalid input.

    Attributes:
        what (str): The input, as a user would write it.
        run (Callable): Builds / runs it; must raise.
        error (type): Expected exception type.
        match (str): Regex the message must contain.
    """

    what: str
    run: Callable[[], object]
    error: Type[BaseException]
    match: str


def _backbone(**kwargs):
    from mmrevnet.models import MRevNetV1c

    return MRevNetV1c(**kwargs)


def _train_step(model, x):
    model.train()
    outs = model(x)
    sum(o.sum() for o in outs).backward()


def _non_finite_input():
    x = torch.randn(2, 3, 32, 32)
    x[0, 0, 0, 0] = float('nan')
    # The check is part of drift tracking (debugging: it syncs the host).
    _train_step(_backbone(depth=18, track_drift=True), x)


def _wrong_channels():
    _backbone(depth=18).eval()(torch.randn(1, 4, 32, 32))


def _non_finite_loss():
    from mmengine.hooks import Hook  # noqa: F401  (mmengine present)

    from mmrevnet.engine import MRevNetCheckInvalidLossHook

    class _Runner:
        iter = 6

    MRevNetCheckInvalidLossHook().after_train_iter(
        _Runner(), 0, outputs={'loss': torch.tensor(float('nan'))}
    )


def _double_backward():
    from torch import nn

    from mmrevnet.reversible import MomentumSequential

    stage = MomentumSequential([nn.Linear(4, 4)] * 3, gamma=0.9, name='toy')
    x = torch.randn(2, 4, requires_grad=True)
    (grad,) = torch.autograd.grad(stage(x).sum(), x, create_graph=True)
    grad.sum().backward()


CASES: List[BadInput] = [
    BadInput('depth=42', lambda: _backbone(depth=42), KeyError, 'depth'),
    BadInput(
        'gamma=1.0',
        lambda: _backbone(depth=50, gamma=1.0),
        ValueError,
        r'gamma must be in \(0, 1\)',
    ),
    BadInput(
        'gamma=0 with memory_saving=True',
        lambda: _backbone(depth=50, gamma=0.0),
        ValueError,
        'not invertible',
    ),
    BadInput(
        "gamma='0.9'",
        lambda: _backbone(depth=50, gamma='0.9'),
        TypeError,
        'gamma must be a real number',
    ),
    BadInput(
        'gamma=0.05, depth=152 (too small for 35 blocks)',
        lambda: _backbone(depth=152, gamma=0.05),
        ValueError,
        'too small for the memory-saving stage',
    ),
    BadInput(
        'out_indices=(4,)',
        lambda: _backbone(depth=50, out_indices=(4,)),
        ValueError,
        'out_indices',
    ),
    BadInput(
        'num_stages=5',
        lambda: _backbone(depth=50, num_stages=5),
        ValueError,
        'num_stages',
    ),
    BadInput(
        'strides=(1, 2) with num_stages=4',
        lambda: _backbone(depth=50, strides=(1, 2)),
        ValueError,
        'strides must be 4',
    ),
    BadInput(
        'dilations=(1, 1, 1)',
        lambda: _backbone(depth=50, dilations=(1, 1, 1)),
        ValueError,
        'dilations must be 4',
    ),
    BadInput(
        'frozen_stages=5',
        lambda: _backbone(depth=50, frozen_stages=5),
        ValueError,
        'frozen_stages',
    ),
    BadInput(
        "dcn=dict(type='DCNv2')",
        lambda: _backbone(depth=50, dcn=dict(type='DCNv2')),
        NotImplementedError,
        'does not support dcn',
    ),
    BadInput(
        "plugins=[dict(cfg=dict(type='ContextBlock'), ...)]",
        lambda: _backbone(
            depth=50,
            plugins=[
                dict(cfg=dict(type='ContextBlock'), position='after_conv3')
            ],
        ),
        NotImplementedError,
        'does not support plugins',
    ),
    BadInput(
        "pretrained='a.pth' and init_cfg=dict(type='Pretrained', ...)",
        lambda: _backbone(
            depth=50,
            pretrained='a.pth',
            init_cfg=dict(type='Pretrained', checkpoint='a.pth'),
        ),
        AssertionError,
        'init_cfg and pretrained cannot be setting at the same time',
    ),
    BadInput(
        "residual_fn='identity'",
        lambda: _backbone(depth=50, residual_fn='identity'),
        ValueError,
        'residual_fn must be one of',
    ),
    BadInput(
        "style='tf'",
        lambda: _backbone(depth=50, style='tf'),
        ValueError,
        'style',
    ),
    BadInput(
        'multi_grid=(1, 2) for a 3-block last stage',
        lambda: _backbone(depth=50, multi_grid=(1, 2)),
        ValueError,
        'multi_grid',
    ),
    BadInput(
        'max_amplification=1.0',
        lambda: _backbone(depth=50, max_amplification=1.0),
        ValueError,
        'max_amplification must be a number > 1',
    ),
    BadInput(
        'input with 4 channels (in_channels=3)',
        _wrong_channels,
        ValueError,
        'in_channels=3',
    ),
    BadInput(
        'input containing NaN (training step, track_drift=True)',
        _non_finite_input,
        FloatingPointError,
        "forward pass, first in momentum stage 'layer1', at the stage input",
    ),
    BadInput(
        'non-finite loss (MRevNetCheckInvalidLossHook)',
        _non_finite_loss,
        FloatingPointError,
        'loss became nan',
    ),
    BadInput(
        'double backward (create_graph=True) through a memory-saving stage',
        _double_backward,
        RuntimeError,
        'double backward',
    ),
]


# ---------------------------------------------------------------------------
# Hostile checkpoint files (the catalogue of tests/test_engine), each loaded
# through the project's loader. Each is also loaded in a child process with
# an address-space cap, its peak RSS and time measured
# (tests/test_engine/test_checkpoint.py::test_hostile_files_are_cheap).
# ---------------------------------------------------------------------------

_REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

#: Crafted file -> how the table describes it.
HOSTILE_FILES = {
    'history_buffer_reduce_amplified': 'REDUCE of HistoryBuffer on 40 '
    'shared tuples (2**40 leaves, 1 KB file)',
    'history_buffer_reduce_object': 'REDUCE of HistoryBuffer on a list of '
    'str (object-dtype array)',
    'history_buffer_reduce_junk_length': 'REDUCE of HistoryBuffer([1.0], '
    "[1], 'junk')",
    'history_buffer_newobj_args': 'NEWOBJ of HistoryBuffer with arguments',
    'history_buffer_never_built': 'NEWOBJ of HistoryBuffer without BUILD',
    'array_shape_2e32x2e32': 'numpy array of shape (2**32, 2**32), 0 bytes',
    'array_shape_2e61x8': 'numpy array of shape (2**61, 8), 0 bytes',
    'array_shape_2e64': 'numpy array of shape (2**64,), 0 bytes',
    'dtype_newobj_without_init': 'NEWOBJ of numpy.dtype without arguments',
    'dtype_newobj_object': "NEWOBJ of numpy.dtype('O8')",
    'ndarray_reduce': 'REDUCE of numpy.ndarray((2**40,))',
    'ndarray_newobj': 'NEWOBJ of numpy.ndarray((2**40,))',
    'scalar_without_bytes': 'numpy scalar without its bytes',
    'shared_array_copies': 'one 1 MiB array shared by 400 HistoryBuffers',
    'shared_reference_amplification': 'optimizer state of 60 shared tuples '
    '(2**60 entries)',
    'reference_cycle': 'a list that holds itself',
    'deep_nesting': 'lists nested 100000 deep',
    'meta_config_code': "meta['config'] that runs os.system (mmengine's "
    'resume executes it)',
    'parameter_forged_class': '_rebuild_parameter_with_state setting '
    '__class__',
}


def _crafted_module():
    import importlib.util

    spec = importlib.util.spec_from_file_location(
        'crafted_checkpoints',
        os.path.join(_REPO, 'tests', 'test_engine', 'crafted_checkpoints.py'),
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _load_hostile(name: str):
    """Write the crafted file in a scratch dir and load it from there.

    Relative paths keep the message the same wherever it runs.
    """
    import contextlib
    import tempfile

    from mmrevnet.engine import load_runner_checkpoint

    crafted = _crafted_module()
    with tempfile.TemporaryDirectory() as folder:
        with contextlib.chdir(folder):
            crafted.craft(name, f'{name}.pth', 'payload_ran')
            try:
                load_runner_checkpoint(f'{name}.pth')
            finally:
                if os.path.exists('payload_ran'):
                    raise AssertionError(f'{name}: the payload ran')


def _hostile_case(name: str, what: str) -> BadInput:
    from mmrevnet.engine import UntrustedCheckpointError

    return BadInput(
        f'checkpoint: {what}',
        lambda: _load_hostile(name),
        UntrustedCheckpointError,
        'Refused to load the checkpoint',
    )


CASES += [_hostile_case(name, what) for name, what in HOSTILE_FILES.items()]


def run_case(case: BadInput) -> Tuple[Optional[type], str]:
    """Run one case; returns the exception type and message it raised."""
    try:
        case.run()
    except Exception as error:  # noqa: BLE001 (we report whatever it is)
        return type(error), str(error)
    return None, ''


def markdown_table(cases: List[BadInput] = CASES) -> str:
    """The cases and the exact errors they give, as a markdown table."""
    lines = ['| invalid input | error | message |', '|---|---|---|']
    for case in cases:
        error, message = run_case(case)
        name = 'no error' if error is None else error.__name__
        message = message.replace('|', '\\|').replace('\n', ' ')
        lines.append(f'| `{case.what}` | {name} | {message} |')
    return '\n'.join(lines) + '\n'
