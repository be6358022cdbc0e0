"""Generate a synthetic segmentation/classification dataset.

Examples::

    python tools/dataset_converters/make_synthetic_dataset.py cityscapes \\
        data/synthetic_cityscapes --num-train 200 --num-val 50 --size 128 256
    python tools/dataset_converters/make_synthetic_dataset.py ade20k \\
        data/synthetic_ade --num-used-classes 30
    python tools/dataset_converters/make_synthetic_dataset.py imagefolder \\
        data/synthetic_cls --num-classes 10 --num-train 20 --num-val 5

The dataset is skipped when ``out_dir`` already holds one generated with the
same parameters (see ``mmrevnet_synthetic.json``). Any other content of
``out_dir`` (a data set of other parameters, an incomplete one, foreign
files) stops the tool with a message; ``--force`` deletes and regenerates.
"""

import argparse
import inspect
import json
import os.path as osp
import sys
from typing import Optional

_REPO = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
if _REPO not in sys.path:
    sys.path.insert(0, _REPO)

from tools.dataset_converters.generators.manifest import ExistingDatasetError  # noqa: E402
from tools.dataset_converters.generators.synthetic import (  # noqa: E402
    generate_ade20k,
    generate_cityscapes,
    generate_imagefolder,
)


class _DefaultsFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Show defaults, except None (those are given per layout in the help)."""

    def _get_help_string(self, action):
        if action.default is None:
            return action.help
        return super()._get_help_string(action)


def _per_layout(name: str, imagefolder_name: Optional[str] = None) -> str:
    """``name``'s default of each generator, read from its signature."""
    parts = []
    for layout, function, key in (
        ('cityscapes', generate_cityscapes, name),
        ('ade20k', generate_ade20k, name),
        ('imagefolder', generate_imagefolder, imagefolder_name or name),
    ):
        default = inspect.signature(function).parameters[key].default
        parts.append(f'{layout} {default}')
    return 'default: ' + ', '.join(parts)


def parse_args(argv=None) -> argparse.Namespace:
    """Parse the command line.

    Args:
        argv (list[str], optional): Arguments; None reads ``sys.argv``.
            Defaults to None.

    Returns:
        argparse.Namespace: The parsed arguments.
    """
    parser = argparse.ArgumentParser(
        description='Generate a synthetic dataset in a real dataset layout',
        formatter_class=_DefaultsFormatter,
    )
    parser.add_argument(
        'layout', choices=('cityscapes', 'ade20k', 'imagefolder')
    )
    parser.add_argument('out_dir', help='root of the dataset')
    parser.add_argument(
        '--num-train',
        type=int,
        default=None,
        help='training images (per class for imagefolder); '
        + _per_layout('num_train', 'per_class_train'),
    )
    parser.add_argument(
        '--num-val',
        type=int,
        default=None,
        help='validation images (per class for imagefolder); '
        + _per_layout('num_val', 'per_class_val'),
    )
    parser.add_argument(
        '--size',
        type=int,
        nargs=2,
        metavar=('H', 'W'),
        default=None,
        help='image size; ' + _per_layout('size').replace('%', '%%'),
    )
    parser.add_argument('--seed', type=int, default=0, help='random seed')
    parser.add_argument(
        '--difficulty',
        type=float,
        default=0.5,
        help='noise and jitter strength in [0, 1]',
    )
    parser.add_argument(
        '--num-classes',
        type=int,
        default=10,
        help='number of classes (imagefolder)',
    )
    parser.add_argument(
        '--num-used-classes',
        type=int,
        default=None,
        help='use labels 1..N only (ade20k; all 150 by default)',
    )
    parser.add_argument(
        '--force',
        action='store_true',
        help='delete what out_dir holds and regenerate (without it an '
        'existing data set of other parameters is refused)',
    )
    return parser.parse_args(argv)


def main(argv=None) -> dict:
    """Generate the dataset described by the command line.

    Args:
        argv (list[str], optional): Arguments; None reads ``sys.argv``.
            Defaults to None.

    Returns:
        dict: The summary returned by the generator.
    """
    args = parse_args(argv)
    try:
        summary = _generate(args)
    except ExistingDatasetError as error:
        raise SystemExit(f'error: {error.with_flag("--force")}') from None
    brief = {
        k: summary[k]
        for k in (
            'root',
            'layout',
            'num_train',
            'num_val',
            'size',
            'skipped',
            'seconds',
        )
    }
    print(json.dumps(brief))
    return summary


def _generate(args: argparse.Namespace) -> dict:
    """Call the generator of ``args.layout``; the generator's summary."""
    kwargs = dict(seed=args.seed, difficulty=args.difficulty, force=args.force)
    if args.size is not None:
        kwargs['size'] = tuple(args.size)
    if args.layout == 'imagefolder':
        if args.num_train is not None:
            kwargs['per_class_train'] = args.num_train
        if args.num_val is not None:
            kwargs['per_class_val'] = args.num_val
        return generate_imagefolder(
            args.out_dir, num_classes=args.num_classes, **kwargs
        )
    if args.num_train is not None:
        kwargs['num_train'] = args.num_train
    if args.num_val is not None:
        kwargs['num_val'] = args.num_val
    if args.layout == 'cityscapes':
        return generate_cityscapes(args.out_dir, **kwargs)
    return generate_ade20k(
        args.out_dir, num_used_classes=args.num_used_classes, **kwargs
    )


if __name__ == '__main__':
    main()
