"""The documented compatibility shims: mmcv-lite ops and the config scope.

**mmcv-lite and mmseg 1.2.x.** mmseg imports ``point_sample`` and
``sigmoid_focal_loss`` from ``mmcv.ops`` without a guard, and
``mmcv/ops/__init__.py`` loads the compiled extension ``mmcv._ext``,
which mmcv-lite does not ship, so ``import mmseg.models`` fails. When
(and only when) ``mmcv`` is installed without ``mmcv._ext``, ``mmcv.ops``
becomes a lightweight package: its pure-PyTorch submodules (such as
``mmcv.ops.point_sample``) import normally from mmcv's own files,
``sigmoid_focal_loss`` is a function that raises a clear error when
called, and every other compiled op raises ``ModuleNotFoundError`` on
import, which is what mmseg's guarded imports expect. With full mmcv
installed nothing is touched.

**When it applies.** ``import mmrevnet`` applies it at once
(:func:`patch_mmcv_lite_ops`). Installing mmrevnet (``pip install -e .``
or a wheel) also puts ``mmrevnet-import-hook.pth`` into site-packages,
so that mmseg's own tools and APIs (``from mmseg.apis import
init_model``, ``tools/misc/print_config.py`` on a config whose
``custom_imports`` names mmrevnet, ...) work whatever is imported first.
Its one line registers ``_mmrevnet_import_hook.ImportHook``, a meta-path
finder that imports nothing at start-up and acts on two module names
only:

- ``mmcv.ops``: builds the lightweight package above, only where
  ``mmcv._ext`` is missing (with full mmcv it returns None and mmcv's own
  ``mmcv.ops`` loads);
- ``mmengine.config.utils``: after mmengine's module ran, adds
  ``'mmrevnet': 'mmrevnet'`` to its ``MODULE2PACKAGE`` table (if absent),
  the list of packages mmengine accepts in ``_base_ = 'pkg::path'``, so
  ``_base_ = 'mmrevnet::pspnet/...'`` finds the configs shipped in
  ``mmrevnet/.mim/configs``. No entry of another package is changed.

This module imports only the standard library: the hook loads it before
(and without) the ``mmrevnet`` package, whose ``__init__`` imports mmseg.

Checkpoint loading under torch >= 2.6 is not patched here: see
:mod:`mmrevnet.engine.checkpoint`, which allows mmengine's checkpoint
objects only while a checkpoint is loaded.
"""

import importlib
import importlib.machinery
import importlib.util
import os
import sys
import types

# Pure-PyTorch modules of mmcv.ops that mmseg imports unguarded.
_PURE_TORCH_OPS = {'point_sample': 'point_sample'}

#: The names the import hook acts on; every other import passes untouched.
HOOKED_MODULES = ('mmcv.ops', 'mmengine.config.utils')

#: ``MODULE2PACKAGE`` entry that lets mmengine resolve ``mmrevnet::``.
CONFIG_PACKAGE = ('mmrevnet', 'mmrevnet')


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


def _missing_compiled_op(name: str):
    """Module ``__getattr__`` of the lite ``mmcv.ops``."""
    if name.startswith('__'):
        raise AttributeError(name)
    raise ModuleNotFoundError(
        f'mmcv.ops.{name} is a compiled op and mmcv-lite ships no '
        'compiled extension (mmcv._ext); install the full mmcv package.',
        name='mmcv._ext',
    )


class _LiteOpsLoader:
    """Loader of the lightweight ``mmcv.ops`` (see the module docstring)."""

    def create_module(self, spec):
        return None  # the default module object

    def exec_module(self, ops: types.ModuleType) -> None:
        ops.__doc__ = (
            'mmcv.ops without compiled extension, registered by '
            'mmrevnet.compat (pure-PyTorch ops only).'
        )
        ops.__mmrevnet_patched__ = True
        # The package is in sys.modules already: its submodules import.
        for attr, submodule in _PURE_TORCH_OPS.items():
            module = importlib.import_module(f'mmcv.ops.{submodule}')
            setattr(ops, attr, getattr(module, attr))
        ops.sigmoid_focal_loss = _unavailable_op('sigmoid_focal_loss')
        ops.__getattr__ = _missing_compiled_op


def _lite_ops_spec():
    """Spec of the lightweight ``mmcv.ops``; None where it is not needed."""
    if not _mmcv_ops_compiled_missing():
        return None
    mmcv_dir = importlib.util.find_spec('mmcv').submodule_search_locations
    spec = importlib.machinery.ModuleSpec(
        'mmcv.ops', _LiteOpsLoader(), is_package=True
    )
    spec.submodule_search_locations = [
        os.path.join(path, 'ops') for path in mmcv_dir
    ]
    return spec


def patch_mmcv_lite_ops() -> bool:
    """Make ``from mmcv.ops import point_sample`` work with mmcv-lite.

    Returns:
        bool: Whether a patch was applied (False where ``mmcv.ops`` was
        imported already, by the import hook or otherwise, or where full
        mmcv is installed).
    """
    if 'mmcv.ops' in sys.modules:
        return False
    spec = _lite_ops_spec()
    if spec is None:
        return False
    import mmcv

    ops = importlib.util.module_from_spec(spec)
    sys.modules['mmcv.ops'] = ops
    try:
        spec.loader.exec_module(ops)
    except BaseException:
        del sys.modules['mmcv.ops']
        raise
    mmcv.ops = ops
    return True


def register_config_package(module2package: dict) -> None:
    """Let mmengine resolve ``_base_ = 'mmrevnet::...'``.

    Args:
        module2package (dict): mmengine's ``MODULE2PACKAGE`` table; only
            the ``mmrevnet`` entry is added, and only if absent.
    """
    module2package.setdefault(*CONFIG_PACKAGE)


class _RunAfter:
    """Loader wrapper: run the wrapped loader, then ``after(module)``."""

    def __init__(self, loader, after):
        self._loader = loader
        self._after = after

    def __getattr__(self, name):
        # get_source, get_filename, ...: what tracebacks and inspect use.
        return getattr(self._loader, name)

    def create_module(self, spec):
        return self._loader.create_module(spec)

    def exec_module(self, module):
        self._loader.exec_module(module)
        self._after(module)


def find_hooked_spec(finder, fullname, path=None, target=None):
    """The import hook's answer for ``fullname`` (see the docstring).

    Args:
        finder: The hook itself, skipped when the other finders are asked.
        fullname (str): Name of the module being imported.
        path (list, optional): The parent package's ``__path__``.
        target (module, optional): Module being reloaded, if any.

    Returns:
        ModuleSpec | None: None lets the normal import machinery go on.
    """
    if fullname == 'mmcv.ops':
        return _lite_ops_spec()
    if fullname != 'mmengine.config.utils':
        return None
    for other in sys.meta_path:
        if other is finder or not hasattr(other, 'find_spec'):
            continue
        spec = other.find_spec(fullname, path, target)
        if spec is not None:
            break
    else:
        return None
    if spec.loader is None or not hasattr(spec.loader, 'exec_module'):
        return None

    def register(module):
        register_config_package(module.MODULE2PACKAGE)

    spec.loader = _RunAfter(spec.loader, register)
    return spec


def apply_all() -> None:
    """Apply every shim; each is a no-op where not needed.

    ``mmengine.config.utils`` is imported by ``import mmrevnet`` (through
    mmengine) before this runs, so the config package is registered here
    for processes without the import hook.
    """
    patch_mmcv_lite_ops()
    utils = sys.modules.get('mmengine.config.utils')
    if utils is not None:
        register_config_package(utils.MODULE2PACKAGE)
