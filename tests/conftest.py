"""Shared test setup.

``import mmrevnet`` first: it applies the mmcv-lite ``mmcv.ops`` shim
before any test module imports mmseg.
"""

import mmrevnet  # noqa: F401

#: Test files that take longest, longest first (a full run's durations).
#: ``tools/run_tests.sh`` hands whole files to its two pytest-xdist workers
#: in collection order (``--no-loadscope-reorder``; xdist's own order puts
#: files with many tests first, which left single slow tests such as the
#: soak running alone at the end). Longest first lets the many short files
#: fill in the gaps at the end instead.
SLOW_FIRST = (
    'tests/test_tools/test_segmentation_e2e.py',
    'tests/test_install.py',
    'tests/test_reliability/test_distributed.py',
    'tests/test_models/test_compile.py',
    'tests/test_engine/test_hooks.py',
    'tests/test_tools/test_tool_messages.py',
    'tests/test_reliability/test_soak.py',
    'tests/test_models/test_backbones/test_mmpretrain_args.py',
    'tests/test_tools/test_demo.py',
    'tests/test_reliability/test_distributed_launch.py',
    'tests/test_engine/test_memory_budget.py',
    'tests/test_tools/test_safe_loading.py',
    'tests/test_reliability/test_kill_resume.py',
    'tests/test_benchmarks/test_benchmark.py',
)


def pytest_collection_modifyitems(items):
    """Collect :data:`SLOW_FIRST` first, in its order; the rest as found."""
    rank = {path: index for index, path in enumerate(SLOW_FIRST)}
    # A stable sort: the tests of a file keep their order.
    last = len(rank)
    items.sort(key=lambda item: rank.get(item.nodeid.split('::')[0], last))
