"""Fixtures shared by the test files."""

import os

import pytest
import torch

# Without a GPU, Triton kernels run through Triton's interpreter on CPU tensors. The switch is read when a
# kernel is defined, so it must be set before dimstudy.ops.triton_scan / triton_conv are first imported.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")


@pytest.fixture(scope="module")
def one_thread():
    """One intra-op thread: on a shared 2-core box a second OpenMP thread that gets descheduled stalls every
    small op (steps measured 10-50x slower under load), while one thread is as fast for these tiny shapes."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
