"""Convert a ResNet checkpoint (mmseg, mmpretrain, torchvision) for MRevNet.

Examples::

    # torchvision ResNet-50 -> MRevNet-50 (7x7 stem; depth and variant are
    # read from the checkpoint)
    python tools/model_converters/resnet_to_mrevnet.py \\
        resnet50.pth mrevnet50.pth
    # mmpretrain ResNetV1c-50 classifier -> MRevNetV1c-50
    python tools/model_converters/resnet_to_mrevnet.py \\
        resnetv1c50_8xb32_in1k.pth mrevnetv1c50.pth --depth 50 --variant v1c

The source library, the depth and the variant are detected from the keys
unless given. A checkpoint that does not fill the target exactly (missing
or unexpected keys) is refused: nothing is written and the exit status is
1 (``--non-strict`` writes the partial result, with a warning); a tensor
whose shape does not fit the target is always refused. The output is
``{'state_dict': ..., 'meta': ...}``; use it with
``init_cfg=dict(type='Pretrained', checkpoint=DST)`` on the backbone. An
existing DST is not replaced unless ``--force`` is given. Every refusal
(including a source file refused as untrusted) is one ``error:`` line and
exit status 1. See :mod:`tools.model_converters.convert`.
"""

import argparse
import os.path as osp
import sys

_REPO = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
if _REPO not in sys.path:
    sys.path.insert(0, _REPO)

from tools.model_converters.convert import (  # noqa: E402
    SOURCES,
    VARIANTS,
    ConversionError,
    ConversionResult,
    convert_checkpoint,
)


def parse_args(argv=None) -> argparse.Namespace:
    """Parse the command line.

    Args:
        argv (list[str], optional): Arguments; None reads ``sys.argv``.
            Defaults to None.

    Returns:
        argparse.Namespace: The parsed arguments.
    """
    parser = argparse.ArgumentParser(
        description='Convert a ResNet checkpoint into an MRevNet checkpoint',
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument('src', help='source checkpoint (path or URL)')
    parser.add_argument('dst', help='where to save the MRevNet checkpoint')
    parser.add_argument(
        '--depth',
        type=int,
        default=None,
        choices=(18, 34, 50, 101, 152),
        help='depth of the target MRevNet (default: from the checkpoint)',
    )
    parser.add_argument(
        '--variant',
        choices=('auto',) + tuple(VARIANTS),
        default='auto',
        help='target: plain (MRevNet, 7x7 stem, e.g. torchvision), v1c '
        '(MRevNetV1c), v1d (MRevNetV1d), or auto (from the stem and '
        'downsample keys of the checkpoint)',
    )
    parser.add_argument(
        '--source',
        choices=('auto',) + SOURCES,
        default='auto',
        help='library that wrote the checkpoint (auto: from its keys)',
    )
    parser.add_argument(
        '--non-strict',
        action='store_true',
        help='write the result even if keys are missing or unexpected',
    )
    parser.add_argument(
        '--force',
        action='store_true',
        help='replace DST if it exists (default: refuse, write nothing)',
    )
    parser.add_argument(
        '--strict',
        action='store_true',
        help='refuse (write nothing) if keys are missing or unexpected; '
        'the default, kept for old command lines',
    )
    return parser.parse_args(argv)


def main(argv=None) -> ConversionResult:
    """Convert the checkpoint described by the command line.

    Args:
        argv (list[str], optional): Arguments; None reads ``sys.argv``.
            Defaults to None.

    Returns:
        ConversionResult: The conversion report.
    """
    args = parse_args(argv)
    try:
        result = convert_checkpoint(
            args.src,
            args.dst,
            depth=args.depth,
            variant=args.variant,
            source=args.source,
            strict=not args.non_strict,
            overwrite=args.force,
        )
    except ConversionError as error:
        sys.exit(
            f'error: {error}\n(nothing written; --non-strict writes a '
            'partial result)'
            if 'strict conversion' in str(error)
            else f'error: {error}'
        )
    except (OSError, ValueError) as error:
        # A missing or unreadable file, a bad MMREVNET_* setting.
        sys.exit(f'error: {error}')
    print(result.summary())
    if not result.complete:
        print(
            'warning: the checkpoint does not fill the target exactly '
            '(--non-strict); see the keys above'
        )
    print(f'saved {args.dst}')
    return result


if __name__ == '__main__':
    main()
