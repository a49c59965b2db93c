"""A fused CPU fast path of :func:`sampling.sample` for the most common request shape.

Rows whose parameters switch on nothing but temperature (not greedy, not dynamic), top-k
(Fan et al. 2018, :mod:`sampling.strategies.top_k`), top-p (Holtzman et al. 2020,
:mod:`sampling.strategies.top_p`) and min-p (Nguyen et al. 2024,
:mod:`sampling.strategies.min_p`) — with ``n``, ``seed``, ``top_logprobs``,
``stats_top_k`` and ``min_tokens_to_keep`` — are sampled here instead of by the general
pipeline's ~25 batched torch passes (:func:`is_eligible`, decided per row from the
registry's declarations). Everything else goes through the general path.

What is fused: the check of the logits, the temperature division, the row maxima, the
statistics of the full distribution (entropy, varentropy, top-k entropy and mass), the
three truncations in their chain order (temperature -> top-k -> top-p -> min-p, each seeing
the renormalised output of the one before), ``min_tokens_to_keep``, the statistics of the
final distribution, the inverse-CDF draws and ``top_logprobs``: a first kernel prepares the
rows, torch exponentiates them (its vectorised ``exp`` gives the general path's weights bit
for bit), a second kernel does the rest of each row in a few passes while it is in cache,
a third draws and writes the outputs.

The decisions are the general path's, not an approximation of them:

* Every truncation here is a threshold on the tempered logit (ties at a boundary are kept
  with their whole group), so the chain is ``z >= max(t_k, t_p, t_minp)``, each threshold
  lowered to the ``min_tokens_to_keep``-th largest logit as
  :func:`sampling.pipeline._protect_top_tokens` does.
* top-k's threshold is the exact k-th largest finite logit (:func:`sampling.selection.kth_largest`).
* top-p's threshold replays :func:`sampling.selection.prefix_boundary` float for float: the
  same bins, float32 bin sums accumulated in index order (as ``scatter_add_``), running
  sums accumulated in float64 and rounded to float32 (as torch's CPU ``cumsum``), the same
  search inside the boundary bin (rows whose boundary bin holds too few tokens for the
  target are resolved as a single row is there); its target is ``top_p`` times the float32
  total that torch computes of the weights top-p sees.
* min-p keeps ``z >= max + log(min_p)`` with torch's float32 ``log``.
* The draw replays :func:`sampling.draw.inverse_cdf` on the float32 block sums that torch
  computes of the final weights, with the same uniforms (:func:`sampling.rng.uniforms`).
* Those float32 totals and block sums are replayed in torch's order of addition (see
  :func:`sum_lanes`), checked against torch once per process; where the replay does not
  match, torch computes them.

Statistics are float32 sums within groups of 512 tokens, float64 across them (the general
path: float32 throughout), equal within float32 rounding. Ties inside ``top_logprobs`` are
reported in index order (the general path: in ``torch.topk``'s order).

Why numba: the per-row work left after ``exp`` — a histogram of the row, a few running
sums, a search inside one bin — is sequential and data-dependent; torch needs a dozen
full-row passes and as many dispatches for it, a compiled loop needs one pass. The kernels
are compiled once and cached on disk (``cache=True``), run single-threaded on the caller's
thread (no ``parallel=True``; ``nogil``), and take the same argument types whatever the
batch, so a warm-up call on a tiny batch compiles (or loads) exactly what serving uses.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import numba
import numpy as np
import torch

from sampling.distribution import EXP_FLOOR
from sampling.draw import block_size, block_sums
from sampling.errors import SamplingError
from sampling.output import SampleOutput, SampleStats
from sampling.rng import STREAM_DRAW, fresh_seeds
from sampling.selection import _BINS_PER_UNIT, _NUM_BINS
from sampling.strategies import min_p, temperature, top_k, top_p

#: The strategies this path implements; a row that switches on any other is not eligible.
STRATEGIES = (temperature.TEMPERATURE_STRATEGY, top_k.STRATEGY, top_p.STRATEGY, min_p.STRATEGY)
_NAMES = frozenset(s.name for s in STRATEGIES)

_state = threading.local()


def is_enabled() -> bool:
    """Whether :func:`sampling.sample` uses the fast path for eligible rows (default True)."""
    return getattr(_state, "enabled", True)


@contextmanager
def enabled(flag: bool = True) -> Iterator[None]:
    """Switch the fast path on or off in this thread for the ``with`` block (tests, benchmarks)."""
    before = is_enabled()
    _state.enabled = flag
    try:
        yield
    finally:
        _state.enabled = before


def is_eligible(p) -> bool:
    """Whether a row with parameters ``p`` can take the fast path (on a CPU tensor): sampled
    with temperature, every other strategy it switches on is top-k, top-p or min-p."""
    active = p.active_strategies()
    return temperature.TEMPERATURE_STRATEGY.name in active and _NAMES.issuperset(active)


def eligible_rows(logits: torch.Tensor, params: Sequence) -> list[int]:
    """Indices of the rows of a checked batch that the fast path takes (none off the CPU or
    while switched off)."""
    if logits.device.type != "cpu" or not is_enabled():
        return []
    known: dict[int, bool] = {}
    rows = []
    for i, p in enumerate(params):
        flag = known.get(id(p))
        if flag is None:
            flag = known[id(p)] = is_eligible(p)
        if flag:
            rows.append(i)
    return rows


# --------------------------------------------------------------------------------------
# Kernels. Each loops over the rows itself (one call per batch) and takes the same argument
# types whatever the batch. Per row, ``z`` holds the tempered float32 logits, ``w`` their
# weights ``exp(max(z - m, EXP_FLOOR))`` (torch's exp; 0 for masked tokens), ``m`` the
# maximum. A token's bin is :func:`sampling.selection.prefix_boundary`'s
# ``min(int((m - z) * 64), 2047)`` in float32; ``d = (m - z) * 64`` is its unclamped value.

_F32 = np.float32
_SCALE = _F32(_BINS_PER_UNIT)
_LAST_BIN = _NUM_BINS - 1
_NEAR_BINS = int(8 * _BINS_PER_UNIT) - 1  # the bins within 8 nats of the maximum
_FLOOR = _F32(EXP_FLOOR)
_CHUNK = 128  # tokens per chunk; chunk maxima let searches for the largest tokens skip the rest
_NEG_INF = _F32(-np.inf)
_POS_INF = _F32(np.inf)
_ZERO = _F32(0.0)
_SIGN = np.int32(0x7FFFFFFF)
_INF_KEY = np.int32(0x7F800000)  # the keys (_key) of +inf and -inf
_NEG_INF_KEY = np.int32(-0x7F800001)

# No fast-math anywhere: every float operation here is an IEEE one, in the written order
# (float32 sums that decide the kept set must add exactly as torch does). The loops that
# vectorise do so across independent columns, which needs no reassociation.
_jit = numba.njit(cache=True, nogil=True)


@_jit
def _key(bits):
    """A float32's bits as an int32 that orders like the float (an involution)."""
    return bits ^ ((bits >> 31) & _SIGN)


