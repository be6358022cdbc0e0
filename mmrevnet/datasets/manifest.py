"""The manifest of a generated data set: reuse it or regenerate it.

A generator writes ``<root>/<manifest_name>`` (JSON: its ``params`` and a
``summary``) after all its files. Called again with the same parameters,
it finds the manifest and the expected number of files and skips the work;
otherwise it removes what it generated before. Used by :mod:`.synthetic`
and :mod:`.digits`.
"""

import json
import os
import os.path as osp
import shutil
from typing import Optional, Sequence

__all__ = ['prepare_root', 'count_files', 'finish_manifest']


def prepare_root(
    root: str,
    params: dict,
    subdirs: Sequence[str],
    num_files: int,
    force: bool,
    manifest_name: str,
) -> Optional[dict]:
    """Handle the manifest: return it if the dataset is up to date.

    Otherwise remove the stale generated sub-directories (only when the
    root holds one of our manifests, or ``force`` is set) and return None.
    """
    manifest_path = osp.join(root, manifest_name)
    old = None
    if osp.isfile(manifest_path):
        try:
            with open(manifest_path, encoding='utf-8') as f:
                old = json.load(f)
        except (OSError, ValueError):
            old = {}
    if (
        old is not None
        and not force
        and old.get('params') == params
        and count_files(root, subdirs) == num_files
    ):
        return old
    existing = [
        d
        for d in subdirs
        if osp.isdir(osp.join(root, d)) and os.listdir(osp.join(root, d))
    ]
    if existing and old is None and not force:
        raise FileExistsError(
            f'{root} already holds {existing} but no {manifest_name}; '
            'pass force=True to overwrite it'
        )
    if osp.isfile(manifest_path):
        os.remove(manifest_path)
    for d in subdirs:
        shutil.rmtree(osp.join(root, d), ignore_errors=True)
    return None


def count_files(root: str, subdirs: Sequence[str]) -> int:
    total = 0
    for d in subdirs:
        for _, _, files in os.walk(osp.join(root, d)):
            total += len(files)
    return total


def finish_manifest(
    root: str,
    params: dict,
    summary: dict,
    manifest_name: str,
) -> dict:
    manifest = dict(params=params, summary=summary)
    tmp = osp.join(root, manifest_name + '.tmp')
    with open(tmp, 'w', encoding='utf-8') as f:
        json.dump(manifest, f, indent=1)
    os.replace(tmp, osp.join(root, manifest_name))
    return manifest
