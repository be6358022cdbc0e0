import pytest
import torch


@pytest.fixture(autouse=True)
def _one_thread():
    """The tensors are tiny: intra-op threads only add contention."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
