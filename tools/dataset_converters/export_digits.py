"""Export scikit-learn's handwritten digits as an image-folder data set.

Example::

    python tools/dataset_converters/export_digits.py data/digits

writes ``data/digits/{train,val}/<digit>/<index>.png`` (32x32 RGB, a
stratified 80/20 split with seed 0), which mmpretrain's ``CustomDataset``
reads and ``configs/digits/`` train on. Nothing is downloaded: the data
ship with scikit-learn. Exporting again with the same options is a no-op.
"""

import argparse
import json
import os.path as osp
import sys

_REPO = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
if _REPO not in sys.path:
    sys.path.insert(0, _REPO)

from tools.dataset_converters.generators.digits import export_digits  # noqa: E402
from tools.dataset_converters.generators.manifest import ExistingDatasetError  # noqa: E402


def parse_args(argv=None) -> argparse.Namespace:
    """Parse the command line.

    Args:
        argv (list[str], optional): Arguments; None reads ``sys.argv``.
            Defaults to None.

    Returns:
        argparse.Namespace: The parsed arguments.
    """
    parser = argparse.ArgumentParser(
        description='Export the scikit-learn digits as an image folder',
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument('out_dir', help='root of the data set')
    parser.add_argument(
        '--size', type=int, default=32, help='image side in pixels'
    )
    parser.add_argument(
        '--val-fraction',
        type=float,
        default=0.2,
        help='fraction of every class in the val split',
    )
    parser.add_argument('--seed', type=int, default=0, help='split seed')
    parser.add_argument(
        '--force',
        action='store_true',
        help='export even if an up-to-date export exists',
    )
    return parser.parse_args(argv)


def main(argv=None) -> dict:
    """Export the digits as described by the command line.

    Args:
        argv (list[str], optional): Arguments; None reads ``sys.argv``.
            Defaults to None.

    Returns:
        dict: The summary returned by :func:`export_digits`.
    """
    args = parse_args(argv)
    try:
        summary = export_digits(
            args.out_dir,
            size=args.size,
            val_fraction=args.val_fraction,
            seed=args.seed,
            force=args.force,
        )
    except ExistingDatasetError as error:
        raise SystemExit(f'error: {error.with_flag("--force")}') from None
    print(json.dumps(summary))
    return summary


if __name__ == '__main__':
    main()
