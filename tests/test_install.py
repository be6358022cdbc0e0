"""The installed package: the start-up import hook and the shipped configs.

Each probe runs in a fresh interpreter that does *not* import mmrevnet
first. ``site.addsitedir`` on a folder holding the package's .pth line
reproduces what an install does (site-packages' .pth files run at
start-up); the slow test builds the real wheel into a scratch venv.
"""

import os
import os.path as osp
import re
import subprocess
import sys
import textwrap

import pytest

REPO = osp.dirname(osp.dirname(osp.abspath(__file__)))
USER_CONFIG = """\
_base_ = 'mmrevnet::pspnet/pspnet_mrevnet50-d8_4xb2-80k_cityscapes-512x1024.py'
custom_imports = dict(imports=['mmrevnet'], allow_failed_imports=False)
"""
# The same, inheriting by path: what an editable install (this project's
# environment) supports; mmengine resolves ``mmrevnet::`` only for a
# regular install (tested from the wheel below).
_DEMO_BASE = osp.join(
    REPO,
    'configs',
    'pspnet',
    'pspnet_mrevnet50-d8_4xb2-80k_cityscapes-512x1024.py',
)
PATH_CONFIG = (
    f'_base_ = {_DEMO_BASE!r}\n'
    "custom_imports = dict(imports=['mmrevnet'], allow_failed_imports=False)\n"
)


def _setup_constants():
    """HOOK_PTH and HOOK_LINE, read from setup.py without running setup()."""
    # setup.py calls setup() when run, so its constants are read as text.
    with open(osp.join(REPO, 'setup.py'), encoding='utf-8') as f:
        text = f.read()
    values = {}
    for line in text.splitlines():
        for name in ('HOOK_MODULE', 'HOOK_PTH', 'HOOK_LINE'):
            if line.startswith(f'{name} = '):
                values[name] = eval(line.split(' = ', 1)[1], {}, values)
    return values


def _mmseg_tool(*parts):
    import mmseg

    return osp.join(osp.dirname(mmseg.__file__), '.mim', 'tools', *parts)


# The project's own environment has the hook installed (its .pth is in
# site-packages): a probe "without the hook" takes it out first.
_WITHOUT_HOOK = """
import sys
for _finder in list(sys.meta_path):
    if getattr(_finder, '__module__', '') == '_mmrevnet_import_hook':
        sys.meta_path.remove(_finder)
"""


