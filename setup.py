"""Installation of mmrevnet (``pip install -e .``)."""

import os
import os.path as osp
import shutil

from setuptools import find_packages, setup
from setuptools.command.build_py import build_py

HERE = osp.dirname(osp.abspath(__file__))

#: The start-up hook of mmrevnet/compat.py: one line, run by ``site`` in
#: every process of the environment; it only registers a meta-path finder.
HOOK_MODULE = '_mmrevnet_import_hook'
HOOK_PTH = 'mmrevnet-import-hook.pth'
HOOK_LINE = f'import {HOOK_MODULE}; {HOOK_MODULE}.install()\n'


#: Folders of the checkout that ship in ``mmrevnet/.mim`` (where OpenMMLab's
#: ``mim`` and mmengine look): the configs, the command-line tools and the
#: study modules the analysis tools import. Inside ``.mim`` they keep their
#: places relative to each other, so a tool finds its helpers and configs
#: the same way from the checkout and from an installed package.
MIM_FOLDERS = ('configs', 'tools', 'benchmarks')
#: What acts on the checkout itself (its .venv, tests, committed results
#: and their provenance) or needs the synthetic-data generators, which are
#: development tools: not shipped. A path ending in ``/`` is a folder.
CHECKOUT_ONLY = (
    'tools/setup_env.sh',
    'tools/run_tests.sh',
    'tools/demo.sh',
    'tools/run_demo.py',
    'tools/demo/segmentation_demo.py',
    'tools/dataset_converters/',
    'tools/analysis_tools/benchmark_gpu.sh',
    'tools/analysis_tools/provenance.py',
    'tools/analysis_tools/upstream_tools.py',
    'tools/analysis_tools/digits_results.py',
    'benchmarks/provenance.py',
    'benchmarks/digits.py',
)


def _checkout_only(path: str) -> bool:
    return any(
        path == entry or (entry.endswith('/') and path.startswith(entry))
        for entry in CHECKOUT_ONLY
    )


def _ignored_in(folder):
    """A ``shutil.copytree`` ignore function for ``folder`` of the checkout."""

    def ignore(directory, names):
        relative = osp.relpath(directory, HERE)
        ignored = set(
            shutil.ignore_patterns('__pycache__', '*.pyc')(directory, names)
        )
        ignored.update(
            name
            for name in names
            if _checkout_only(
                osp.join(relative, name).replace(os.sep, '/')
                + ('/' if osp.isdir(osp.join(directory, name)) else '')
            )
        )
        return ignored

    return ignore


class BuildPyWithHook(build_py):
    """build_py that also ships the .pth hook, the configs and the tools.

    A wheel holds what ``build_lib`` holds, so the .pth lands in
    site-packages and :data:`MIM_FOLDERS` in ``mmrevnet/.mim`` (where
    mmengine resolves ``mmrevnet::`` and ``mim train/test/run mmrevnet``
    find the configs and tools). An editable install (PEP 660) discards
    ``build_lib`` and packs the ``install`` command's ``install_lib`` (its
    unpacked wheel) instead, so the .pth goes there; the folders stay in
    the checkout, reached through the committed links in ``mmrevnet/.mim``.
    """

    def run(self):
        super().run()
        if self.editable_mode:
            pth_dir = self.get_finalized_command('install').install_lib
        else:
            pth_dir = self.build_lib
            mim = osp.join(self.build_lib, 'mmrevnet', '.mim')
            self.mkpath(mim)
            self.copy_file(
                osp.join(HERE, 'mmrevnet', '.mim', 'model-index.yml'), mim
            )
            for folder in MIM_FOLDERS:
                target = osp.join(mim, folder)
                if osp.islink(target):
                    os.remove(target)
                shutil.rmtree(target, ignore_errors=True)
                shutil.copytree(
                    osp.join(HERE, folder),
                    target,
                    ignore=_ignored_in(folder),
                )
        self.mkpath(pth_dir)
        with open(osp.join(pth_dir, HOOK_PTH), 'w', encoding='utf-8') as f:
            f.write(HOOK_LINE)


def read_version() -> str:
    namespace = {}
    with open(osp.join(HERE, 'mmrevnet', 'version.py')) as f:
        exec(compile(f.read(), 'version.py', 'exec'), namespace)
    return namespace['__version__']


def read_requirements(name: str) -> list:
    requirements = []
    with open(osp.join(HERE, 'requirements', name)) as f:
        for line in f:
            line = line.split('#', 1)[0].strip()
            if line and not line.startswith('-'):
                requirements.append(line)
    return requirements


with open(osp.join(HERE, 'README.md'), encoding='utf-8') as f:
    long_description = f.read()

setup(
    name='mmrevnet',
    version=read_version(),
    description='m-RevNet reversible momentum backbones for OpenMMLab '
    '(mmsegmentation, mmpretrain)',
    long_description=long_description,
    long_description_content_type='text/markdown',
    keywords='reversible networks, momentum, segmentation, openmmlab',
    # Only the library is importable: the tools and the studies
    # (benchmarks/) ship as files in mmrevnet/.mim (BuildPyWithHook); the
    # tests stay in the repository.
    packages=find_packages(include=('mmrevnet', 'mmrevnet.*')),
    # The start-up import hook (see mmrevnet/compat.py), beside its .pth.
    py_modules=[HOOK_MODULE],
    cmdclass={'build_py': BuildPyWithHook},
    # The tested Python (CI and requirements/pinned.txt).
    python_requires='>=3.11',
    license='Apache-2.0',
    install_requires=read_requirements('runtime.txt'),
    extras_require={
        # mmseg needs an mmcv package: either the full build or the lite one.
        'lite': ['mmcv-lite>=2.0.0rc4,<2.2.0'],
        'full': ['mmcv>=2.0.0rc4,<2.2.0'],
        # tools/dataset_converters/export_digits.py reads sklearn's digits.
        'digits': ['scikit-learn'],
        'tests': read_requirements('tests.txt'),
    },
    classifiers=[
        'Programming Language :: Python :: 3',
        'Programming Language :: Python :: 3.11',
        'Topic :: Scientific/Engineering :: Artificial Intelligence',
    ],
    zip_safe=False,
)
