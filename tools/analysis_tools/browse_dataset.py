"""Draw the samples of a segmentation or classification config.

mmseg 1.2.2's ``tools/misc/browse_dataset.py`` hands its visualizer a
channel-reversed view of the transposed input tensor, whose memory is not
C-contiguous; the visualizer's label boxes are drawn with ``cv2.rectangle``
into an array laid out like it, which OpenCV refuses (``cv2.error ... in
function 'rectangle'``, with every opencv-python that supports numpy 2).
This tool draws the same samples from a contiguous copy of the image.

mmpretrain 1.2.0's ``tools/visualization/browse_dataset.py`` passes the
config's ``visualizer`` dict to ``UniversalVisualizer`` as keywords; a
config that inherits ``mmpretrain::`` files carries mmengine's ``_scope_``
key there, which the visualizer refuses (``unexpected keyword argument
'_scope_'``). For a config whose ``default_scope`` is ``mmpretrain`` this
tool draws the samples of ``--phase`` with the label, through the same
visualizer built from the registry.

Example:
    python tools/analysis_tools/browse_dataset.py CONFIG \\
        --output-dir browse --not-show
"""

import argparse
import os.path as osp

import numpy as np

import mmrevnet  # noqa: F401  (shims and registration before mmseg)


def parse_args(argv=None):
    from mmengine.config import DictAction

    parser = argparse.ArgumentParser(
        description='Draw the training samples of a segmentation config'
    )
    parser.add_argument('config', help='config file')
    parser.add_argument(
        '--output-dir', default=None, help='where the drawings are saved'
    )
    parser.add_argument('--not-show', default=False, action='store_true')
    parser.add_argument(
        '--phase',
        default='train',
        choices=('train', 'val', 'test'),
        help='which dataloader to browse (classification configs)',
    )
    parser.add_argument(
        '--show-interval', type=float, default=2, help='seconds per image'
    )
    parser.add_argument(
        '--cfg-options',
        nargs='+',
        action=DictAction,
        help='override settings of the config (key=value)',
    )
    return parser.parse_args(argv)


def browse_classification(cfg, output_dir, show, wait_time, phase) -> int:
    """Draw the samples of ``phase`` of an mmpretrain config."""
    from mmengine.registry import init_default_scope
    from mmengine.utils import ProgressBar
    from mmpretrain.registry import DATASETS, VISUALIZERS

    init_default_scope('mmpretrain')
    dataset = DATASETS.build(cfg.get(f'{phase}_dataloader').dataset)
    vis_cfg = dict(cfg.visualizer)
    vis_cfg['save_dir'] = output_dir
    vis_cfg.setdefault('name', 'browse_dataset')
    visualizer = VISUALIZERS.build(vis_cfg)
    visualizer.dataset_meta = dataset.metainfo
    progress = ProgressBar(len(dataset))
    for index, item in enumerate(dataset):
        image = np.ascontiguousarray(
            item['inputs'].permute(1, 2, 0).numpy()[..., ::-1]
        )
        sample = item['data_samples']
        name = osp.basename(sample.get('img_path', str(index)))
        out_file = None
        if output_dir is not None:
            out_file = osp.join(output_dir, f'{index}_{name}')
        visualizer.visualize_cls(
            image,
            sample,
            draw_pred=False,
            show=show,
            wait_time=wait_time,
            out_file=out_file,
            name=name,
        )
        progress.update()
    return len(dataset)


def browse(
    config: str,
    output_dir=None,
    show=False,
    wait_time=2.0,
    cfg_options=None,
    phase='train',
) -> int:
    """Draw every sample; returns how many were drawn."""
    from mmengine.config import Config
    from mmengine.registry import init_default_scope
    from mmengine.utils import ProgressBar
    from mmseg.registry import DATASETS, VISUALIZERS

    cfg = Config.fromfile(config)
    if cfg_options:
        cfg.merge_from_dict(cfg_options)
    if cfg.get('default_scope') == 'mmpretrain':
        return browse_classification(cfg, output_dir, show, wait_time, phase)
    init_default_scope('mmseg')
    dataset = DATASETS.build(cfg.train_dataloader.dataset)
    cfg.visualizer['save_dir'] = output_dir
    visualizer = VISUALIZERS.build(cfg.visualizer)
    visualizer.dataset_meta = dataset.METAINFO
    progress = ProgressBar(len(dataset))
    for item in dataset:
        # BGR tensor (C, H, W) -> contiguous RGB array (H, W, C).
        image = np.ascontiguousarray(
            item['inputs'].permute(1, 2, 0).numpy()[..., ::-1]
        )
        sample = item['data_samples'].numpy()
        visualizer.add_datasample(
            osp.basename(sample.img_path),
            image,
            sample,
            show=show,
            wait_time=wait_time,
        )
        progress.update()
    return len(dataset)


def main(argv=None):
    args = parse_args(argv)
    browse(
        args.config,
        args.output_dir,
        show=not args.not_show,
        wait_time=args.show_interval,
        cfg_options=args.cfg_options,
        phase=args.phase,
    )


if __name__ == '__main__':
    main()