@_jit
def _maxima(x, divisor, chunk_max):
    """The maximum of ``x / divisor`` and of each of its chunks (into ``chunk_max``; the
    division is monotone, so they are the divided maxima of ``x``), and what ``x`` holds:
    0 finite logits only, 1 also ``-inf``, -1 NaN, -2 ``+inf``, -3 no finite logit (the
    errors of :func:`sampling.checks.check_logits`, in its order). Compares the floats'
    ordered integer keys, which vectorise (float max reductions do not without ``nnan``)."""
    bits = x.view(np.int32)
    vocab = x.shape[0]
    keys = chunk_max.view(np.int32)
    best = lowest = _key(bits[0])
    whole = vocab // _CHUNK
    for c in range(whole + 1):
        top = np.int32(-(2**31))
        low = np.int32(2**31 - 1)
        if c < whole:
            for j in range(_CHUNK):
                key = _key(bits[c * _CHUNK + j])
                top = max(top, key)
                low = min(low, key)
        elif whole * _CHUNK < vocab:
            for i in range(whole * _CHUNK, vocab):
                key = _key(bits[i])
                top = max(top, key)
                low = min(low, key)
        else:
            break
        keys[c] = _key(top)
        best = max(best, top)
        lowest = min(lowest, low)
    if best > _INF_KEY or lowest < _NEG_INF_KEY:
        return _NEG_INF, -1
    if best == _INF_KEY:
        return _NEG_INF, -2
    if best == _NEG_INF_KEY:
        return _NEG_INF, -3
    if divisor != 1:
        for c in range(chunk_max.shape[0]):
            chunk_max[c] = chunk_max[c] / divisor
    out = np.empty(1, dtype=np.int32)
    out[0] = _key(best)
    return out.view(np.float32)[0] / divisor, 1 if lowest == _NEG_INF_KEY else 0


@_jit
def _divide(x, divisor, z):
    """``z = x / divisor``, float32 as torch divides."""
    for i in range(x.shape[0]):
        z[i] = x[i] / divisor


@_jit
def _copy(x, z):
    for i in range(x.shape[0]):
        z[i] = x[i]


@_jit
def _shift(z, best, out):
    """``out = max(z - best, EXP_FLOOR)`` (:attr:`sampling.distribution.Distribution.shifted`)."""
    for i in range(z.shape[0]):
        out[i] = max(z[i] - best, _FLOOR)


@_jit
def _prepare(x, divisors, z, m, chunk_max, shifted, copy, status):
    """Per row: what the logits hold (``status``, see :func:`_maxima`; rows with an error are
    left there), ``z = x / divisor`` (rows with divisor 1 are copied when ``copy``, else ``z``
    is ``x``), chunk and row maxima, and the shifted logits that torch exponentiates."""
    for r in range(x.shape[0]):
        m[r], status[r] = _maxima(x[r], divisors[r], chunk_max[r])
        if status[r] < 0:
            continue
        if divisors[r] != 1:
            _divide(x[r], divisors[r], z[r])
        elif copy:
            _copy(x[r], z[r])
        _shift(z[r], m[r], shifted[r])


