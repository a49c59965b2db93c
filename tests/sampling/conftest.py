"""Fixtures of the sampling tests."""

from __future__ import annotations

import pytest
import torch


@pytest.fixture
def one_torch_thread():
    """One torch thread for the test, as samplerd's workers run: with several, torch splits a
    single long row's float32 sum across threads, so a row's sums depend on its batch's size."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
