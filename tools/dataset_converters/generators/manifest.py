"""The manifest of a generated data set: reuse it or regenerate it.

A generator writes ``<root>/<manifest_name>`` (JSON: its ``params`` and a
``summary``) after all its files. Called again with the same parameters,
it finds the manifest and the expected number of files and skips the work.
Anything else already in the root (other parameters, missing files, no
manifest) is never removed without ``force``: :class:`ExistingDatasetError`
says why. Used by :mod:`.synthetic` and :mod:`.digits`.
"""

import json
import os
import os.path as osp
import shutil
from typing import Optional, Sequence

__all__ = [
    'ExistingDatasetError',
    'prepare_root',
    'count_files',
    'finish_manifest',
]


class ExistingDatasetError(FileExistsError):
    """A data set is in the way and ``force`` was not given.

    Args:
        root (str): The data set's root.
        reason (str): What is there and why it is not reused.
        flag (str): How the caller spells "force"; the command-line tools
            catch this error and name their ``--force``. Defaults to
            ``'force=True'``.
    """

    def __init__(self, root: str, reason: str, flag: str = 'force=True'):
        self.root = root
        self.reason = reason
        super().__init__(
            f'{root}: {reason}; nothing was changed. Pass {flag} to delete '
            'it and generate a new one, or choose another directory.'
        )

    def with_flag(self, flag: str) -> 'ExistingDatasetError':
        """The same error, naming ``flag`` as the way to force."""
        return ExistingDatasetError(self.root, self.reason, flag)


def prepare_root(
    root: str,
    params: dict,
    subdirs: Sequence[str],
    num_files: int,
    force: bool,
    manifest_name: str,
) -> Optional[dict]:
    """Handle the manifest: return it if the dataset is up to date.

    Otherwise, with ``force``, remove the generated sub-directories and
    return None; without it return None only where the root holds none of
    them (a fresh data set).

    Raises:
        ExistingDatasetError: A data set (ours with other parameters or
            missing files, or foreign content) is there and ``force`` is
            not set.
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
    if (existing or old is not None) and not force:
        if old is None:
            reason = f'holds {existing} but no {manifest_name}'
        elif old.get('params') != params:
            reason = (
                f'holds a data set generated with other parameters '
                f'({_changed(old.get("params"), params)})'
            )
        else:
            reason = (
                f'holds a data set with {count_files(root, subdirs)} of '
                f'its {num_files} files'
            )
        raise ExistingDatasetError(root, reason)
    if osp.isfile(manifest_path):
        os.remove(manifest_path)
    for d in subdirs:
        shutil.rmtree(osp.join(root, d), ignore_errors=True)
    return None


def _changed(old: Optional[dict], new: dict) -> str:
    """``name: old -> new`` of the parameters that differ."""
    old = old if isinstance(old, dict) else {}
    names = sorted(set(old) | set(new))
    return ', '.join(
        f'{k}: {old.get(k)!r} -> {new.get(k)!r}'
        for k in names
        if old.get(k) != new.get(k)
    )


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
