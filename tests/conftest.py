import zlib

import numpy as np
import pytest
import torch


@pytest.fixture(autouse=True)
def _threads_and_seeds(request):
    """Two threads, and every test's randomness seeded (from its name, so tests stay independent
    of their order): torch's and numpy's global generators."""
    torch.set_num_threads(2)
    seed = zlib.crc32(request.node.nodeid.encode())
    torch.manual_seed(seed)
    np.random.seed(seed % 2**32)
    yield