@_jit
def _zero_masked(z, w):
    """Zero the weights of masked (``-inf``) tokens; returns how many there are."""
    masked = 0
    for i in range(z.shape[0]):
        hit = z[i] == _NEG_INF
        w[i] = _ZERO if hit else w[i]
        masked += np.int64(hit)
    return masked


@_jit
def _zero_masked_rows(z, w, status, finite):
    """:func:`_zero_masked` on the rows with masked tokens (``status`` 1); each row's number
    of finite logits into ``finite``."""
    for r in range(z.shape[0]):
        finite[r] = z.shape[1] - (_zero_masked(z[r], w[r]) if status[r] == 1 else 0)


@_jit
def _mask(z, w, threshold, out):
    """``out = w where z >= threshold else 0``: the weights a truncation keeps."""
    for i in range(z.shape[0]):
        out[i] = w[i] if z[i] >= threshold else _ZERO


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
    """:func:`sampling.draw.block_sums` of ``where(z >= threshold, w, 0)`` (float64 out).
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
# statistics are float32 within a group, float64 across groups.
_WIDTH = 32


@_jit
def _flush(acc, first, second, group, stats):
    for t in range(_WIDTH):
        group[t] = acc[t]
        stats[0] += acc[t]
        stats[1] += first[t]
        stats[2] += second[t]
        acc[t] = first[t] = second[t] = _ZERO


@_jit
def _full_pass(z, w, best, with_bins, bins, groups, stats):
    """Over the whole distribution: ``stats`` = float64 ``sum w``, ``sum w s``, ``sum w s^2``
    (``s = max(z - best, EXP_FLOOR)``); the column group sums of ``w`` into ``groups``
    (returns the number of whole groups); with ``with_bins``, every token's bin into ``bins``."""
    vocab = z.shape[0]
    steps = vocab // _WIDTH
    acc = np.zeros(_WIDTH, dtype=np.float32)
    first = np.zeros(_WIDTH, dtype=np.float32)
    second = np.zeros(_WIDTH, dtype=np.float32)
    stats[:] = 0.0
    g = 0
    for i in range(steps):
        base = i * _WIDTH
        for t in range(_WIDTH):
            s = max(z[base + t] - best, _FLOOR)
            weighted = w[base + t] * s
            acc[t] += w[base + t]
            first[t] += weighted
            second[t] += weighted * s
            if with_bins:
                d = (best - z[base + t]) * _SCALE
                bins[base + t] = np.uint16(d if d < _LAST_BIN else _F32(_LAST_BIN))
        if (i & 15) == 15:
            _flush(acc, first, second, groups[g], stats)
            g += 1
    _flush(acc, first, second, groups[g], stats)
    for i in range(steps * _WIDTH, vocab):
        s = max(z[i] - best, _FLOOR)
        stats[0] += w[i]
        stats[1] += w[i] * s
        stats[2] += w[i] * s * s
        if with_bins:
            d = (best - z[i]) * _SCALE
            bins[i] = np.uint16(d if d < _LAST_BIN else _F32(_LAST_BIN))
    return g


@_jit
def _final_pass(z, w, best, threshold, groups, stats):
    """Over the final distribution ``kept = where(z >= threshold, w, 0)``: ``stats`` = float64
    ``sum kept``, ``sum kept s``; the column group sums of ``kept`` into ``groups`` (returns the
    number of whole groups); and how many (finite) tokens are kept, into ``stats[2]``."""
    vocab = z.shape[0]
    steps = vocab // _WIDTH
    acc = np.zeros(_WIDTH, dtype=np.float32)
    first = np.zeros(_WIDTH, dtype=np.float32)
    count = np.zeros(_WIDTH, dtype=np.float32)  # exact: at most 512 per group
    stats[:] = 0.0
    g = 0
    for i in range(steps):
        base = i * _WIDTH
        for t in range(_WIDTH):
            zi = z[base + t]
            keep = zi >= threshold
            kept = w[base + t] if keep else _ZERO
            acc[t] += kept
            first[t] += kept * max(zi - best, _FLOOR)
            count[t] += _F32(1.0) if keep and zi > _NEG_INF else _ZERO
        if (i & 15) == 15:
            _flush(acc, first, count, groups[g], stats)
            g += 1
    _flush(acc, first, count, groups[g], stats)
    for i in range(steps * _WIDTH, vocab):
        if z[i] >= threshold:
            stats[0] += w[i]
            stats[1] += w[i] * max(z[i] - best, _FLOOR)
            stats[2] += 1.0 if z[i] > _NEG_INF else 0.0
    return g


@_jit
def _bin_of(best, value):
    d = (best - value) * _SCALE
    if d < _LAST_BIN:
        return np.int64(d)
    return np.int64(_LAST_BIN)


@_jit
def _count_at_least(z, start, stop, low):
    n = 0
    for i in range(start, stop):
        n += np.int64(z[i] >= low)
    return n


@_jit
def _at_least(z, chunk_max, low, index):
    """Ascending indices of the tokens with ``z >= low``; returns their number."""
    vocab = z.shape[0]
    found = 0
    for c in range(chunk_max.shape[0]):
        if chunk_max[c] < low:
            continue
        start = c * _CHUNK
        stop = min(start + _CHUNK, vocab)
        if _count_at_least(z, start, stop, low) == 0:
            continue
        for i in range(start, stop):
            if z[i] >= low:
                index[found] = i
                found += 1
    return found


