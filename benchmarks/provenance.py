"""Where every committed result comes from, and whether it is still current.

Each entry of :data:`RESULTS` names the files a command writes under
``docs/``, the command, and the source files the numbers depend on. After
a result is regenerated, ``python tools/analysis_tools/provenance.py stamp
NAME`` records in ``docs/provenance.json`` the command, the commit it ran
on and a fingerprint (sha256) of those source files. The test
``tests/test_benchmarks/test_provenance.py`` recomputes the fingerprints:
when code under a result has changed since it was made, or a result file
is missing, it fails, naming the file and the command to rerun.

Results that need hardware this project's CI machine does not have (the
GPU runs) are ``historical``: their record keeps the commit they were
measured on, and the documents that quote them say so; they are not
compared with the current sources.
"""

import dataclasses
import glob
import hashlib
import json
import os.path as osp
import subprocess
from typing import Dict, List, Sequence, Tuple

REPO = osp.dirname(osp.dirname(osp.abspath(__file__)))
MANIFEST = 'docs/provenance.json'

# What every measured number depends on: the reversible core and models.
_CORE = ('mmrevnet/reversible/*.py',)
_MODELS = _CORE + (
    'mmrevnet/models/*.py',
    'mmrevnet/models/backbones/*.py',
    'mmrevnet/models/memory_saving/*.py',
    'mmrevnet/models/segmentors/*.py',
    'mmrevnet/models/utils/*.py',
)


#: Why results made before the last merges of this version were not rerun.
_NOT_RERUN = (
    'later merges of the same version added the non-finite records, '
    'max_amplification 12, the chunked conv3/norm3 recomputation, the '
    'concat-free heads and banded loss, and the compile wrappers; not rerun '
    'for lack of CPU time, as docs/provenance_pending.md says'
)


@dataclasses.dataclass(frozen=True)
class Result:
    """A committed result: its files, its command, its sources.

    Args:
        outputs (Sequence[str]): Files the command writes (repo-relative).
        command (str): The command that writes them, from the repo root.
        sources (Sequence[str]): Globs of the files the numbers depend on.
        historical (str): Non-empty for results this machine cannot
            remake: why, and where the documents say so.
    """

    outputs: Sequence[str]
    command: str
    sources: Sequence[str] = ()
    historical: str = ''


_BENCHMARK_SOURCES = _MODELS + (
    'benchmarks/memory.py',
    'benchmarks/benchmark.py',
    'tools/analysis_tools/benchmark_memory.py',
)

