"""Shared test setup.

``import mmrevnet`` first: it applies the compatibility shims (mmcv-lite
ops, mmengine checkpoint globals) before any test module imports mmseg.
"""

import mmrevnet  # noqa: F401
