"""Digits classification: the ResNetV1c-18 and m-RevNet-V1c-18 recipes.

Trains ``configs/digits/resnetv1c18_1xb64-digits.py`` and
``configs/digits/mrevnetv1c18_1xb64-digits.py`` (15 epochs, validation
every 5) for each seed, in this process, and records the top-1 accuracy of
every validation. The data is exported first if ``data_root`` holds none.
"""

import os.path as osp
import statistics
import time
from typing import Dict, List, Sequence

from mmengine.hooks import Hook

CONFIGS = {
    'ResNetV1c-18': 'configs/digits/resnetv1c18_1xb64-digits.py',
    'm-RevNet-V1c-18': 'configs/digits/mrevnetv1c18_1xb64-digits.py',
}


class _Accuracies(Hook):
    """Collects (epoch, top-1) of every validation."""

    def __init__(self):
        self.rows = []

    def after_val_epoch(self, runner, metrics=None) -> None:
        self.rows.append((runner.epoch, float(metrics['accuracy/top1'])))


def run_digits(
    repo: str,
    data_root: str,
    work_dir: str,
    seeds: Sequence[int] = (0, 1, 2),
) -> Dict:
    """Train both recipes for every seed.

    Args:
        repo (str): Repository root (the configs are read from it).
        data_root (str): The exported digits (``export_digits``).
        work_dir (str): Where logs and checkpoints go.
        seeds (Sequence[int]): ``randomness.seed`` of each run.
            Defaults to (0, 1, 2).

    Returns:
        dict: ``{model: {seed: {'top1': {epoch: acc}, 'seconds': s}}}``
        and the median final top-1 per model.
    """
    from mmengine.registry import RUNNERS

    from tools.cli.config import build_train_config
    from tools.dataset_converters.generators.digits import export_digits

    export_digits(data_root)
    results: Dict = {'runs': {}, 'median_final_top1': {}}
    for model, config in CONFIGS.items():
        finals: List[float] = []
        for seed in seeds:
            name = f'{osp.splitext(osp.basename(config))[0]}_seed{seed}'
            options = {
                'randomness.seed': seed,
                'train_dataloader.dataset.data_root': data_root,
                'val_dataloader.dataset.data_root': data_root,
                'test_dataloader.dataset.data_root': data_root,
                'experiment_name': name,
            }
            cfg = build_train_config(
                osp.join(repo, config),
                work_dir=osp.join(work_dir, name),
                cfg_options=options,
            )
            runner = RUNNERS.build(cfg)
            accuracies = _Accuracies()
            runner.register_hook(accuracies)
            start = time.perf_counter()
            runner.train()
            top1 = {epoch: acc for epoch, acc in accuracies.rows}
            results['runs'].setdefault(model, {})[seed] = dict(
                top1=top1, seconds=round(time.perf_counter() - start, 1)
            )
            finals.append(accuracies.rows[-1][1])
        results['median_final_top1'][model] = statistics.median(finals)
    return results


def markdown_table(results: Dict) -> str:
    """Per model and seed: top-1 after every validation; medians."""
    lines = [
        '| model | seed | top-1 per validation (epoch: %) | final | wall s |',
        '|---|---|---|---|---|',
    ]
    for model, runs in results['runs'].items():
        for seed, run in runs.items():
            per_epoch = ', '.join(
                f'{epoch}: {acc:.2f}' for epoch, acc in run['top1'].items()
            )
            final = list(run['top1'].values())[-1]
            lines.append(
                f'| {model} | {seed} | {per_epoch} | {final:.2f} | '
                f'{run["seconds"]:.0f} |'
            )
    lines.append('')
    for model, median in results['median_final_top1'].items():
        lines.append(f'- {model}: median final top-1 {median:.2f}')
    return '\n'.join(lines)
