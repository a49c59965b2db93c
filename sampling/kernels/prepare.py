"""The first pass over a batch: check the logits, divide by the temperature, shift by the maximum.
"""

from __future__ import annotations

import numba
import numpy as np

from samplerd.sampling.kernels.common import (
    _CHUNK,
    _FLOOR,
    _INF_KEY,
    _NEG_INF,
    _NEG_INF_KEY,
    _SIGN,
    _ZERO,
    _jit,
    _jit_parallel,
)


@_jit
def _key(bits):
    """A float32's bits as an int32 that orders like the float (an involution)."""
    return bits ^ ((bits >> 31) & _SIGN)


@_jit
def _maxima(x, divisor, chunk_max):
    """The maximum of ``x / divisor`` and of each of its chunks (into ``chunk_max``; the
    division is monotone, so they are the divided maxima of ``x``), and what ``x`` holds:
    0 finite logits only, 1 also ``-inf``, -1 NaN, -2 ``+inf``, -3 no finite logit (the
    errors of :func:`samplerd.sampling.checks.check_logits`, in its order). Compares the floats'
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
def _copy(x, z):
    for i in range(x.shape[0]):
        z[i] = x[i]


@_jit
def _shift(z, best, out):
    """``out = max(z - best, EXP_FLOOR)`` (:attr:`samplerd.sampling.distribution.Distribution.shifted`)."""
    for i in range(z.shape[0]):
        out[i] = max(z[i] - best, _FLOOR)


@_jit_parallel
def _prepare(x, divisors, z, m, chunk_max, shifted, copy, status):
    """Per row: what the logits hold (``status``, see :func:`_maxima`; rows with an error are
    left there), ``z = x / divisor`` (rows with divisor 1 are copied when ``copy``, else ``z``
    is ``x``), chunk and row maxima, and the shifted logits that torch exponentiates."""
    for r in numba.prange(x.shape[0]):  # rows are independent: spread over the threads
        _prepare_row(r, x, divisors, z, m, chunk_max, shifted, copy, status)


@_jit
def _prepare_one_row(x, divisors, z, m, chunk_max, shifted, copy, status):
    """:func:`_prepare` of a one-row batch, on the caller's thread."""
    _prepare_row(0, x, divisors, z, m, chunk_max, shifted, copy, status)


@_jit
def _prepare_row(r, x, divisors, z, m, chunk_max, shifted, copy, status):
    best, state = _maxima(x[r], divisors[r], chunk_max[r])
    m[r] = best
    status[r] = state
    if state < 0:
        return
    if divisors[r] != 1:
        _divide_shift(x[r], divisors[r], best, z[r], shifted[r])
        return
    if copy:
        _copy(x[r], z[r])
    _shift(z[r], best, shifted[r])


@_jit
def _divide_shift(x, divisor, best, z, out):
    """``z = x / divisor`` and ``out = max(z - best, EXP_FLOOR)`` in one pass."""
    for i in range(x.shape[0]):
        value = x[i] / divisor
        z[i] = value
        out[i] = max(value - best, _FLOOR)


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


