"""Prediction overlays of the CPU demo, with mmseg's own inference API.

``tools/demo/image_demo.py`` does the same for one image from the command
line; users call mmseg's ``init_model`` / ``inference_model`` directly.
"""

import os
import os.path as osp
from typing import List, Sequence, Union

from mmengine.config import Config


def save_overlays(
    config: Union[str, Config],
    checkpoint: str,
    images: Sequence[str],
    out_dir: str,
    device: str = 'cpu',
    opacity: float = 0.5,
    with_labels: bool = False,
) -> List[str]:
    """Segment ``images`` and write ``<out_dir>/<stem>_overlay.png`` each.

    Uses ``mmseg.apis.init_model``, ``inference_model`` and
    ``show_result_pyplot`` (mmseg's ``SegLocalVisualizer``), so the model
    runs exactly as in mmseg's demos (eval mode: plain modules).

    Args:
        config (str | Config): Model config.
        checkpoint (str): Checkpoint file.
        images (Sequence[str]): Image files.
        out_dir (str): Output directory (created if missing).
        device (str): Device to run on. Defaults to 'cpu'.
        opacity (float): Opacity of the painted prediction. Defaults to 0.5.
        with_labels (bool): Write class names on the overlay.
            Defaults to False.

    Returns:
        list[str]: The written files.
    """
    from mmseg.apis import inference_model, init_model, show_result_pyplot

    from mmrevnet.engine import runner_checkpoint_globals

    with runner_checkpoint_globals(checkpoint):
        model = init_model(config, checkpoint, device=device)
    os.makedirs(out_dir, exist_ok=True)
    written = []
    for image in images:
        stem = osp.splitext(osp.basename(image))[0]
        out_file = osp.join(out_dir, f'{stem}_overlay.png')
        result = inference_model(model, image)
        show_result_pyplot(
            model,
            image,
            result,
            opacity=opacity,
            draw_gt=False,
            show=False,
            with_labels=with_labels,
            out_file=out_file,
        )
        written.append(out_file)
    return written
