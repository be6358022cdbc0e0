"""The mmcv-lite shim: the one change ``import mmrevnet`` makes.

**mmcv-lite and mmseg 1.2.x.** mmseg imports ``point_sample`` and
``sigmoid_focal_loss`` from ``mmcv.ops`` without a guard, and
``mmcv/ops/__init__.py`` loads the compiled extension ``mmcv._ext``,
which mmcv-lite does not ship, so ``import mmseg.models`` fails. When
(and only when) ``mmcv`` is installed without ``mmcv._ext``, we register
a lightweight ``mmcv.ops`` package: its pure-PyTorch submodules (such as
``mmcv.ops.point_sample``) import normally from mmcv's own files,
``sigmoid_focal_loss`` is a function that raises a clear error when
called, and every other compiled op raises ``ModuleNotFoundError`` on
import, which is what mmseg's guarded imports expect. With full mmcv
installed nothing is touched.

Checkpoint loading under torch >= 2.6 is not patched here: see
:mod:`mmrevnet.engine.checkpoint`, which allows mmengine's checkpoint
objects only while a checkpoint is loaded.
"""

import importlib
import importlib.util
import os
import sys
import types

# Pure-PyTorch modules of mmcv.ops that mmseg imports unguarded.
_PURE_TORCH_OPS = {'point_sample': 'point_sample'}


def _mmcv_ops_compiled_missing() -> bool:
    """True when mmcv is importable but its compiled ``_ext`` is not."""
    try:
        mmcv_spec = importlib.util.find_spec('mmcv')
    except (ImportError, ValueError):
        return False
    if mmcv_spec is None:
        return False
    return importlib.util.find_spec('mmcv._ext') is None


def _unavailable_op(name: str):

    def raise_unavailable(*args, **kwargs):
        raise RuntimeError(
            f'mmcv.ops.{name} needs the compiled ops of the full mmcv '
            'package, and the installed mmcv (mmcv-lite) has none. '
            'Install mmcv instead of mmcv-lite to use it.'
        )

    raise_unavailable.__name__ = name
    return raise_unavailable


def patch_mmcv_lite_ops() -> bool:
    """Make ``from mmcv.ops import point_sample`` work with mmcv-lite.

    Returns:
        bool: Whether a patch was applied.
    """
    if 'mmcv.ops' in sys.modules or not _mmcv_ops_compiled_missing():
        return False
    import mmcv

    ops_dir = os.path.join(os.path.dirname(mmcv.__file__), 'ops')
    ops = types.ModuleType('mmcv.ops')
    ops.__doc__ = (
        'mmcv.ops without compiled extension, registered by '
        'mmrevnet.compat (pure-PyTorch ops only).'
    )
    ops.__path__ = [ops_dir]
    ops.__package__ = 'mmcv.ops'
    ops.__mmrevnet_patched__ = True
    sys.modules['mmcv.ops'] = ops
    mmcv.ops = ops
    for attr, submodule in _PURE_TORCH_OPS.items():
        module = importlib.import_module(f'mmcv.ops.{submodule}')
        setattr(ops, attr, getattr(module, attr))
    ops.sigmoid_focal_loss = _unavailable_op('sigmoid_focal_loss')

    def __getattr__(name):  # noqa: N807 (module-level __getattr__)
        if name.startswith('__'):
            raise AttributeError(name)
        raise ModuleNotFoundError(
            f'mmcv.ops.{name} is a compiled op and mmcv-lite ships no '
            'compiled extension (mmcv._ext); install the full mmcv package.',
            name='mmcv._ext',
        )

    ops.__getattr__ = __getattr__
    return True


def apply_all() -> None:
    """Apply every shim; each is a no-op where not needed."""
    patch_mmcv_lite_ops()
