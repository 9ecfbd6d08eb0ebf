"""Shared settings of the TRL-compatibility tests (issue #20)."""

import pytest
import torch


@pytest.fixture(autouse=True)
def _one_intra_op_thread():
    """One torch thread per test: the tiny models gain nothing from intra-op threads, and on a busy
    2-core machine OpenMP's barriers make each small matmul wait for a time slice (~20 ms instead of
    ~10 µs), which turns a 3 s training run into 30 s."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)
