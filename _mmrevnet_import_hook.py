"""Start-up import hook of mmrevnet (see :mod:`mmrevnet.compat`).

Installed with mmrevnet next to ``mmrevnet-import-hook.pth``, whose one
line calls :func:`install` in every Python process of the environment.
That only puts :class:`ImportHook` first on ``sys.meta_path``: nothing of
mmcv, mmengine, mmseg or mmrevnet is imported at start-up. The hook
answers for ``mmcv.ops`` and ``mmengine.config.utils`` only, with the
logic of ``mmrevnet/compat.py``, which it loads from its file when one of
those two modules is first imported (the ``mmrevnet`` package itself
imports mmseg, so it cannot be imported from inside mmseg's imports).
"""

import os
import sys

_HOOKED = frozenset(('mmcv.ops', 'mmengine.config.utils'))
# compat.py under a private name: loaded without running mmrevnet/__init__.
_COMPAT_NAME = '_mmrevnet_import_hook_compat'


def _compat():
    """mmrevnet's compat module, or None where mmrevnet is gone."""
    module = sys.modules.get('mmrevnet.compat') or sys.modules.get(
        _COMPAT_NAME
    )
    if module is not None:
        return module
    import importlib.util

    here = os.path.dirname(os.path.abspath(__file__))
    path = os.path.join(here, 'mmrevnet', 'compat.py')
    if not os.path.isfile(path):
        return None
    spec = importlib.util.spec_from_file_location(_COMPAT_NAME, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[_COMPAT_NAME] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        del sys.modules[_COMPAT_NAME]
        raise
    return module


def _installed_package_spec(fullname, path, target):
    """The installed ``mmrevnet`` where a folder of that name shadows it.

    A script next to a clone folder named ``mmrevnet/`` (the repository
    root, which has no ``__init__.py``) would import that folder as an
    empty namespace package, and an editable install's finder, which comes
    after the path finder, would never be asked.
    """
    import importlib.machinery

    found = importlib.machinery.PathFinder.find_spec(fullname, path)
    if found is None or found.origin is not None:
        return None  # a real package or module: the normal import
    for finder in sys.meta_path:
        if finder is ImportHook or finder is importlib.machinery.PathFinder:
            continue
        find_spec = getattr(finder, 'find_spec', None)
        spec = find_spec(fullname, path, target) if find_spec else None
        if spec is not None and spec.origin is not None:
            return spec
    return None


class ImportHook:
    """Meta-path finder for ``mmcv.ops`` (mmcv-lite), mmengine's config
    package table and a shadowed ``mmrevnet``; None (normal import) for
    every other name."""

    @classmethod
    def find_spec(cls, fullname, path=None, target=None):
        if fullname == 'mmrevnet':
            return _installed_package_spec(fullname, path, target)
        if fullname not in _HOOKED:
            return None
        compat = _compat()
        if compat is None:
            return None
        return compat.find_hooked_spec(cls, fullname, path, target)


def install():
    """Put :class:`ImportHook` first on ``sys.meta_path`` (idempotent)."""
    if ImportHook not in sys.meta_path:
        sys.meta_path.insert(0, ImportHook)
