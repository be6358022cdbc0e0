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


class BuildPyWithHook(build_py):
    """build_py that also ships the .pth hook and the configs.

    A wheel holds what ``build_lib`` holds, so the .pth lands in
    site-packages and the configs in ``mmrevnet/.mim/configs`` (where
    mmengine resolves ``mmrevnet::``). An editable install (PEP 660)
    discards ``build_lib`` and packs the ``install`` command's
    ``install_lib`` (its unpacked wheel) instead, so the .pth goes there;
    the configs stay in the checkout, reached through the committed
    ``mmrevnet/.mim/configs`` link.
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
            configs = osp.join(mim, 'configs')
            if osp.islink(configs):
                os.remove(configs)
            shutil.rmtree(configs, ignore_errors=True)
            shutil.copytree(
                osp.join(HERE, 'configs'),
                configs,
                ignore=shutil.ignore_patterns('__pycache__', '*.pyc'),
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
    # Only the library: the studies (benchmarks/), tools, tests and their
    # sub-packages stay in the repository.
    packages=find_packages(include=('mmrevnet', 'mmrevnet.*')),
    # The start-up import hook (see mmrevnet/compat.py), beside its .pth.
    py_modules=[HOOK_MODULE],
    cmdclass={'build_py': BuildPyWithHook},
    python_requires='>=3.8',
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
        'Topic :: Scientific/Engineering :: Artificial Intelligence',
    ],
    zip_safe=False,
)