def _run(code, cwd, site_dir=None, timeout=300):
    """Run ``code`` in a fresh interpreter; the checkout on PYTHONPATH.

    With ``site_dir`` the hook's .pth line is processed as an install would
    (``site.addsitedir``); without it the hook is taken out, whether or not
    this environment has it installed.
    """
    if site_dir is not None:
        prelude = f'import site; site.addsitedir({site_dir!r})\n'
    else:
        prelude = _WITHOUT_HOOK
    env = dict(os.environ, PYTHONPATH=REPO)
    return subprocess.run(
        [sys.executable, '-c', prelude + textwrap.dedent(code)],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


@pytest.fixture(scope='module')
def site_dir(tmp_path_factory):
    """A folder with the .pth line that an install puts in site-packages."""
    constants = _setup_constants()
    folder = tmp_path_factory.mktemp('site')
    (folder / constants['HOOK_PTH']).write_text(constants['HOOK_LINE'])
    return str(folder)


@pytest.fixture(scope='module')
def user_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp('user_project')
    (folder / 'user_cfg.py').write_text(USER_CONFIG)
    (folder / 'path_cfg.py').write_text(PATH_CONFIG)
    return str(folder)


def _full_mmcv_installed():
    import importlib.util

    return importlib.util.find_spec('mmcv._ext') is not None


needs_mmcv_lite = pytest.mark.skipif(
    _full_mmcv_installed(), reason='full mmcv: nothing to fix'
)

APIS = """
from mmseg.apis import inference_model, init_model  # noqa: F401
print('mmrevnet' in __import__('sys').modules)
"""


@needs_mmcv_lite
def test_mmseg_apis_fail_without_the_hook(user_dir):
    result = _run(APIS, user_dir)
    assert result.returncode != 0
    assert "No module named 'mmcv._ext'" in result.stderr


@needs_mmcv_lite
def test_mmseg_apis_import_first_with_the_hook(user_dir, site_dir):
    result = _run(APIS, user_dir, site_dir)
    assert result.returncode == 0, result.stderr
    # The hook fixed mmcv.ops without importing mmrevnet.
    assert result.stdout.strip() == 'False'


def test_hook_imports_nothing_at_startup(user_dir, site_dir):
    result = _run(
        """
        import sys
        names = ('mmcv', 'mmengine', 'mmseg', 'mmrevnet', 'torch')
        print(sorted(n for n in names if n in sys.modules))
        print(type(sys.meta_path[0]).__name__, sys.meta_path[0].__name__)
        """,
        user_dir,
        site_dir,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.split('\n')[:2] == ['[]', 'type ImportHook']


def test_register_all_modules_first(user_dir, site_dir):
    result = _run(
        """
        from mmseg.utils import register_all_modules

        register_all_modules()
        import mmrevnet  # then the plugin, as a config's custom_imports does
        from mmengine.registry import MODELS

        print(MODELS.get('MRevNetV1c').__name__)
        """,
        user_dir,
        site_dir,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().endswith('MRevNetV1c')


def test_print_config_on_a_user_config(user_dir, site_dir):
    """mmseg's print_config.py, run from a user's folder outside the
    checkout, on a config whose custom_imports names mmrevnet."""
    tool = _mmseg_tool('misc', 'print_config.py')
    result = _run(
        f"""
        import runpy, sys
        sys.argv = [{tool!r}, 'path_cfg.py']
        runpy.run_path({tool!r}, run_name='__main__')
        """,
        user_dir,
        site_dir,
    )
    assert result.returncode == 0, result.stderr
    assert "type='MRevNetV1c'" in result.stdout


def test_get_flops_gets_past_imports(user_dir, site_dir):
    """mmseg 1.2.2's get_flops.py builds the model from the config; it
    then fails in mmseg's own call of mmengine 0.10.7's counter (for
    mmseg's own configs too), never on ``mmcv._ext``."""
    tool = _mmseg_tool('analysis_tools', 'get_flops.py')
    result = _run(
        f"""
        import runpy, sys
        sys.argv = [{tool!r}, 'path_cfg.py', '--shape', '64', '128']
        runpy.run_path({tool!r}, run_name='__main__')
        """,
        user_dir,
        site_dir,
    )
    assert 'mmcv._ext' not in result.stderr
    if result.returncode != 0:
        assert '"input_shape" and "inputs" cannot be both set' in (
            result.stderr
        ), result.stderr


def test_hook_is_noop_with_full_mmcv(tmp_path, site_dir):
    """A fake full mmcv (with ``mmcv._ext``) keeps its own mmcv.ops."""
    fake = tmp_path / 'fake'
    (fake / 'mmcv' / 'ops').mkdir(parents=True)
    (fake / 'mmcv' / '__init__.py').write_text('')
    (fake / 'mmcv' / '_ext.py').write_text('')
    (fake / 'mmcv' / 'ops' / '__init__.py').write_text('FULL = True\n')
    result = _run(
        f"""
        import sys
        sys.path.insert(0, {str(fake)!r})
        import mmcv.ops
        print(mmcv.ops.FULL, hasattr(mmcv.ops, '__mmrevnet_patched__'))
        """,
        str(tmp_path),
        site_dir,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == 'True False'


def _build_wheel_venv(tmp_path):
    """Build the wheel and install it into a scratch venv (no pip), whose
    dependencies come from this interpreter's site-packages."""
    import sysconfig

    wheels = tmp_path / 'wheels'
    pip = [sys.executable, '-m', 'pip']
    subprocess.run(
        pip
        + ['wheel', '-q', '--no-deps', '--no-build-isolation', '-w']
        + [str(wheels), REPO],
        check=True,
        cwd=str(tmp_path),
        capture_output=True,
    )
    (wheel,) = wheels.glob('mmrevnet-*.whl')
    venv = tmp_path / 'venv'
    base = getattr(sys, '_base_executable', sys.executable)
    subprocess.run(
        [base, '-m', 'venv', '--without-pip', str(venv)], check=True
    )
    python = venv / 'bin' / 'python'
    site_packages = subprocess.run(
        [
            str(python),
            '-c',
            "import sysconfig; print(sysconfig.get_paths()['purelib'])",
        ],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()
    subprocess.run(
        pip
        + ['install', '-q', '--no-deps', '--target', site_packages]
        + [str(wheel)],
        check=True,
        capture_output=True,
    )
    # Dependencies only: a path line, so that folder's own .pth files
    # (an editable mmrevnet among them) are not run.
    deps = sysconfig.get_paths()['purelib']
    with open(osp.join(site_packages, 'zz_deps.pth'), 'w') as f:
        f.write(deps + '\n')
    return str(python), site_packages


@pytest.fixture(scope='module')
def wheel_venv(tmp_path_factory):
    """(python, site-packages) of one scratch venv for all wheel checks."""
    return _build_wheel_venv(tmp_path_factory.mktemp('wheel'))


def _outside(python, args, cwd, timeout=600, **env):
    """``python *args`` in ``cwd``, the checkout on no path."""
    environment = {k: v for k, v in os.environ.items() if k != 'PYTHONPATH'}
    environment.update(env)
    return subprocess.run(
        [python, *args],
        cwd=cwd,
        env=environment,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


@pytest.mark.slow
def test_wheel_install_outside_the_checkout(wheel_venv, user_dir):
    python, site_packages = wheel_venv
    assert osp.isfile(osp.join(site_packages, 'mmrevnet-import-hook.pth'))
    assert osp.isfile(
        osp.join(
            site_packages,
            'mmrevnet/.mim/configs/pspnet/'
            'pspnet_mrevnet50-d8_4xb2-80k_cityscapes-512x1024.py',
        )
    )
    tool = _mmseg_tool('misc', 'print_config.py')
    env = {k: v for k, v in os.environ.items() if k != 'PYTHONPATH'}
    result = subprocess.run(
        [python, tool, 'user_cfg.py'],
        cwd=user_dir,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    assert "type='MRevNetV1c'" in result.stdout
    result = subprocess.run(
        [python, '-c', APIS + 'import mmrevnet; print(mmrevnet.__file__)'],
        cwd=user_dir,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == [
        'False',
        osp.join(site_packages, 'mmrevnet', '__init__.py'),
    ]


#: Where ``mim`` finds the tools of an installed package.
MIM_TOOLS = osp.join('mmrevnet', '.mim', 'tools')
DEMO_CONFIG = (
    'pspnet_mrevnet34-d8_1xb8-300iter_synthetic-cityscapes-128x256.py'
)


def _shipped_tools():
    """The tools the wheel holds: the checkout's, less setup.CHECKOUT_ONLY."""
    with open(osp.join(REPO, 'setup.py'), encoding='utf-8') as f:
        text = f.read()
    start = text.index('CHECKOUT_ONLY = (')
    checkout_only = eval(text[start + 16 : text.index(')', start) + 1])
    shipped = set()
    for folder, _, files in os.walk(osp.join(REPO, 'tools')):
        for name in files:
            path = osp.relpath(osp.join(folder, name), REPO)
            skipped = [
                entry
                for entry in checkout_only
                if path == entry
                or (entry.endswith('/') and path.startswith(entry))
            ]
            if name.endswith(('.py', '.sh')) and not skipped:
                shipped.add(osp.relpath(path, 'tools'))
    return shipped


def _tiny_options(data_root):
    """``--cfg-options`` that train the demo config for 1 iteration on the
    generated 64x128 images, checkpoint at 1, no validation."""
    options = {
        'model.data_preprocessor.size': '(64,128)',
        'train_dataloader.batch_size': 2,
        'train_cfg.max_iters': 1,
        'train_cfg.val_begin': 2,
        'train_cfg.val_interval': 2,
        'default_hooks.logger.interval': 1,
        'default_hooks.checkpoint.interval': 1,
    }
    for split in ('train', 'val', 'test'):
        options[f'{split}_dataloader.num_workers'] = 0
        options[f'{split}_dataloader.persistent_workers'] = False
        options[f'{split}_dataloader.dataset.data_root'] = data_root
    return ['--cfg-options'] + [f'{k}={v}' for k, v in options.items()]


def _mim(python, *args, cwd, **env):
    """OpenMMLab's CLI (``mim``) of the scratch venv; asserts exit 0."""
    result = _outside(python, ['-m', 'mim', *args], cwd, **env)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-6000:]
    return output


@pytest.fixture(scope='module')
def mim_project(wheel_venv, tmp_path_factory):
    """A user's folder with a Cityscapes-layout data set (written by the
    checkout's generator, which the wheel does not ship) and a checkpoint
    from ``mim train``."""
    python, site_packages = wheel_venv
    folder = str(tmp_path_factory.mktemp('mim_user'))
    tools = osp.join(site_packages, MIM_TOOLS)
    data_root = osp.join(folder, 'data')
    from tools.dataset_converters.generators.synthetic import (
        generate_cityscapes,
    )

    generate_cityscapes(data_root, num_train=4, num_val=2)
    assert len(os.listdir(osp.join(data_root, 'gtFine', 'train'))) > 0
    output = _mim(
        python,
        'train',
        'mmrevnet',
        DEMO_CONFIG,
        '--work-dir',
        'train',
        *_tiny_options(data_root),
        cwd=folder,
    )
    # mim found the config and the tool in the installed package.
    config = osp.join(site_packages, 'mmrevnet', '.mim', 'configs', 'demo')
    assert f'will use {osp.join(config, DEMO_CONFIG)} instead' in output
    assert f'Training command is {python} {tools}/train.py' in output
    assert 'Iter(train) [1/1]' in output
    checkpoint = osp.join(folder, 'train', 'iter_1.pth')
    assert osp.isfile(checkpoint)
    return dict(folder=folder, data_root=data_root, checkpoint=checkpoint)


@pytest.mark.slow
def test_tools_ship_in_the_wheel(wheel_venv):
    _, site_packages = wheel_venv
    shipped = osp.join(site_packages, MIM_TOOLS)
    checkout = osp.join(REPO, 'tools')

    def tree(root):
        return {
            osp.relpath(osp.join(d, f), root)
            for d, _, files in os.walk(root)
            for f in files
            if f.endswith(('.py', '.sh'))
        }

    assert tree(shipped) == _shipped_tools()
    assert tree(checkout) > _shipped_tools()
    # No data generator ships: they are development tools.
    assert not any('dataset_converters' in path for path in tree(shipped))
    # The study modules the analysis tools import sit beside them.
    benchmarks = osp.join(site_packages, 'mmrevnet', '.mim', 'benchmarks')
    assert osp.isfile(osp.join(benchmarks, 'toy_dynamics.py'))


@pytest.mark.slow
def test_mim_test(wheel_venv, mim_project):
    python, site_packages = wheel_venv
    output = _mim(
        python,
        'test',
        'mmrevnet',
        DEMO_CONFIG,
        '--checkpoint',
        mim_project['checkpoint'],
        '--work-dir',
        'test',
        *_tiny_options(mim_project['data_root']),
        cwd=mim_project['folder'],
    )
    tools = osp.join(site_packages, MIM_TOOLS)
    assert f'Testing command is {python} {tools}/test.py' in output
    assert re.search(r'Iter\(test\) .* mIoU: [0-9.]+', output), output[-3000:]


@pytest.mark.slow
def test_mim_train_two_cpu_processes(wheel_venv, mim_project):
    """``mim train --launcher pytorch --gpus 2`` starts the shipped
    train.py under torch.distributed.launch; on CPUs: gloo."""
    python, _ = wheel_venv
    output = _mim(
        python,
        'train',
        'mmrevnet',
        DEMO_CONFIG,
        '--launcher',
        'pytorch',
        '--gpus',
        '2',
        '--work-dir',
        'dist',
        *_tiny_options(mim_project['data_root']),
        cwd=mim_project['folder'],
        CUDA_VISIBLE_DEVICES='',
    )
    assert 'Distributed training: True' in output
    assert 'GPU number: 2' in output
    assert "type='MRevNetCPUDistributedDataParallel'" in output
    assert 'Iter(train) [1/1]' in output


@pytest.mark.slow
def test_mim_run_an_analysis_tool(wheel_venv, mim_project):
    """An analysis tool importing the study modules (benchmarks/), both
    from the package's .mim."""
    python, _ = wheel_venv
    folder = mim_project['folder']
    output = _mim(
        python,
        'run',
        'mmrevnet',
        'toy_dynamics',
        '--quick',
        '--experiments',
        '1d',
        '--workers',
        '1',
        '--no-plots',
        '--out-dir',
        'toy',
        cwd=folder,
    )
    assert osp.isfile(osp.join(folder, 'toy', 'results.md')), output[-3000:]


_SHADOWED = """
import mmrevnet
print(getattr(mmrevnet, '__file__', None))
"""


def test_clone_folder_does_not_shadow_the_package(tmp_path):
    """A script next to a folder named ``mmrevnet/`` (a clone's root has no
    ``__init__.py``) gets the installed package with the hook; without it,
    an empty namespace package. Uses this environment's install (no
    PYTHONPATH): the control shows the shadowing is real here."""
    (tmp_path / 'mmrevnet').mkdir()
    env = {k: v for k, v in os.environ.items() if k != 'PYTHONPATH'}
    outputs = {}
    for name, prelude in (('hook', ''), ('without', _WITHOUT_HOOK)):
        result = subprocess.run(
            [sys.executable, '-c', prelude + _SHADOWED],
            cwd=str(tmp_path),
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert result.returncode == 0, result.stderr
        outputs[name] = result.stdout.strip().splitlines()[-1]
    if outputs['without'] != 'None':
        pytest.skip(
            'mmrevnet is installed as a regular package here: a folder '
            'cannot shadow it'
        )
    assert outputs['hook'].endswith(osp.join('mmrevnet', '__init__.py'))