@_jit
def _bins(z, best, bins):
    """Every token's bin (uint16)."""
    for i in range(z.shape[0]):
        d = (best - z[i]) * _SCALE
        bins[i] = np.uint16(d if d < _LAST_BIN else _F32(_LAST_BIN))


@_jit
def _scatter(bins, w, chunk_max, best, low, high, sums):
    """Add the float32 weights of the tokens in bins ``[low, high]`` to their bins, in index
    order (as ``scatter_add_``), reading only the chunks whose maximum is in a bin <= ``high``."""
    vocab = bins.shape[0]
    for c in range(chunk_max.shape[0]):
        if _bin_of(best, chunk_max[c]) > high:
            continue
        for i in range(c * _CHUNK, min(c * _CHUNK + _CHUNK, vocab)):
            b = np.int64(bins[i])
            if b >= low and b <= high:
                sums[b] += w[i]


@_jit
def _scatter_all(bins, w, sums):
    """Add every token's float32 weight to its bin, in index order (as ``scatter_add_``)."""
    for i in range(bins.shape[0]):
        sums[bins[i]] += w[i]


@_jit
def _scatter_near(bins, w, chunk_max, best, sums):
    """The bin sums top-p needs first; returns the last bin they cover. Where few chunks hold
    a token within 8 nats of the maximum (peaked rows), only those tokens, which usually
    reach the target (:func:`_top_p_threshold` adds the rest if not); else every token."""
    near = 0
    for c in range(chunk_max.shape[0]):
        near += _bin_of(best, chunk_max[c]) <= _NEAR_BINS
    if 8 * near <= chunk_max.shape[0]:
        _scatter(bins, w, chunk_max, best, 0, _NEAR_BINS, sums)
        return _NEAR_BINS
    _scatter_all(bins, w, sums)
    return _LAST_BIN


@_jit
def _in_bin(bins, wanted, index):
    """Ascending indices of the tokens in bin ``wanted``; returns their number."""
    found = 0
    vocab = bins.shape[0]
    wanted = np.uint16(wanted)
    whole = vocab // 64
    for c in range(whole + 1):
        start = c * 64
        hit = np.uint16(0)
        if c < whole:
            for j in range(64):
                hit |= np.uint16(bins[start + j] == wanted)
        else:
            hit = np.uint16(1)
        if hit:
            for i in range(start, min(start + 64, vocab)):
                if bins[i] == wanted:
                    index[found] = i
                    found += 1
    return found


@_jit
def _kth_of(values, k):
    """The k-th largest of a few values (``1 <= k <= len(values)``)."""
    if k > 32:
        return np.partition(values, values.shape[0] - k)[values.shape[0] - k]
    kept = np.full(k, _NEG_INF, dtype=np.float32)  # the k largest so far, ascending
    for v in values:
        if v > kept[0]:
            j = 0
            while j + 1 < k and kept[j + 1] < v:
                kept[j] = kept[j + 1]
                j += 1
            kept[j] = v
    return kept[0]


@_jit
def _largest(z, best, chunk_max, need, index, bins):
    """Ascending indices of a set of tokens holding the ``need`` largest (every token at
    least as large as the smallest of them; ``need <= V``); returns their number. ``bins``:
    scratch."""
    chunks = chunk_max.shape[0]
    if need <= chunks:
        # ``need`` chunks each hold a token >= their maximum: the need-th largest chunk
        # maximum bounds the need-th largest token from below.
        return _at_least(z, chunk_max, _kth_of(chunk_max, need), index)
    _bins(z, best, bins)
    counts = np.zeros(_NUM_BINS, dtype=np.int64)
    for i in range(z.shape[0]):
        counts[bins[i]] += 1
    total = 0
    for b in range(_NUM_BINS):
        total += counts[b]
        if total >= need:
            break
    found = 0
    for i in range(z.shape[0]):
        if bins[i] <= b:
            index[found] = i
            found += 1
    return found


@_jit
def _top_p_threshold(z, w, best, chunk_max, sums, covered, bins, floor, members, kept, target, index, values):
    """:func:`sampling.selection.prefix_boundary` replayed float for float on the
    distribution top-p sees, given its float32 bin ``sums`` up to bin ``covered``: the whole
    row (``floor`` = -inf; ``bins`` hold every token's bin; later bins are added here if the
    target lies beyond) or top-k's output, the ``kept`` tokens ``members[:kept]`` with
    ``z >= floor`` (all bins covered). ``target`` is ``top_p`` times torch's float32 total of
    their weights."""
    vocab = z.shape[0]
    running = 0.0  # torch's CPU cumsum adds float32 in float64 and rounds each output
    before = _ZERO
    boundary = -1
    for b in range(_NUM_BINS):
        if b > covered:
            _scatter(bins, w, chunk_max, best, b, _LAST_BIN, sums)
            covered = _LAST_BIN
        running += np.float64(sums[b])
        current = np.float32(running)
        if current >= target:
            boundary = b
            break
        before = current
    if boundary < 0:
        return _NEG_INF  # the target is never reached: keep everything
    n = 0
    if floor == _NEG_INF:
        found = _in_bin(bins, boundary, index)
        for j in range(found):
            if z[index[j]] > _NEG_INF:
                index[n] = index[j]
                n += 1
    else:
        for j in range(kept):
            if _bin_of(best, z[members[j]]) == boundary:
                index[n] = members[j]
                n += 1
    for j in range(n):
        values[j] = -z[index[j]]
    order = np.argsort(values[:n])
    accumulated = 0.0
    for j in range(n):
        i = index[order[j]]
        accumulated += np.float64(w[i])
        if before + np.float32(accumulated) >= target:
            return z[i]
    # Rounding left the target past the bin's last token: prefix_boundary then takes the
    # bin's last candidate, a removed (-inf) token when the last bin holds one.
    if boundary == _LAST_BIN and kept < vocab:
        return _NEG_INF
    return z[index[order[n - 1]]]


