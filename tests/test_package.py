"""The boundary of the installed package.

The wheel holds ``mmrevnet`` only; the studies (``benchmarks/``), tools and
tests stay in the repository, and ``import mmrevnet`` loads none of them.
"""

import os.path as osp
import subprocess
import sys
import textwrap
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
        '("benchmarks", "tools", "matplotlib", "sklearn")))'
    )
    out = subprocess.run(
        [sys.executable, '-c', code],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert out.strip() == '[]'


# Rooms, lowest first: a module imports its own room and the rooms below.
# ``version`` and ``compat`` (the documented shims) import nothing of the
# project; ``mmrevnet/__init__`` is the package's face over all rooms. The
# tools' support packages and the studies sit on top; the analysis tools
# import the studies; the command lines (``tools/train.py``, the demo)
# are the roof.
_LAYERS = (
    'mmrevnet.version',
    'mmrevnet.compat',
    'mmrevnet.reversible',
    'mmrevnet.models',
    'mmrevnet.engine',
    'mmrevnet',
    'tools.dataset_converters',
    'tools.model_converters',
    'tools.cli',
    'benchmarks',
    'tools.analysis_tools',
    'tools',
)


def _modules():
    """``{dotted name: path}`` of the library, the tools and the studies."""
    import pathlib

    paths = {}
    for top in ('mmrevnet', 'tools', 'benchmarks'):
        for path in pathlib.Path(REPO, top).rglob('*.py'):
            parts = path.relative_to(REPO).with_suffix('').parts
            if parts[-1] == '__init__':
                parts = parts[:-1]
            paths['.'.join(parts)] = path
    return paths


def _imports():
    """``{module: {imported module of the repository}}``, read from the
    source (function-level imports included)."""
    import ast

    paths = _modules()
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
    """Index in :data:`_LAYERS` of the deepest room holding ``module``."""
    for index, room in enumerate(_LAYERS):
        inside = module == room or module.startswith(room + '.')
        if inside and room not in ('mmrevnet', 'tools'):
            return index
    for top in ('mmrevnet', 'tools'):
        if module == top or module.startswith(top + '.'):
            return _LAYERS.index(top)
    return None


def test_imports_form_no_cycle():
    edges = _imports()
    # The reader sees absolute, relative and function-level imports.
    assert 'mmrevnet.reversible' in edges['mmrevnet.engine.hooks']
    assert (
        'mmrevnet.models.utils.key_mapping'
        in (edges['tools.model_converters.convert'])
    )
    assert 'tools.cli.config' in edges['benchmarks.digits']
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


def test_imports_run_downward():
    upward = set()
    for module, targets in _imports().items():
        for target in targets:
            library = module.startswith('mmrevnet')
            if library and not target.startswith('mmrevnet'):
                # The library never imports a tool or a study.
                upward.add((module, target))
            elif _room(target) > _room(module):
                upward.add((module, target))
        if module.startswith('mmrevnet.reversible'):
            # reversible/ is torch only: no other room of the project.
            assert all(t.startswith('mmrevnet.reversible') for t in targets), (
                module
            )
    assert not upward


def test_every_library_module_imports_alone():
    """Each module of the library imports in a fresh process (forked after
    the third-party packages load), mmseg and mmpretrain imported first.
    (The package's ``__init__`` runs first in each; the torch-only core
    without OpenMMLab is tested by ``test_reversible/test_torch_only``.)"""
    modules = sorted(m for m in _modules() if m.startswith('mmrevnet'))
    code = textwrap.dedent(
        f"""
        import importlib, os, sys
        import mmengine, mmseg.models, mmpretrain.models, torch  # noqa
        failed = []
        for name in {modules!r}:
            pid = os.fork()
            if pid == 0:
                try:
                    importlib.import_module(name)
                except BaseException as error:
                    print(name, repr(error), flush=True)
                    os._exit(1)
                os._exit(0)
            if os.waitpid(pid, 0)[1]:
                failed.append(name)
        print('FAILED', failed)
        """
    )
    result = subprocess.run(
        [sys.executable, '-c', code],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert 'FAILED []' in result.stdout, result.stdout + result.stderr[-3000:]
    assert len(modules) > 30


def test_no_library_module_exits_the_process():
    """``sys.exit``, ``SystemExit`` and the like belong to the command
    lines."""
    import ast

    exits = ('sys.exit', 'exit', 'quit', 'os._exit', 'SystemExit')
    for module, path in _modules().items():
        if not module.startswith('mmrevnet'):
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call):
                name = ast.unparse(node.func)
            elif isinstance(node, ast.Raise) and node.exc is not None:
                name = ast.unparse(node.exc).split('(')[0]
            elif isinstance(node, ast.ImportFrom):
                name = ','.join(alias.name for alias in node.names)
                name = 'exit' if node.module == 'sys' else name
            else:
                continue
            assert name not in exits, (module, node.lineno, name)


def test_shipped_files_import_no_checkout_only_module():
    """What the wheel carries (the library, and tools/ and benchmarks/ in
    .mim less setup.CHECKOUT_ONLY) runs without what it leaves out."""
    with open(osp.join(REPO, 'setup.py'), encoding='utf-8') as f:
        text = f.read()
    start = text.index('CHECKOUT_ONLY = (')
    checkout_only = eval(text[start + 16 : text.index(')', start) + 1])
    paths = _modules()

    def shipped(module):
        path = osp.relpath(paths[module], REPO).replace(osp.sep, '/')
        return not any(
            path == entry or (entry.endswith('/') and path.startswith(entry))
            for entry in checkout_only
        )

    assert not shipped('tools.dataset_converters.generators.synthetic')
    wrong = {
        (module, target)
        for module, targets in _imports().items()
        if shipped(module)
        for target in targets
        if not shipped(target)
    }
    assert not wrong


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
