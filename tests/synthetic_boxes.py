"""Test helper: one intra-op thread for tiny models (the toy data set itself is `regionspot.data.toy`)."""

from __future__ import annotations

import pytest
import torch


@pytest.fixture(scope="module")
def one_cpu_thread():
    """Tiny models on a shared CPU: one intra-op thread is several times faster than oversubscribed threads."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
