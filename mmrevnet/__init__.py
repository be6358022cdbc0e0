"""mmrevnet: m-RevNet reversible momentum backbones for OpenMMLab.

``import mmrevnet`` (what a config's ``custom_imports`` does) registers the
backbones, hooks, runner and wrappers in MMEngine's registries and applies
the documented shims of :mod:`.compat` (mmcv-lite's ``mmcv.ops``, a no-op
with full mmcv, and the ``mmrevnet::`` config scope); it changes nothing
else in the process. Without MMEngine installed only
the torch-only core, :mod:`mmrevnet.reversible`, is available.
"""

from .version import __version__, version_info


def _mmengine_installed() -> bool:
    try:
        import mmengine  # noqa: F401
    except ModuleNotFoundError as error:
        if error.name != 'mmengine':
            raise
        return False
    return True


if _mmengine_installed():
    from . import compat

    compat.apply_all()

    from . import engine, models  # noqa: E402,F401  (registration)

__all__ = ['__version__', 'version_info']
