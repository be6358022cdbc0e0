"""Shared test setup.

``import mmrevnet`` first: it applies the mmcv-lite ``mmcv.ops`` shim
before any test module imports mmseg.
"""

import mmrevnet  # noqa: F401