@_jit
def _threshold(z, w, best, chunk_max, top_p_on, top_p_value, total, min_p_on, log_min_p, finite, floor, protect,
               bins, members, kept, sums, covered, index, values):
    """The final threshold of one row: top-k's (``floor``), then top-p on top-k's output,
    then min-p, each lowered to ``protect`` (``min_tokens_to_keep``)."""
    threshold = floor
    if top_p_on:
        seen = finite if floor == _NEG_INF else kept
        cut = _top_p_threshold(z, w, best, chunk_max, sums, covered, bins, floor, members, seen, top_p_value * total,
                               index, values)
        threshold = max(threshold, min(cut, protect))
    if min_p_on:
        threshold = max(threshold, min(best + log_min_p, protect))
    return threshold


@_jit
def _final_stats(z, w, best, threshold, lanes, block, groups, stats, block_totals):
    """The final distribution's statistics (``stats[3:5]``; returns its kept count) and, with
    ``lanes``, the draw's block sums as torch computes them."""
    part = np.empty(3, dtype=np.float64)
    whole = _final_pass(z, w, best, threshold, groups, part)
    stats[3] = part[0]
    stats[4] = part[1]
    if lanes:
        _block_totals(z, w, threshold, block, lanes, groups, whole if lanes * 4 == _WIDTH else 0, block_totals)
    return np.int64(part[2])


@_jit
def _scan(z, w, m, chunk_max, top_k_on, k, min_keep, top_p_on, top_p_value, totals, min_p_on, log_min_p,
          top_width, finite, lanes, block, top_values, top_ids, floors, protect, chained_out, chained_row, bins,
          members, member_count, sums, thresholds, kept, stats, final, block_totals, index, scratch, groups):
    """Per row: the full distribution's statistics (``stats[0:3]``); the largest tokens
    (``top_values`` / ``top_ids``, descending, ties in index order); top-k's threshold
    (``floors``; ``k`` already raised to ``min_keep``; -inf when it keeps every finite token)
    and ``min_tokens_to_keep``'s (``protect``; +inf when 1); then top-p, min-p, the final
    threshold (``thresholds``) and the final distribution's statistics and block sums.

    With ``lanes`` (:func:`sum_lanes`) the float32 sums torch would compute are replayed here.
    Without, ``totals`` holds torch's row totals of ``w`` for top-p rows, the final weights go
    to ``final`` for torch's block sums, and rows chaining top-p after a top-k that removes
    tokens are left to :func:`_finish_chained`, their top-k weights in row ``chained_row[r]``
    of ``chained_out`` for torch's total."""
    rows, vocab = z.shape
    chained = 0
    nothing = np.empty(0, dtype=np.uint16)
    for r in range(rows):
        zr, wr, best = z[r], w[r], m[r]
        need = top_width[r]
        if top_k_on[r] and k[r] < finite[r]:
            need = max(need, k[r])
        if min_keep[r] > 1 and min_keep[r] <= finite[r]:
            need = max(need, min_keep[r])
        found = _largest(zr, best, chunk_max[r], min(need, vocab), index, bins[r])
        for j in range(found):
            scratch[j] = -zr[index[j]]
        order = np.argsort(scratch[:found], kind="mergesort")
        for j in range(top_width[r]):
            top_ids[r, j] = index[order[j]]
            top_values[r, j] = zr[top_ids[r, j]]
        floors[r] = _NEG_INF
        if top_k_on[r] and k[r] < finite[r]:
            floors[r] = zr[index[order[k[r] - 1]]]
        protect[r] = _POS_INF
        if min_keep[r] > 1:
            protect[r] = zr[index[order[min_keep[r] - 1]]] if min_keep[r] <= finite[r] else _NEG_INF
        chained_row[r] = -1
        member_count[r] = 0
        whole_row = top_p_on[r] and floors[r] == _NEG_INF  # top-p on the whole distribution
        covered = _LAST_BIN
        whole = _full_pass(zr, wr, best, whole_row, bins[r] if whole_row else nothing, groups, stats[r])
        total = totals[r]
        if whole_row:
            covered = _scatter_near(bins[r], wr, chunk_max[r], best, sums[r])
            if lanes * 4 == _WIDTH and lanes <= vocab and vocab // _WIDTH <= 2**19:  # the pass's groups are torch's
                total = _sum_from_groups(zr, wr, _NEG_INF, lanes, groups, whole)
            elif lanes:
                total = _torch_sum(zr, wr, _NEG_INF, lanes, groups)
        elif top_p_on[r]:
            # top-p sees top-k's output: its tokens are among those found, in index order.
            for j in range(found):
                i = index[j]
                if zr[i] >= floors[r]:
                    sums[r, _bin_of(best, zr[i])] += wr[i]
                    members[r, member_count[r]] = i
                    member_count[r] += 1
            if lanes == 0:
                _mask(zr, wr, floors[r], chained_out[chained])
                chained_row[r] = chained
                chained += 1
                continue
            total = _torch_sum(zr, wr, floors[r], lanes, groups)
        thresholds[r] = _threshold(zr, wr, best, chunk_max[r], top_p_on[r], top_p_value[r], total, min_p_on[r],
                                   log_min_p[r], finite[r], floors[r], protect[r], bins[r], members[r],
                                   member_count[r], sums[r], covered, index, scratch)
        kept[r] = _final_stats(zr, wr, best, thresholds[r], lanes, block, groups, stats[r], block_totals[r])
        if lanes == 0:
            _mask(zr, wr, thresholds[r], final[r])


