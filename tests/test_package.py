"""The boundary of the installed package.

The wheel holds ``mmrevnet`` only; the studies (``benchmarks/``), tools and
tests stay in the repository, and ``import mmrevnet`` loads none of them.
"""

import os.path as osp
import subprocess
import sys
from unittest import mock

import setuptools

REPO = osp.dirname(osp.dirname(osp.abspath(__file__)))


def test_wheel_holds_only_the_library():
    captured = {}
    with mock.patch.object(setuptools, 'setup', captured.update):
        path = osp.join(REPO, 'setup.py')
        with open(path) as f:
            code = compile(f.read(), path, 'exec')
        exec(code, {'__file__': path, '__name__': '__main__'})
    packages = captured['packages']
    assert 'mmrevnet' in packages
    assert 'mmrevnet.reversible' in packages
    assert all(p == 'mmrevnet' or p.startswith('mmrevnet.') for p in packages)


def test_import_loads_no_study_tool_or_plotting_code():
    code = (
        'import sys, mmrevnet; '
        'print(sorted(m for m in sys.modules if m.split(".")[0] in '
        '("benchmarks", "tools", "matplotlib") or '
        'm.startswith("mmrevnet.datasets")))'
    )
    out = subprocess.run(
        [sys.executable, '-c', code],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert out.strip() == '[]'


# Rooms of the library, lowest first: a module may import its own room and
# the rooms below it. ``compat`` and ``version`` are the package's face.
_LAYERS = ('reversible', 'models', 'analysis', 'engine')

# Imports that still run upward (each a function-level import): the safe
# checkpoint reader lives in the engine but the backbone's ``Pretrained``
# loading and the converter use it; the planner reads the engine's config
# helpers. Listed exactly, so that a new upward edge fails, and so does
# one that is removed without shrinking this list.
_KNOWN_UPWARD = {
    ('mmrevnet.models.convert', 'mmrevnet.engine.checkpoint'),
    ('mmrevnet.models.utils.weight_loading', 'mmrevnet.engine.checkpoint'),
    ('mmrevnet.analysis.planner', 'mmrevnet.engine.config'),
}


def _library_imports():
    """``{module: {imported library module}}``, read from the source
    (function-level imports included)."""
    import ast
    import pathlib

    root = pathlib.Path(REPO, 'mmrevnet')
    paths = {}
    for path in root.rglob('*.py'):
        parts = path.relative_to(REPO).with_suffix('').parts
        if parts[-1] == '__init__':
            parts = parts[:-1]
        paths['.'.join(parts)] = path
    edges = {}
    for module, path in paths.items():
        package = module.split('.')
        if path.name != '__init__.py':
            package = package[:-1]
        found = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom):
                base = node.module.split('.') if node.module else []
                if node.level:
                    base = package[: len(package) - node.level + 1] + base
                target = '.'.join(base)
                names = [target] + [f'{target}.{a.name}' for a in node.names]
            elif isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            else:
                continue
            found.update(n for n in names if n in paths and n != module)
        edges[module] = found
    return edges


def _room(module):
    parts = module.split('.')
    return parts[1] if len(parts) > 1 else ''


def test_library_imports_form_no_cycle():
    edges = _library_imports()
    # The reader sees absolute, relative and function-level imports.
    assert 'mmrevnet.reversible' in edges['mmrevnet.engine.hooks']
    assert (
        'mmrevnet.models.utils.key_mapping'
        in (edges['mmrevnet.models.convert'])
    )
    assert (
        'mmrevnet.engine.checkpoint'
        in (edges['mmrevnet.models.utils.weight_loading'])
    )
    state = {}

    def visit(module, path):
        state[module] = 'open'
        for target in sorted(edges[module]):
            # A package's __init__ re-exporting its own modules is not a
            # loop of the code; the modules' imports of each other are.
            if target == module.rsplit('.', 1)[0]:
                continue
            if state.get(target) == 'open':
                cycle = path[path.index(target) :] + [target]
                raise AssertionError('import cycle: ' + ' -> '.join(cycle))
            if target not in state:
                visit(target, path + [target])
        state[module] = 'done'

    for module in sorted(edges):
        if module not in state:
            visit(module, [module])


def test_library_imports_run_downward():
    upward = set()
    for module, targets in _library_imports().items():
        if _room(module) not in _LAYERS:
            continue
        for target in targets:
            if _room(target) in _LAYERS and _LAYERS.index(
                _room(target)
            ) > _LAYERS.index(_room(module)):
                upward.add((module, target))
            if _room(module) == 'reversible':
                assert _room(target) == 'reversible', (module, target)
    assert upward == _KNOWN_UPWARD


def test_docs_named_in_the_library_exist():
    import pathlib
    import re

    named = set()
    for path in pathlib.Path(REPO, 'mmrevnet').rglob('*.py'):
        for match in re.finditer(r'docs/[\w./-]+', path.read_text()):
            named.add((match.group().rstrip('.'), path.name))
    assert len(named) > 3  # the package does point at its docs
    missing = [(doc, source) for doc, source in sorted(named)
               if not pathlib.Path(REPO, doc).exists()]  # fmt: skip
    assert not missing


def test_declared_minimums_are_the_tested_versions():
    """The lower bound of each main dependency is the pinned (tested)
    version, so nothing older is declared than CI runs."""
    import re

    def read(name):
        with open(osp.join(REPO, 'requirements', name)) as f:
            return [line.split('#')[0].strip() for line in f]

    pinned = dict(
        line.split('==') for line in read('pinned.txt') if '==' in line
    )
    lower = {}
    for line in read('runtime.txt'):
        match = re.match(r'([\w-]+)>=([\d.]+)', line)
        if match:
            lower[match.group(1)] = match.group(2)
    names = ('torch', 'torchvision', 'mmengine', 'mmsegmentation')
    assert set(names) <= set(lower)
    for name in names + ('mmpretrain',):
        tested = pinned[name].split('+')[0].split('.')
        declared = lower[name].split('.')
        assert tested[: len(declared)] == declared, (name, pinned[name])
    with open(osp.join(REPO, 'setup.py')) as f:
        assert "python_requires='>=3.11'" in f.read()
    assert sys.version_info[:2] >= (3, 11)
