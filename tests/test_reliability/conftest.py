import pytest
import torch

from tools.dataset_converters.generators.synthetic import generate_cityscapes

# The module-scoped fixtures of the two-process cases, which are split
# over test_distributed.py and test_distributed_launch.py.
from .distributed import configs, reference  # noqa: F401
from .helpers import DATA


@pytest.fixture(scope='session')
def reliability_data(tmp_path_factory):
    """Root of the generated Cityscapes-layout data set."""
    root = str(tmp_path_factory.mktemp('reliability') / 'cityscapes')
    generate_cityscapes(root, **DATA)
    return root


@pytest.fixture
def one_thread():
    """One intra-op thread: on 2 shared cores a second one mostly waits."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
