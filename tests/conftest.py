"""Fixtures shared by the test modules; plain helpers and tiny configs are in helpers.py."""

import pytest
import torch


@pytest.fixture
def one_thread():
    """Networks this small run fastest on one thread (and a busy machine slows OpenMP teams badly).
    Modules of tiny networks use it for every test: ``pytestmark = pytest.mark.usefixtures("one_thread")``."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