RESULTS: Dict[str, Result] = {
    'toy_dynamics': Result(
        outputs=(
            'docs/toy_dynamics/results.json',
            'docs/toy_dynamics/results.md',
            'docs/toy_dynamics/cube_trajectories.png',
            'docs/toy_dynamics/rings_snapshots.png',
        ),
        command='python tools/analysis_tools/toy_dynamics.py '
        '--out-dir docs/toy_dynamics',
        sources=_CORE
        + (
            'benchmarks/toy_dynamics.py',
            'tools/analysis_tools/toy_dynamics.py',
        ),
    ),
    'benchmark_cpu': Result(
        outputs=(
            'docs/benchmark/cpu/benchmark.json',
            'docs/benchmark/cpu/benchmark.md',
            'docs/benchmark/cpu/benchmark.png',
        ),
        command='python tools/analysis_tools/benchmark_memory.py '
        '--out-dir docs/benchmark/cpu --depths 50 101 '
        '--heads backbone pspnet deeplabv3 upernet '
        '--variants ResNetV1c "ResNetV1c (with_cp)" MRevNetV1c '
        '"MRevNetV1c + memory-saving heads"',
        sources=_BENCHMARK_SOURCES,
        historical='made at commit c3d0cb4 (before this version); '
        + _NOT_RERUN,
    ),
    'drift': Result(
        outputs=('docs/drift.md',),
        command='python -m benchmarks.drift --out docs/drift.md',
        sources=_CORE + ('benchmarks/drift.py',),
    ),
    'precision': Result(
        outputs=(
            'docs/precision/precision_table.json',
            'docs/precision/precision_table.md',
            'docs/precision/tensors_depth50.md',
            'docs/precision/tensors_depth101.md',
            'docs/precision/tensors_depth152.md',
        ),
        command='python tools/analysis_tools/check_precision.py --table '
        '--out-dir docs/precision',
        sources=_MODELS
        + (
            'benchmarks/precision.py',
            'tools/analysis_tools/check_precision.py',
        ),
    ),
    'demo': Result(
        outputs=(
            'docs/demo/summary.json',
            'docs/demo/training_curve.png',
            'docs/demo/overlay.png',
        ),
        command='bash tools/demo.sh --compare --results-dir docs/demo',
        sources=_MODELS
        + (
            'configs/demo/*.py',
            'tools/dataset_converters/generators/synthetic.py',
            'tools/dataset_converters/generators/scenes.py',
            'tools/demo/*.py',
            'tools/run_demo.py',
        ),
        historical='made at commit a77cfe8 (before this version); '
        + _NOT_RERUN,
    ),
    'digits': Result(
        outputs=('docs/digits/results.json', 'docs/digits/results.md'),
        command='python tools/analysis_tools/digits_results.py '
        '--out-dir docs/digits --seeds 0',
        sources=_MODELS
        + (
            'configs/digits/*.py',
            'configs/_base_/models/mrevnet_v1c.py',
            'tools/dataset_converters/generators/digits.py',
            'benchmarks/digits.py',
            'tools/analysis_tools/digits_results.py',
        ),
    ),
    'full_res': Result(
        outputs=(
            'docs/benchmark/full_res_cityscapes/benchmark.json',
            'docs/benchmark/full_res_ade20k/benchmark.json',
        ),
        command='python tools/analysis_tools/benchmark_memory.py --no-time '
        '--size 512 1024 --batch-size 2 --depths 50 '
        '--heads pspnet deeplabv3 upernet --variants ResNetV1c MRevNetV1c '
        '"MRevNetV1c + memory-saving heads" '
        '--out-dir docs/benchmark/full_res_cityscapes && '
        'python tools/analysis_tools/benchmark_memory.py --no-time '
        '--size 512 512 --batch-size 4 --num-classes 150 --depths 50 '
        '--heads pspnet deeplabv3 upernet --variants MRevNetV1c '
        '"MRevNetV1c + memory-saving heads" '
        '--out-dir docs/benchmark/full_res_ade20k',
        sources=_BENCHMARK_SOURCES,
        historical='made at commit 19eae78 (before this version); '
        + _NOT_RERUN,
    ),
    'segmentor_cpu': Result(
        outputs=(
            'docs/benchmark/segmentor_cityscapes/benchmark.json',
            'docs/benchmark/segmentor_cityscapes/benchmark.md',
            'docs/benchmark/segmentor_cityscapes/benchmark.png',
            'docs/benchmark/segmentor_ade20k/benchmark.json',
            'docs/benchmark/segmentor_ade20k/benchmark.md',
            'docs/benchmark/segmentor_ade20k/benchmark.png',
        ),
        # The grid was stopped after its ninth group for lack of CPU time
        # (docs/benchmark/segmentor.md); the groups' rows were then written
        # out by the tool.
        command='bash tools/analysis_tools/benchmark_segmentor.sh '
        '(stopped after depth-101 Cityscapes-like UPerNet), then '
        'python tools/analysis_tools/benchmark_memory.py --segmentor '
        '--size 256 512 --batch-size 2 --num-classes 19 --rows-in '
        'work_dirs/segmentor_rows/cityscapes_{50_pspnet,50_deeplabv3,'
        '50_upernet,101_pspnet,101_deeplabv3,101_upernet}.json --out-dir '
        'docs/benchmark/segmentor_cityscapes && python '
        'tools/analysis_tools/benchmark_memory.py --segmentor --size 256 '
        '256 --batch-size 4 --num-classes 150 --rows-in '
        'work_dirs/segmentor_rows/ade20k_50_{pspnet,deeplabv3,upernet}.json '
        '--out-dir docs/benchmark/segmentor_ade20k',
        sources=_BENCHMARK_SOURCES
        + ('tools/analysis_tools/benchmark_segmentor.sh',),
    ),
    'frontier_cpu': Result(
        outputs=(
            'docs/benchmark/frontier/frontier.json',
            'docs/benchmark/frontier/frontier.md',
            'docs/benchmark/frontier/frontier.png',
        ),
        # One process per config, one thread each; each ran beside one
        # other job on the two cores (the README's frontier section).
        command=' && '.join(
            f'python tools/analysis_tools/frontier.py configs/{config}_'
            f'4xb2-80k_cityscapes-512x1024.py --out-dir '
            f'work_dirs/frontier_{name}'
            for name, config in (
                ('pspnet', 'pspnet/pspnet_mrevnet101-d8'),
                ('upernet', 'upernet/upernet_mrevnet50'),
            )
        )
        + ' && python tools/analysis_tools/frontier.py --from-json '
        'work_dirs/frontier_pspnet/frontier.json '
        'work_dirs/frontier_upernet/frontier.json '
        '--out-dir docs/benchmark/frontier',
        sources=_MODELS
        + (
            'mmrevnet/engine/memory_budget.py',
            'mmrevnet/engine/step_memory.py',
            'benchmarks/benchmark.py',
            'benchmarks/frontier.py',
            'benchmarks/variants.py',
            'tools/analysis_tools/frontier.py',
        ),
    ),
    'bad_input': Result(
        outputs=('docs/bad_input.md',),
        command='python tools/analysis_tools/bad_input_table.py '
        '--out docs/bad_input.md',
        sources=_MODELS
        + (
            'mmrevnet/engine/*.py',
            'benchmarks/bad_inputs.py',
            'tests/test_engine/crafted_checkpoints.py',
            'tools/analysis_tools/bad_input_table.py',
        ),
    ),
    'warm_start': Result(
        outputs=(
            'docs/warm_start/results.json',
            'docs/warm_start/results.md',
            'docs/warm_start/curves.png',
        ),
        command='python tools/analysis_tools/warm_start.py '
        '--out-dir docs/warm_start',
        historical='made at commit 20f9951 (42 min on the shared 2-core '
        'CPU); later commits of that session moved the backbone blocks to '
        'models/utils (mmrevnet/reversible unchanged) and added tooling '
        '(step-peak measure, import hook, data checks); not rerun, as '
        'docs/warm_start.md says',
    ),
    'compile_cpu': Result(
        outputs=(
            'docs/benchmark/compile/results.json',
            'docs/benchmark/compile/results.md',
        ),
        command='python -m benchmarks.compile_step --depth 50 --size 64 64 '
        '--batch-size 2 --rounds 5 --out docs/benchmark/compile',
        sources=_MODELS
        + ('benchmarks/memory.py', 'benchmarks/compile_step.py'),
    ),
    'max_fit_cpu': Result(
        outputs=(
            'docs/benchmark/max_fit/results.json',
            'docs/benchmark/max_fit/results.md',
        ),
        command='python tools/analysis_tools/max_fit.py '
        + ' '.join(
            f'configs/{head}/{head}_mrevnet{depth}{d8}_4xb2-80k_'
            'cityscapes-512x1024.py'
            for head, d8 in (
                ('pspnet', '-d8'),
                ('deeplabv3', '-d8'),
                ('upernet', ''),
            )
            for depth in (50, 101)
        )
        + ' --memory 24GiB 40GiB 80GiB --threads 1 '
        '--out-dir docs/benchmark/max_fit',
        sources=_MODELS
        + (
            'benchmarks/memory.py',
            'benchmarks/benchmark.py',
            'mmrevnet/engine/step_memory.py',
            'benchmarks/variants.py',
            'tools/analysis_tools/max_fit.py',
        ),
    ),
    'kept_overhead_cpu': Result(
        outputs=(
            'docs/benchmark/kept_overhead/results.json',
            'docs/benchmark/kept_overhead/results.md',
        ),
        command='python -m benchmarks.kept_overhead '
        'configs/pspnet/pspnet_mrevnet101-d8_4xb2-80k_cityscapes-512x1024.py '
        '--size 256 512 --rounds 3 --out docs/benchmark/kept_overhead',
        sources=_MODELS
        + (
            'benchmarks/benchmark.py',
            'benchmarks/kept_overhead.py',
            'benchmarks/variants.py',
        ),
    ),
    'gpu_h100': Result(
        outputs=(
            'docs/benchmark/gpu/h100_full_dcad7fe/benchmark.json',
            'docs/benchmark/gpu/h100_101_9d13784/benchmark.json',
            'docs/benchmark/gpu/h100_101_repeat15_9d13784/benchmark.json',
        ),
        command='bash tools/analysis_tools/benchmark_gpu.sh',
        historical='measured on one H100 at commits dcad7fe and 9d13784; '
        'no GPU was lent since, so they describe that code, as '
        'docs/benchmark/gpu/README.md and the README say',
    ),
}


