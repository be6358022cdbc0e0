"""Installation of mmrevnet (``pip install -e .``)."""

import os.path as osp

from setuptools import find_packages, setup

HERE = osp.dirname(osp.abspath(__file__))


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