@_jit
def _finish_chained(z, w, m, chunk_max, chained_row, chained_totals, top_p_value, min_p_on, log_min_p, finite, floors,
                    protect, bins, members, member_count, sums, thresholds, kept, stats, final, index, scratch,
                    groups):
    """The end of :func:`_scan` for the rows it left (without ``lanes``): ``chained_totals``
    holds torch's float32 totals of their top-k weights."""
    for r in range(z.shape[0]):
        if chained_row[r] >= 0:
            thresholds[r] = _threshold(z[r], w[r], m[r], chunk_max[r], True, top_p_value[r],
                                       chained_totals[chained_row[r]], min_p_on[r], log_min_p[r], finite[r], floors[r],
                                       protect[r], bins[r], members[r], member_count[r], sums[r], _LAST_BIN, index,
                                       scratch)
            kept[r] = _final_stats(z[r], w[r], m[r], thresholds[r], 0, 0, groups, stats[r], stats[r])
            _mask(z[r], w[r], thresholds[r], final[r])


# :func:`sampling.rng.uniforms` (stream STREAM_DRAW), in uint64 arithmetic that wraps like NumPy's.
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
    """The first ``count`` draw uniforms of (seed, step), as :func:`sampling.rng.uniforms`."""
    key = _mix(seed * _GOLDEN + _SEED_SALT)
    key = _mix(key ^ (step * _GOLDEN + _DRAW_STREAM))
    out = np.empty(count, dtype=np.float64)
    for j in range(count):
        bits = _mix(key + (np.uint64(j) + np.uint64(1)) * _GOLDEN)
        out[j] = np.float64(bits >> np.uint64(11)) * (1.0 / 9007199254740992.0)
    return out


