"""samplerd's sampler suite: every modern decoding strategy, batched, seeded, exact.

Pure PyTorch; imports neither grpc nor ray, and is usable as a library on its own::

    from samplerd.sampling import SamplingParams, filter_logits, sample
    p = SamplingParams(top_p=0.9, temperature=0.7, seed=7)
    masked = filter_logits(logits, p)  # [B, V], removed tokens -inf
    out = sample(logits, p, steps=0)   # out.token_ids [B, n], out.logprobs, out.stats
"""

import os

# OpenMP threads spin for a while after each parallel region, taking the cores the rest of a
# call runs on: the fused kernels' numba threads and torch's share torch's OpenMP runtime, and
# on the shared 2-core machine torch's exp of a 32000-token row took 1-7 ms right after a
# parallel kernel instead of 0.06 ms. Passive threads sleep at once. OpenMP reads the setting
# when it is loaded (with torch), so it only takes effect when this package is imported first;
# an explicit OMP_WAIT_POLICY wins.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from samplerd.sampling.checks import check_logits, check_token_ids  # noqa: E402
from samplerd.sampling.errors import SamplingError
from samplerd.sampling.output import SampleOutput, SampleStats
from samplerd.sampling.params import SamplingParams
from samplerd.sampling.pipeline import filter_logits, sample
from samplerd.sampling.registry import PARAMETERS, STRATEGIES, STRATEGY_LABELS
from samplerd.sampling.state import SequenceState, advance

__all__ = [
    "PARAMETERS",
    "STRATEGIES",
    "STRATEGY_LABELS",
    "SampleOutput",
    "SampleStats",
    "SamplingError",
    "SamplingParams",
    "SequenceState",
    "advance",
    "check_logits",
    "check_token_ids",
    "filter_logits",
    "sample",
]
