"""Segment one image with a trained model and save the painted prediction.

Uses mmseg's own inference API (``init_model``, ``inference_model``,
``show_result_pyplot``), like mmseg's ``demo/image_demo.py``.

Example:
    python tools/demo/image_demo.py demo.png CONFIG CHECKPOINT \\
        --out-file result.png --device cpu --opacity 0.5 --with-labels
"""

import argparse
import os
import os.path as osp

import mmrevnet  # noqa: F401  (shims and registration before mmseg loads)


def parse_args(argv=None):
    import torch
    from mmengine.config import DictAction

    parser = argparse.ArgumentParser(
        description='Segment an image and paint the prediction on it'
    )
    parser.add_argument('img', help='image file')
    parser.add_argument('config', help='config file')
    parser.add_argument('checkpoint', help='checkpoint file')
    parser.add_argument(
        '--out-file',
        help='where the painted image is written (default: '
        '<image name>_result.png in the current directory, unless --show)',
    )
    parser.add_argument(
        '--show', action='store_true', help='show the result in a window'
    )
    parser.add_argument(
        '--device',
        default='cuda:0' if torch.cuda.is_available() else 'cpu',
        help='device used for inference (default: cuda:0 if available, '
        'else cpu)',
    )
    parser.add_argument(
        '--opacity',
        type=float,
        default=0.5,
        help='opacity of the painted segmentation map, in (0, 1]',
    )
    parser.add_argument(
        '--with-labels',
        action='store_true',
        default=False,
        help='write the class names on the painted regions',
    )
    parser.add_argument('--title', default='result', help='window title')
    parser.add_argument(
        '--cfg-options',
        nargs='+',
        action=DictAction,
        help='override settings in the config, key=value pairs',
    )
    args = parser.parse_args(argv)
    if not 0 < args.opacity <= 1:
        parser.error(f'--opacity must be in (0, 1], got {args.opacity}')
    if args.out_file is None and not args.show:
        stem = osp.splitext(osp.basename(args.img))[0]
        args.out_file = f'{stem}_result.png'
    return args


def main(argv=None) -> str:
    """Run the demo; returns the written file (None with --show only)."""
    args = parse_args(argv)
    from mmengine.model import revert_sync_batchnorm
    from mmseg.apis import inference_model, init_model, show_result_pyplot

    from mmrevnet.engine import runner_checkpoint_globals

    with runner_checkpoint_globals(args.checkpoint):
        model = init_model(
            args.config,
            args.checkpoint,
            device=args.device,
            cfg_options=args.cfg_options,
        )
    if args.device == 'cpu':
        # Plain BN on the CPU, as mmseg's demos do (SyncBN is a CUDA layer).
        model = revert_sync_batchnorm(model)
    result = inference_model(model, args.img)
    if args.out_file:
        out_dir = osp.dirname(osp.abspath(args.out_file))
        os.makedirs(out_dir, exist_ok=True)
    show_result_pyplot(
        model,
        args.img,
        result,
        opacity=args.opacity,
        title=args.title,
        draw_gt=False,
        show=args.show,
        with_labels=args.with_labels,
        out_file=args.out_file,
    )
    if args.out_file:
        print(f'Result written to {args.out_file}')
    return args.out_file


if __name__ == '__main__':
    main()
