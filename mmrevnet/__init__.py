"""mmrevnet: m-RevNet reversible momentum backbones for OpenMMLab."""

from . import compat
from .version import __version__, version_info

compat.apply_all()

from . import engine, models  # noqa: E402,F401  (registration)

__all__ = ['__version__', 'version_info', 'compat']
