"""Counter-based uniforms (:mod:`samplerd.sampling.rng`) and the inverse-CDF draw
(:mod:`samplerd.sampling.draw`) in numba.
"""

from __future__ import annotations

import numpy as np

from samplerd.sampling.kernels.common import (
    _jit,
)
from samplerd.sampling.rng import STREAM_DRAW

# :func:`samplerd.sampling.rng.uniforms` (stream STREAM_DRAW), in uint64 arithmetic that wraps like NumPy's.
_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_MUL1 = np.uint64(0xBF58476D1CE4E5B9)
_MUL2 = np.uint64(0x94D049BB133111EB)
_SEED_SALT = np.uint64(0x632BE59BD9B4E019)
_DRAW_STREAM = np.uint64(STREAM_DRAW + 1)


@_jit
def _mix(x):
    x = (x ^ (x >> np.uint64(30))) * _MUL1
    x = (x ^ (x >> np.uint64(27))) * _MUL2
    return x ^ (x >> np.uint64(31))


@_jit
def _uniforms(seed, step, count):
    """The first ``count`` draw uniforms of (seed, step), as :func:`samplerd.sampling.rng.uniforms`."""
    key = _mix(seed * _GOLDEN + _SEED_SALT)
    key = _mix(key ^ (step * _GOLDEN + _DRAW_STREAM))
    out = np.empty(count, dtype=np.float64)
    for j in range(count):
        bits = _mix(key + (np.uint64(j) + np.uint64(1)) * _GOLDEN)
        out[j] = np.float64(bits >> np.uint64(11)) * (1.0 / 9007199254740992.0)
    return out


@_jit
def _draw(z, w, threshold, block_totals, width, draws, count, tokens):
    """:func:`samplerd.sampling.draw.inverse_cdf` for one row whose final weights are
    ``where(z >= threshold, w, 0)``, from their float32 block sums (as torch computes them):
    ``tokens[j]`` for the first ``count`` uniforms ``draws``."""
    vocab = z.shape[0]
    blocks = block_totals.shape[0]
    running_blocks = np.empty(blocks, dtype=np.float64)
    acc = 0.0
    last_block = -1
    for b in range(blocks):
        acc += block_totals[b]
        running_blocks[b] = acc
        if block_totals[b] > 0:
            last_block = b
    for j in range(count):
        target = draws[j] * running_blocks[blocks - 1]
        block = 0
        while block < blocks and running_blocks[block] <= target:
            block += 1
        block = min(block, last_block)
        before = running_blocks[block - 1] if block > 0 else 0.0
        start = block * width
        stop = min(start + width, vocab)
        cumulative = 0.0
        offset = width
        last_positive = -1
        for i in range(start, stop):
            value = np.float64(w[i]) if z[i] >= threshold else 0.0
            cumulative += value
            if value > 0:
                last_positive = i - start
            if offset == width and cumulative + before > target:
                offset = i - start
        tokens[j] = start + (min(offset, last_positive) if offset < width else last_positive)
