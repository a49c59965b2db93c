"""Ranking inside one row, restricted to a band ``lo <= z <= hi`` of finite logits: the k-th
largest, the largest few in order, and :func:`samplerd.sampling.selection.prefix_boundary` replayed on
any score."""

from __future__ import annotations

import math

import numpy as np

from samplerd.sampling.kernels.common import _CHUNK, _LAST_BIN, _NEG_INF, _NUM_BINS, _SCALE, _jit


@_jit
def in_band(value, lo, hi):
    """Whether a logit is kept by the band (``-inf`` never is); branch-free, so loops vectorise."""
    return (value >= lo) & (value <= hi) & (value > _NEG_INF)


@_jit
def top_in_band(z, lo, hi, count, ids, values, maxima):
    """The ``count`` largest logits in the band, descending, ties in index order, into
    ``ids`` / ``values``; returns how many there are (fewer when the band is smaller).
    ``maxima``: the row's chunk maxima (:data:`_CHUNK` tokens each), or empty; chunks whose
    maximum cannot enter are skipped."""
    vocab = z.shape[0]
    found = 0
    for c in range(-(-vocab // _CHUNK)):
        if found == count and maxima.shape[0] and maxima[c] <= values[count - 1]:
            continue
        for i in range(c * _CHUNK, min(c * _CHUNK + _CHUNK, vocab)):
            v = z[i]
            if not in_band(v, lo, hi) or (found == count and v <= values[count - 1]):
                continue
            j = found if found < count else count - 1
            if found < count:
                found += 1
            while j > 0 and values[j - 1] < v:
                values[j] = values[j - 1]
                ids[j] = ids[j - 1]
                j -= 1
            values[j] = v
            ids[j] = i
    return found


@_jit
def kth_in_band(z, lo, hi, k, values, maxima):
    """The k-th largest logit in the band, ``-inf`` when it holds fewer than ``k`` (as
    :func:`samplerd.sampling.selection.kth_largest`); ``values``: scratch; ``maxima`` as :func:`top_in_band`."""
    if k < 1:
        return _NEG_INF
    if k <= 64:
        index = np.empty(k, dtype=np.int64)
        top = np.empty(k, dtype=np.float32)
        return top[k - 1] if top_in_band(z, lo, hi, k, index, top, maxima) == k else _NEG_INF
    vocab = z.shape[0]
    chunks = -(-vocab // _CHUNK)
    bound = _NEG_INF
    if k <= chunks:
        # k chunks each hold a token >= their band maximum: the k-th largest chunk maximum
        # bounds the k-th largest token from below, and few tokens reach it.
        band_maxima = np.full(chunks, _NEG_INF, dtype=np.float32)
        for c in range(chunks):
            if maxima.shape[0] and hi == np.inf:
                band_maxima[c] = maxima[c] if maxima[c] >= lo else _NEG_INF
                continue
            top_value = _NEG_INF
            for i in range(c * _CHUNK, min(c * _CHUNK + _CHUNK, vocab)):
                top_value = max(top_value, z[i] if in_band(z[i], lo, hi) else _NEG_INF)
            band_maxima[c] = top_value
        bound = np.partition(band_maxima, chunks - k)[chunks - k]
    n = 0
    for i in range(vocab):
        if in_band(z[i], lo, hi) and z[i] >= bound:
            values[n] = z[i]
            n += 1
    if n < k:
        return _NEG_INF
    return np.partition(values[:n], n - k)[n - k]


@_jit
def sorted_top(z, lo, hi, count, values, index, out, maxima):
    """The ``count`` largest logits in the band, descending, into ``out`` (``-inf`` padded);
    ``values`` / ``index``: scratch. Small counts by insertion, large ones by selection."""
    if count <= 64:
        found = top_in_band(z, lo, hi, count, index, out, maxima)
    else:
        low = kth_in_band(z, lo, hi, count, values, maxima)
        found = 0
        for i in range(z.shape[0]):
            if in_band(z[i], max(lo, low), hi):
                values[found] = z[i]
                found += 1
        ordered = -np.sort(-values[:found])
        found = min(found, count)
        out[:found] = ordered[:found]
    out[found:count] = _NEG_INF
    return found


@_jit
def prefix_boundary(score, weight, target, best, bins, sums, index, values):
    """:func:`samplerd.sampling.selection.prefix_boundary` for one row, float for float: the score of
    the first rank (scores descending) at which the running ``weight`` reaches ``target``;
    ``-inf`` when it never does. The histogram ``sums`` has the weights' dtype (float32: torch's
    ``scatter_add_`` in index order; its ``cumsum`` adds in float64 and rounds each output);
    ``target`` too. ``bins`` / ``index`` / ``values``: scratch."""
    vocab = score.shape[0]
    sums[:] = 0
    for i in range(vocab):
        d = (best - score[i]) * _SCALE
        b = np.int64(d) if d < _LAST_BIN else np.int64(_LAST_BIN)
        bins[i] = b
        sums[b] += weight[i]
    running = 0.0
    boundary = -1
    for b in range(_NUM_BINS):
        running += sums[b]
        sums[b] = running  # rounded to the histogram's dtype, as torch's cumsum output
        if sums[b] >= target:
            boundary = b
            break
    if boundary < 0:
        return _NEG_INF
    before = sums[max(boundary - 1, 0)]
    if boundary == 0:
        before = before - before
    n = 0
    for i in range(vocab):
        if bins[i] == boundary:
            index[n] = i
            n += 1
    for j in range(n):
        values[j] = -score[index[j]]
    order = np.argsort(values[:n], kind="mergesort")
    accumulated = 0.0
    for j in range(n):
        i = index[order[j]]
        accumulated += weight[i]
        sums[0] = accumulated
        if before + sums[0] >= target:
            return score[i]
    return score[index[order[n - 1]]]


# Acklam's rational approximation of the standard normal quantile, refined by one Halley step.
_A = (-3.969683028665376e01, 2.209460984245205e02, -2.759285104469687e02, 1.383577518672690e02,
      -3.066479806614716e01, 2.506628277459239e00)
_B = (-5.447609879822406e01, 1.615858368580409e02, -1.556989798598866e02, 6.680131188771972e01,
      -1.328068155288572e01)
_C = (-7.784894002430293e-03, -3.223964580411365e-01, -2.400758277161838e00, -2.549732539343734e00,
      4.374664141464968e00, 2.938163982698783e00)
_D = (7.784695709041462e-03, 3.224671290700398e-01, 2.445134137142996e00, 3.754408661907416e00)


@_jit
def ndtri(p):
    """The standard normal quantile ``Phi^-1(p)`` in float64 (``-inf`` at 0, ``+inf`` at 1)."""
    if p <= 0.0:
        return -np.inf
    if p >= 1.0:
        return np.inf
    if p < 0.02425:
        q = math.sqrt(-2.0 * math.log(p))
        x = (((((_C[0] * q + _C[1]) * q + _C[2]) * q + _C[3]) * q + _C[4]) * q + _C[5]) / \
            ((((_D[0] * q + _D[1]) * q + _D[2]) * q + _D[3]) * q + 1.0)
    elif p > 1.0 - 0.02425:
        q = math.sqrt(-2.0 * math.log(1.0 - p))
        x = -(((((_C[0] * q + _C[1]) * q + _C[2]) * q + _C[3]) * q + _C[4]) * q + _C[5]) / \
            ((((_D[0] * q + _D[1]) * q + _D[2]) * q + _D[3]) * q + 1.0)
    else:
        q = p - 0.5
        r = q * q
        x = (((((_A[0] * r + _A[1]) * r + _A[2]) * r + _A[3]) * r + _A[4]) * r + _A[5]) * q / \
            (((((_B[0] * r + _B[1]) * r + _B[2]) * r + _B[3]) * r + _B[4]) * r + 1.0)
    error = 0.5 * math.erfc(-x / math.sqrt(2.0)) - p
    u = error * math.sqrt(2.0 * math.pi) * math.exp(x * x / 2.0)
    return x - u / (1.0 + x * u / 2.0)