@_jit
def _draw(z, w, threshold, block_totals, width, draws, count, tokens):
    """:func:`sampling.draw.inverse_cdf` for one row whose final weights are
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


@_jit
def _outputs(z, w, m, thresholds, block_totals, width, seeds, steps, n, stats_k, wanted, sums, kept,
             top_values, top_ids, tokens, logprobs, surprise, stats, ranked_ids, ranked_logprobs):
    """The draws and every output but the kept count: ``tokens``, ``logprobs`` and ``surprise``
    (padded -1 / NaN past ``n``), ``stats`` rows (entropy, varentropy, truncated entropy, kept
    mass, top-k entropy, top-k mass) and the top log-probabilities (-1 / -inf where unused)."""
    rows = z.shape[0]
    for r in range(rows):
        best = np.float64(m[r])
        total = sums[r, 0]
        log_total = np.log(total)
        mean = sums[r, 1] / total
        final_total = sums[r, 3]
        log_final = np.log(final_total)
        _draw(z[r], w[r], thresholds[r], block_totals[r], width, _uniforms(seeds[r], steps[r], n[r]), n[r],
              tokens[r])
        for j in range(tokens.shape[1]):
            if j < n[r]:
                value = np.float64(z[r, tokens[r, j]]) - best
                logprobs[r, j] = value - log_final
                surprise[r, j] = log_total - value
            else:
                tokens[r, j] = -1
                logprobs[r, j] = np.nan
                surprise[r, j] = np.nan
        stats[0, r] = max(log_total - mean, 0.0)
        stats[1, r] = max(sums[r, 2] / total - mean * mean, 0.0)
        stats[2, r] = max(log_final - sums[r, 4] / final_total, 0.0)
        stats[3, r] = min(final_total / total, 1.0)
        mass = 0.0
        for j in range(stats_k[r]):
            mass += np.exp(np.float64(top_values[r, j]) - best - log_total)
        entropy = 0.0
        for j in range(stats_k[r]):
            share = np.exp(np.float64(top_values[r, j]) - best - log_total) / mass
            if share > 0:
                entropy -= share * np.log(share)
        stats[4, r] = max(entropy, 0.0)
        stats[5, r] = min(mass, 1.0)
        for j in range(ranked_ids.shape[1]):
            if j < wanted[r] and j < kept[r]:
                ranked_ids[r, j] = top_ids[r, j]
                ranked_logprobs[r, j] = np.float64(top_values[r, j]) - best - log_final
            else:
                ranked_ids[r, j] = -1
                ranked_logprobs[r, j] = -np.inf


# --------------------------------------------------------------------------------------
# The driver: per-row parameters in, SampleOutput out.

_local = threading.local()


class _Workspace:
    """The large per-row scratch arrays, kept per thread for the last batch shape (fresh
    large temporaries would fault their pages in again on every call)."""

    def __init__(self, rows: int, vocab: int) -> None:
        self.shape = (rows, vocab)
        self.z = np.empty((rows, vocab), dtype=np.float32)
        self.w = np.empty((rows, vocab), dtype=np.float32)
        self.bins = np.empty((rows, vocab), dtype=np.uint16)
        self.members = np.empty((rows, vocab), dtype=np.int32)
        self.index = np.empty(vocab, dtype=np.int64)
        self.scratch = np.empty(vocab, dtype=np.float32)
        self.groups = np.empty((vocab // 512 + 2, 64), dtype=np.float32)
        self.chunk_max = np.empty((rows, -(-vocab // _CHUNK)), dtype=np.float32)
        self.sums = np.empty((rows, _NUM_BINS), dtype=np.float32)
        self.block = block_size(vocab)
        self.small = np.empty((5, rows), dtype=np.float32)  # m, floors, protect, thresholds, totals
        self.stats = np.empty((rows, 5), dtype=np.float64)
        self.counts = np.empty((3, rows), dtype=np.int64)  # finite, member counts, chained rows


def _workspace(rows: int, vocab: int) -> _Workspace:
    space = getattr(_local, "workspace", None)
    if space is None or space.shape != (rows, vocab):
        space = _local.workspace = _Workspace(rows, vocab)
    return space


_lanes: int | None = None


def sum_lanes() -> int:
    """The vector width (floats) with which torch's CPU kernel adds float32 rows on this
    machine, as :func:`_torch_sum` replays it; 0 where no width reproduces torch's sums
    (the fast path then asks torch for them). Checked once per process."""
    global _lanes
    if _lanes is None:
        _lanes = _find_lanes()
    return _lanes


def _find_lanes() -> int:
    rng = np.random.default_rng(20240521)
    cases = []
    for vocab in (1, 3, 4, 7, 9, 16, 31, 33, 100, 257, 1000, 1024, 1500, 4097, 32000, 50021):
        # Four rows (torch splits a single long row across threads), a wide range of magnitudes
        # (so that the order of additions shows), and a mask as the truncations make.
        weights = (rng.random((4, vocab)) ** 8 * 100).astype(np.float32)
        logits = rng.standard_normal((4, vocab)).astype(np.float32)
        for threshold in (_NEG_INF, _F32(0.5)):
            masked = torch.from_numpy(np.where(logits >= threshold, weights, _ZERO).astype(np.float32))
            block = block_size(vocab)
            cases.append((logits, weights, threshold, block, masked.sum(dim=-1).numpy(),
                          block_sums(masked, block).numpy()))
    groups = np.empty((50021 // 512 + 2, 64), dtype=np.float32)
    for lanes in (8, 16, 4):
        if all(_replays(lanes, groups, *case) for case in cases):
            return lanes
    return 0


def _replays(lanes, groups, logits, weights, threshold, block, totals, blocks) -> bool:
    for r in range(logits.shape[0]):
        if _torch_sum(logits[r], weights[r], threshold, lanes, groups) != totals[r]:
            return False
        replayed = np.empty(blocks.shape[1], dtype=np.float64)
        _block_totals(logits[r], weights[r], threshold, block, lanes, groups, 0, replayed)
        if not np.array_equal(replayed, blocks[r]):
            return False
    return True


def _settings(p, vocab: int) -> tuple[tuple, tuple]:
    """One row's integer and float settings."""
    stats_k = min(p.stats_top_k, vocab)
    integers = (p.uses(top_k.STRATEGY), max(p.top_k, p.min_tokens_to_keep), p.min_tokens_to_keep,
                p.uses(top_p.STRATEGY), p.uses(min_p.STRATEGY), max(stats_k, min(p.top_logprobs, vocab)), p.n,
                stats_k, p.top_logprobs)
    return integers, (p.temperature, p.top_p, p.min_p)


