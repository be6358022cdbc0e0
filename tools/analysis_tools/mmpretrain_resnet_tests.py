"""Run mmpretrain's own ResNet backbone tests against MRevNet.

mmpretrain's tests are not installed with the package; take the file from
its repository (``tests/test_models/test_backbones/test_resnet.py``)::

    python tools/analysis_tools/mmpretrain_resnet_tests.py \\
        path/to/test_resnet.py --map-errors --offline-torchvision

The file is collected by pytest as it is; before its tests run, its names
``ResNet``, ``ResNetV1c`` and ``ResNetV1d`` are rebound to ``MRevNet``,
``MRevNetV1c`` and ``MRevNetV1d`` with mmpretrain's default
``out_indices=(3,)``. Only the backbone tests (``test_resnet*``) run; the
others test mmpretrain's block classes, which MRevNet does not use.

``--map-errors`` turns the ``ValueError`` MRevNet raises for a bad argument
into the ``AssertionError`` mmpretrain's ResNet raises, so that a test
continues past those checks. ``--offline-torchvision`` puts a randomly
initialised torchvision ResNet-50 where ``torchvision://resnet50`` is
looked up (a temporary ``TORCH_HOME``), for machines without network.
The exit status is pytest's.
"""

import argparse
import os
import sys
import tempfile

import pytest

import mmrevnet  # noqa: F401  (shims and registration before mmseg loads)
from mmrevnet.models import MRevNet, MRevNetV1c, MRevNetV1d

# mmengine's torchvision:// lookup for ResNet-50 (torchvision >= 0.13).
_TORCHVISION_RESNET50 = 'resnet50-0676ba61.pth'


def parse_args(argv=None) -> argparse.Namespace:
    """Parse the command line.

    Args:
        argv (list[str], optional): Arguments; None reads ``sys.argv``.

    Returns:
        argparse.Namespace: The parsed arguments.
    """
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument('test_file', help="mmpretrain's test_resnet.py")
    parser.add_argument(
        '--map-errors',
        action='store_true',
        help='raise AssertionError where MRevNet raises ValueError',
    )
    parser.add_argument(
        '--offline-torchvision',
        action='store_true',
        help='serve torchvision://resnet50 from random weights, offline',
    )
    parser.add_argument(
        '--all',
        action='store_true',
        help="also run the tests of mmpretrain's block classes",
    )
    return parser.parse_args(argv)


def _adapter(backbone, map_errors: bool):
    def build(depth, out_indices=(3,), **kwargs):
        try:
            return backbone(depth=depth, out_indices=out_indices, **kwargs)
        except ValueError as error:
            if map_errors:
                raise AssertionError(str(error)) from error
            raise

    build.__name__ = backbone.__name__
    return build


class RebindPlugin:
    """pytest plugin: rebind the test module's backbones before running.

    Args:
        map_errors (bool): Raise ``AssertionError`` for ``ValueError``.
        backbone_tests_only (bool): Deselect tests not named
            ``test_resnet*``. Defaults to True.
    """

    def __init__(self, map_errors: bool, backbone_tests_only: bool = True):
        self.backbone_tests_only = backbone_tests_only
        self.adapters = dict(
            ResNet=_adapter(MRevNet, map_errors),
            ResNetV1c=_adapter(MRevNetV1c, map_errors),
            ResNetV1d=_adapter(MRevNetV1d, map_errors),
        )

    def pytest_collection_modifyitems(self, config, items):
        """Keep the backbone tests; rebind the names in their modules."""
        if self.backbone_tests_only:
            keep = [i for i in items if i.name.startswith('test_resnet')]
            config.hook.pytest_deselected(
                items=[i for i in items if i not in keep]
            )
            items[:] = keep
        for item in items:
            module = getattr(item, 'module', None)
            for name, adapter in self.adapters.items():
                if module is not None and hasattr(module, name):
                    setattr(module, name, adapter)


def _offline_torchvision(folder: str) -> None:
    import torch
    import torchvision

    checkpoints = os.path.join(folder, 'hub', 'checkpoints')
    os.makedirs(checkpoints, exist_ok=True)
    torch.save(
        torchvision.models.resnet50().state_dict(),
        os.path.join(checkpoints, _TORCHVISION_RESNET50),
    )
    os.environ['TORCH_HOME'] = folder


def main(argv=None) -> int:
    """Run the tests; returns pytest's exit status."""
    args = parse_args(argv)
    with tempfile.TemporaryDirectory() as folder:
        if args.offline_torchvision:
            _offline_torchvision(folder)
        return int(
            pytest.main(
                [
                    args.test_file,
                    '-p',
                    'no:cacheprovider',
                    '-q',
                    '-rA',
                ],
                plugins=[RebindPlugin(args.map_errors, not args.all)],
            )
        )


if __name__ == '__main__':
    sys.exit(main())