def source_files(result: Result) -> List[str]:
    """The repo-relative files matched by ``result.sources``, sorted."""
    files = set()
    for pattern in result.sources:
        matches = glob.glob(osp.join(REPO, pattern))
        if not matches:
            raise FileNotFoundError(f'no file matches source {pattern!r}')
        files.update(osp.relpath(m, REPO) for m in matches)
    return sorted(files)


def fingerprint(files: Sequence[str]) -> str:
    """sha256 over the names and contents of ``files`` (repo-relative)."""
    digest = hashlib.sha256()
    for name in sorted(files):
        digest.update(name.encode() + b'\0')
        with open(osp.join(REPO, name), 'rb') as f:
            digest.update(f.read())
        digest.update(b'\0')
    return digest.hexdigest()


def _git(*args: str) -> str:
    return subprocess.run(
        ['git', *args], cwd=REPO, capture_output=True, text=True, check=True
    ).stdout.strip()


def read_manifest() -> Dict[str, dict]:
    path = osp.join(REPO, MANIFEST)
    if not osp.isfile(path):
        return {}
    with open(path) as f:
        return json.load(f)


def stamp(name: str) -> dict:
    """Record how result ``name`` was just made (after running its command).

    Returns:
        dict: The record written to ``docs/provenance.json``.
    """
    result = RESULTS[name]
    missing = [p for p in result.outputs if not osp.isfile(osp.join(REPO, p))]
    if missing:
        raise FileNotFoundError(f'{name}: result files missing: {missing}')
    files = source_files(result)
    dirty = files and bool(_git('status', '--porcelain', '--', *files))
    commit = _git('rev-parse', '--short=12', 'HEAD') + (
        ' (with uncommitted changes to its sources)' if dirty else ''
    )
    record = dict(
        command=result.command,
        commit=f'historical: {result.historical}'
        if result.historical
        else commit,
        sources=files,
        fingerprint=fingerprint(files),
        outputs=list(result.outputs),
    )
    manifest = read_manifest()
    manifest[name] = record
    with open(osp.join(REPO, MANIFEST), 'w') as f:
        json.dump(manifest, f, indent=2, sort_keys=True)
        f.write('\n')
    return record


def stale_results() -> List[Tuple[str, str]]:
    """``(name, reason)`` of every result that is missing or out of date."""
    manifest = read_manifest()
    problems = []
    for name, result in RESULTS.items():
        record = manifest.get(name)
        rerun = (
            f'rerun `{result.command}`, then '
            f'`python tools/analysis_tools/provenance.py stamp {name}`'
        )
        missing = [
            p for p in result.outputs if not osp.isfile(osp.join(REPO, p))
        ]
        if missing:
            problems.append((name, f'{missing} missing: {rerun}'))
            continue
        if record is None:
            problems.append((name, f'no record in {MANIFEST}: {rerun}'))
            continue
        if result.historical:
            continue
        files = source_files(result)
        if record.get('fingerprint') != fingerprint(files):
            changed = sorted(set(files) ^ set(record.get('sources', [])))
            detail = f' (files added/removed: {changed})' if changed else ''
            problems.append(
                (
                    name,
                    f'{list(result.outputs)} were made from sources that '
                    f'changed since{detail}: {rerun}',
                )
            )
    return problems
