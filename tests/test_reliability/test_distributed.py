"""Two CPU processes started by ``tools/dist_train.sh`` train like one.

The m-RevNet demo config with mmengine's DDP options (default,
``find_unused_parameters``, ``static_graph``); the reasoning and the
shared checks are in ``distributed.py``. The OpenMMLab launch and the
ResNet control are in ``test_distributed_launch.py``: each case starts
its own two-process job, and two files let the two pytest-xdist workers
(``--dist loadfile``) run them side by side.
"""

import pytest
import torch

from .distributed import check_case

# The reference runs in this process on mmengine's device; the ranks run
# on the CPU.
pytestmark = pytest.mark.skipif(
    torch.cuda.is_available(), reason='compares CPU (gloo) training'
)


@pytest.mark.slow
@pytest.mark.parametrize(
    'case', ['mrevnet', 'mrevnet-find_unused', 'mrevnet-static_graph']
)
def test_two_processes_match_one(
    tmp_path, reliability_data, configs, reference, case
):
    check_case(tmp_path, reliability_data, configs, reference, case)
