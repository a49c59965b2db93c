"""Torch's float32 row sums, replayed in the order torch's CPU kernel adds.
"""

from __future__ import annotations

import numpy as np

from samplerd.sampling.kernels.common import (
    _ZERO,
    _jit,
)

# Torch's float32 sums, replayed. top-p's target and the draw's block sums are float32 sums
# computed by torch in the general path; their last bits decide rare boundary cases, so the
# fast path must add in torch's order: its CPU sum kernel (aten/src/ATen/native/cpu/
# SumKernel.cpp, ``cascade_sum``) reads the row as vectors of ``lanes`` floats, four vectors at
# a time, each of the 4 x ``lanes`` columns summed sequentially over groups of 16 steps, the
# group sums cascaded through three more levels, then the columns folded and the leftovers
# added. :func:`sum_lanes` checks this replay against torch on this machine (and picks the
# vector width); where it does not match, the fast path asks torch for these sums instead.


@_jit
def _ceil_log2(x):
    n = 0
    while (1 << n) < x:
        n += 1
    return n


@_jit
def _lane_groups(z, w, threshold, width, steps, mask, groups):
    """Column sums of ``where(z >= threshold, w, 0)`` read as ``[steps, width]``, sequential
    over each group of ``mask + 1`` steps, into the rows of ``groups`` (the last row: the steps
    after the last whole group); returns the number of whole groups."""
    g = 0
    if width == 32:  # 8 lanes: a constant width vectorises
        acc = np.zeros(32, dtype=np.float32)
        for i in range(steps):
            base = i * 32
            for t in range(32):
                acc[t] += w[base + t] if z[base + t] >= threshold else _ZERO
            if (i & mask) == mask:
                for t in range(32):
                    groups[g, t] = acc[t]
                    acc[t] = _ZERO
                g += 1
        for t in range(32):
            groups[g, t] = acc[t]
        return g
    acc = np.zeros(width, dtype=np.float32)
    for i in range(steps):
        base = i * width
        for t in range(width):
            acc[t] += w[base + t] if z[base + t] >= threshold else _ZERO
        if (i & mask) == mask:
            for t in range(width):
                groups[g, t] = acc[t]
                acc[t] = _ZERO
            g += 1
    for t in range(width):
        groups[g, t] = acc[t]
    return g


@_jit
def _sum_from_groups(z, w, threshold, lanes, groups, whole):
    """Finish torch's sum of ``where(z >= threshold, w, 0)`` from the level-0 group sums
    (:func:`_lane_groups`): the higher levels, the leftover vectors, the columns, the tail."""
    n = z.shape[0]
    vectorised = n >= lanes
    width = 4 * lanes if vectorised else 4
    vectors = n // lanes if vectorised else 0
    steps = (vectors if vectorised else n) // 4
    power = max(4, _ceil_log2(steps) // 4)
    mask = (1 << power) - 1
    level = np.zeros((3, width), dtype=np.float32)
    for g in range(whole):
        done = (g + 1) << power
        for t in range(width):
            level[0, t] += groups[g, t]
        if done & (mask << power):
            continue
        for t in range(width):
            level[1, t] += level[0, t]
            level[0, t] = _ZERO
        if done & (mask << (2 * power)):
            continue
        for t in range(width):
            level[2, t] += level[1, t]
            level[1, t] = _ZERO
    acc = groups[whole]
    for j in range(3):
        for t in range(width):
            acc[t] += level[j, t]
    if not vectorised:
        total = acc[0]
        for i in range(steps * 4, n):
            total += w[i] if z[i] >= threshold else _ZERO
        for k in range(1, 4):
            total += acc[k]
        return total
    for v in range(steps * 4, vectors):
        for t in range(lanes):
            i = v * lanes + t
            acc[t] += w[i] if z[i] >= threshold else _ZERO
    return _fold(z, w, threshold, lanes, acc, vectors * lanes)


@_jit
def _fold(z, w, threshold, lanes, acc, tail):
    """The last steps of torch's sum: the four column vectors into the first, then the
    scalar tail ``[tail, V)`` and the lanes, in order."""
    for k in range(1, 4):
        for t in range(lanes):
            acc[t] += acc[k * lanes + t]
    total = _ZERO
    for i in range(tail, z.shape[0]):
        total += w[i] if z[i] >= threshold else _ZERO
    for t in range(lanes):
        total += acc[t]
    return total


@_jit
def _torch_sum(z, w, threshold, lanes, groups):
    """``where(z >= threshold, w, 0).sum()`` in float32, added as torch's CPU kernel adds it
    for a contiguous row of this length; ``groups``: scratch."""
    n = z.shape[0]
    vectorised = n >= lanes
    width = 4 * lanes if vectorised else 4
    steps = ((n // lanes) if vectorised else n) // 4
    mask = (1 << max(4, _ceil_log2(steps) // 4)) - 1
    whole = _lane_groups(z, w, threshold, width, steps, mask, groups)
    return _sum_from_groups(z, w, threshold, lanes, groups, whole)


@_jit
def _block_totals(z, w, threshold, block, lanes, groups, whole, out):
    """:func:`samplerd.sampling.draw.block_sums` of ``where(z >= threshold, w, 0)`` (float64 out).
    ``whole`` > 0: ``groups`` hold the row's level-0 group sums of 16 steps of ``4 * lanes``
    (:func:`_row_pass`), which make up whole blocks of 1024; else every block is summed anew."""
    vocab = z.shape[0]
    width = 4 * lanes
    per_block = block // (16 * width)
    for b in range(out.shape[0]):
        start = b * block
        stop = min(start + block, vocab)
        if whole and stop - start == 1024 and per_block * 16 * width == 1024:
            # A whole block is whole groups: torch adds them into level 1, from zero.
            acc = np.zeros(width, dtype=np.float32)
            for g in range(b * per_block, (b + 1) * per_block):
                for t in range(width):
                    acc[t] += groups[g, t]
            out[b] = _fold(z[start:stop], w[start:stop], threshold, lanes, acc, stop - start)
        else:
            out[b] = _torch_sum(z[start:stop], w[start:stop], threshold, lanes, groups)  # the last block


# The two passes over every row. Each reads the row as [V // 32, 32] and keeps 32 column
# accumulators, summed sequentially within groups of 16 steps: with 8 lanes these are
# exactly torch's level-0 sums (:func:`_lane_groups`), so the same pass that computes the
# statistics also yields what :func:`_sum_from_groups` and :func:`_block_totals` need. The
