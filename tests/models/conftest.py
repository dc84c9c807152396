import pytest
import torch


@pytest.fixture(autouse=True)
def _one_thread():
    # Tiny models: one thread is faster than two, and the tests share the machine.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