def sample(logits: torch.Tensor, params: Sequence, steps: Sequence[int]) -> SampleOutput:
    """:func:`sampling.sample` for a CPU batch whose rows are all eligible (:func:`is_eligible`),
    checked but for the logits' values, which this checks as
    :func:`sampling.checks.check_logits` does; ``params`` and ``steps`` hold one entry per row."""
    rows, vocab = logits.shape
    known: dict[int, tuple] = {}
    settings = [known.get(id(p)) or known.setdefault(id(p), _settings(p, vocab)) for p in params]
    # One contiguous array per setting: the kernels then see the same array types whatever
    # the batch (a warm-up compiles what serving calls).
    integers = np.ascontiguousarray(np.array([s[0] for s in settings], dtype=np.int64).T)
    top_k_on, k, min_keep, top_p_on, min_p_on, top_width, n, stats_k, wanted = integers
    floats = np.ascontiguousarray(np.array([s[1] for s in settings], dtype=np.float32).T)  # float32 as in general
    divisors, top_p_value, min_p_value = floats

    space = _workspace(rows, vocab)
    x = logits.detach().float().contiguous().numpy()
    dividing = bool((divisors != 1).any())
    z = space.z if dividing else x
    w = space.w
    m, floors, protect, thresholds = space.small[:4]
    finite, member_count, chained_row = space.counts
    status = np.empty(rows, dtype=np.int64)
    _prepare(x, divisors, z, m, space.chunk_max, w, dividing, status)
    if (status < 0).any():
        row = int(np.flatnonzero(status < 0)[0])
        what = {-1: "contains NaN", -2: "contains +inf", -3: "has no finite logit"}[int(status[row])]
        raise SamplingError("logits", f"logits row {row} {what}")
    weights = torch.from_numpy(w).exp_()  # torch's vectorised exp: the general path's weights, bit for bit
    _zero_masked_rows(z, w, status, finite)
    lanes = sum_lanes()
    totals = space.small[4]
    if not lanes and top_p_on.any():
        totals = weights.sum(dim=-1).numpy()  # top-p's target: top_p times torch's total
    log_min_p = min_p_value
    if min_p_on.any():
        log_min_p = torch.from_numpy(min_p_value[:, None]).log()[:, 0].numpy()  # torch's float32 log

    widest = int(top_width.max())
    top_values = np.empty((rows, widest), dtype=np.float32)
    top_ids = np.empty((rows, widest), dtype=np.int64)
    chained_out = np.empty((0 if lanes else int((top_k_on & top_p_on).sum()), vocab), dtype=np.float32)
    final = np.empty((0 if lanes else rows, vocab), dtype=np.float32)
    sums = space.sums
    sums.fill(0.0)
    kept = np.empty(rows, dtype=np.int64)
    block = space.block
    block_totals = np.empty((rows, -(-vocab // block)), dtype=np.float64)
    _scan(z, w, m, space.chunk_max, top_k_on, k, min_keep, top_p_on, top_p_value, totals, min_p_on, log_min_p,
          top_width, finite, lanes, block, top_values, top_ids, floors, protect, chained_out, chained_row, space.bins,
          space.members, member_count, sums, thresholds, kept, space.stats, final, block_totals, space.index,
          space.scratch, space.groups)
    if not lanes:
        chained = int((chained_row >= 0).sum())
        if chained:
            chained_totals = torch.from_numpy(chained_out[:chained]).sum(dim=-1).numpy()
            _finish_chained(z, w, m, space.chunk_max, chained_row, chained_totals, top_p_value, min_p_on, log_min_p,
                            finite, floors, protect, space.bins, space.members, member_count, sums, thresholds, kept,
                            space.stats, final, space.index, space.scratch, space.groups)
        block_totals = block_sums(torch.from_numpy(final), block).numpy()

    seeds = np.array([p.seed if p.seed is not None else 0 for p in params], dtype=np.uint64)
    unseeded = [i for i, p in enumerate(params) if p.seed is None]
    if unseeded:
        seeds[unseeded] = fresh_seeds(len(unseeded))
    draws = int(n.max())
    tokens = np.empty((rows, draws), dtype=np.int64)
    logprobs = np.empty((rows, draws), dtype=np.float32)
    surprise = np.empty((rows, draws), dtype=np.float32)
    measures = np.empty((6, rows), dtype=np.float32)
    ranked = min(int(wanted.max()), vocab)
    ranked_ids = np.empty((rows, ranked), dtype=np.int64)
    ranked_logprobs = np.empty((rows, ranked), dtype=np.float32)
    _outputs(z, w, m, thresholds, block_totals, block, seeds, np.asarray(steps, dtype=np.uint64), n, stats_k,
             wanted, space.stats, kept, top_values, top_ids, tokens, logprobs, surprise, measures, ranked_ids,
             ranked_logprobs)
    entropy, varentropy, truncated_entropy, kept_mass, top_k_entropy, top_k_mass = torch.from_numpy(measures)
    return SampleOutput(
        token_ids=torch.from_numpy(tokens),
        logprobs=torch.from_numpy(logprobs),
        stats=SampleStats(entropy=entropy, varentropy=varentropy, truncated_entropy=truncated_entropy,
                          kept_tokens=torch.from_numpy(kept), kept_mass=kept_mass, top_k_entropy=top_k_entropy,
                          top_k_mass=top_k_mass, surprise=torch.from_numpy(surprise)),
        strategies=[p.strategy_label() for p in params],
        mirostat_mu=torch.full((rows,), float("nan"), dtype=torch.float64),
        top_logprobs=(torch.from_numpy(ranked_ids), torch.from_numpy(ranked_logprobs)) if ranked else None,
    )
