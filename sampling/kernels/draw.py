"""Counter-based uniforms (:mod:`samplerd.sampling.rng`) and the inverse-CDF draw
(:mod:`samplerd.sampling.draw`) in numba.
"""

from __future__ import annotations

import numpy as np

from samplerd.sampling.kernels.common import (
    _jit,
)
from samplerd.sampling.rng import GOLDEN, MUL1, MUL2, SEED_SALT, STREAM_DRAW, UNIT

# :func:`samplerd.sampling.rng.uniforms` in uint64 arithmetic that wraps like NumPy's.


@_jit
def _mix(x):
    x = (x ^ (x >> np.uint64(30))) * MUL1
    x = (x ^ (x >> np.uint64(27))) * MUL2
    return x ^ (x >> np.uint64(31))


@_jit
def stream_key(seed, step, stream):
    """The key of (seed, step) in ``stream`` (an :mod:`samplerd.sampling.rng` stream number)."""
    key = _mix(seed * GOLDEN + SEED_SALT)
    return _mix(key ^ (step * GOLDEN + np.uint64(stream + 1)))


@_jit
def uniform_at(key, j):
    """The ``j``-th uniform (from 0) of a :func:`stream_key`."""
    bits = _mix(key + (np.uint64(j) + np.uint64(1)) * GOLDEN)
    return np.float64(bits >> np.uint64(11)) * UNIT


@_jit
def _uniforms(seed, step, count):
    """The first ``count`` draw uniforms of (seed, step), as :func:`samplerd.sampling.rng.uniforms`."""
    key = stream_key(seed, step, STREAM_DRAW)
    out = np.empty(count, dtype=np.float64)
    for j in range(count):
        out[j] = uniform_at(key, j)
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
