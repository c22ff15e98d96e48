"""Shared test settings: deterministic seeds and a fixed, small thread count."""

import os
import random

import numpy as np
import pytest
import torch

from instaseg.engine.allocator import reuse_freed_memory

# Under pytest-xdist (``make test``: two workers on two cores) each worker keeps to one thread: two
# workers of two threads each oversubscribed the cores and the suite took 909 s instead of 690 s.
torch.set_num_threads(1 if os.environ.get("PYTEST_XDIST_WORKER") else 2)

# Tests run as the instaseg command does: freed memory kept for reuse (instaseg.engine.allocator),
# from the start rather than from whichever test first calls the command or trains. The tiny
# preset's learning test: 43 s instead of 53 s in one process.
reuse_freed_memory()


@pytest.fixture(autouse=True)
def _seed_everything():
    random.seed(0)
    np.random.seed(0)
    torch.manual_seed(0)
    yield


@pytest.fixture(scope="module")
def one_thread():
    """One intra-op thread for a module of tiny tensors (``pytestmark = pytest.mark.usefixtures("one_thread")``):
    a second thread only adds synchronisation, and its spin-waits stall a busy 2-core machine by 10-30x."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)
