"""Training curves of the CPU demo from MMEngine's ``scalars.json`` logs."""

import json
import os.path as osp
from typing import Dict, List, Sequence


def read_scalars(work_dir_or_file: str) -> List[Dict]:
    """Records of the newest ``scalars.json`` under a work dir (or a file).

    Args:
        work_dir_or_file (str): A run's work dir or a ``scalars.json``.

    Returns:
        list[dict]: One dict per logged step (``step``, ``loss``, ...).
    """
    path = work_dir_or_file
    if osp.isdir(path):
        import glob

        candidates = sorted(
            glob.glob(osp.join(path, '*', 'vis_data', 'scalars.json'))
        )
        if not candidates:
            raise FileNotFoundError(f'no */vis_data/scalars.json in {path}')
        path = candidates[-1]
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def plot_training_curve(
    runs: Dict[str, str],
    out_file: str,
    keys: Sequence[str] = ('loss', 'decode.acc_seg'),
) -> str:
    """Plot ``keys`` against the iteration for each run (one panel a key).

    Args:
        runs (dict[str, str]): Label to work dir.
        out_file (str): PNG to write.
        keys (Sequence[str]): Logged scalars to plot.

    Returns:
        str: ``out_file``.
    """
    import matplotlib

    matplotlib.use('Agg')
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(keys), figsize=(5 * len(keys), 3.5))
    axes = [axes] if len(keys) == 1 else list(axes)
    for label, work_dir in runs.items():
        records = [r for r in read_scalars(work_dir) if 'loss' in r]
        for ax, key in zip(axes, keys):
            points = [(r['step'], r[key]) for r in records if key in r]
            if points:
                ax.plot(*zip(*points), label=label)
    for ax, key in zip(axes, keys):
        ax.set_xlabel('iteration')
        ax.set_title(key)
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    fig.savefig(out_file, dpi=100)
    plt.close(fig)
    return out_file
