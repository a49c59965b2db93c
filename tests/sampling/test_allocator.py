"""samplerd.sampling.allocator: keeping freed tensor memory in the process (glibc malloc tuning)."""

from __future__ import annotations

import subprocess
import sys

import pytest


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc malloc tuning is Linux-only")
def test_keep_freed_memory_applies_and_sampling_still_matches():
    # In a child process: the tuning is process-wide and must not leak into the test session.
    script = """
import torch
from samplerd.sampling import SamplingParams, sample
from samplerd.sampling.allocator import keep_freed_memory
logits = torch.randn(4, 50_000, generator=torch.Generator().manual_seed(0))
before = sample(logits, SamplingParams(top_p=0.9, seed=3)).token_ids
assert keep_freed_memory() is True
after = sample(logits, SamplingParams(top_p=0.9, seed=3)).token_ids
assert torch.equal(before, after)
print("ok")
"""
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ok"
