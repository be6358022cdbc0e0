"""Two CPU processes train like one: the OpenMMLab launch, the control.

``mrevnet-openmmlab_launch`` starts training as mmseg's and mmpretrain's
own ``tools/train.py`` are started (torchrun, ``--launcher pytorch``,
``runner_type='MRevNetRunner'``, SyncBN); ``resnet`` runs mmseg's
ResNetV1c-34 through ``tools/dist_train.sh``. The reasoning and the shared
checks are in ``distributed.py``; the other cases are in
``test_distributed.py`` (split so that the two pytest-xdist workers run
the two-process jobs side by side).
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
@pytest.mark.parametrize('case', ['mrevnet-openmmlab_launch', 'resnet'])
def test_two_processes_match_one(
    tmp_path, reliability_data, configs, reference, case
):
    check_case(tmp_path, reliability_data, configs, reference, case)
