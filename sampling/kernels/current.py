"""The distribution a stage sees: the band ``lo <= z <= hi`` of one row, renormalised.

:class:`samplerd.sampling.distribution.Distribution` computes its scalars in float32 with torch's sums;
the stages compare tokens against float32 products of them, so these kernels replay those
sums in torch's order (:mod:`samplerd.sampling.kernels.torch_sums`, with ``lanes`` > 0) to make the
same decisions. Moments that only feed outputs are float64.
"""

from __future__ import annotations

import math

import numpy as np

from samplerd.sampling.kernels.common import _F32, _FLOOR, _ZERO, _jit
from samplerd.sampling.kernels.ranking import in_band
from samplerd.sampling.kernels.torch_sums import _torch_sum


@_jit
def materialise(z, w, m, lo, hi, top, out):
    """The band's weights into ``out`` (0 outside): ``w`` while the band's maximum ``top`` is the
    row's ``m`` (as :meth:`Distribution.restricted` reuses them), else ``exp(max(z - top, floor))``
    afresh. Returns the number of tokens in the band."""
    count = 0
    if top == m:
        for i in range(z.shape[0]):
            keep = in_band(z[i], lo, hi)
            out[i] = w[i] if keep else _ZERO
            count += keep
    else:
        for i in range(z.shape[0]):
            keep = in_band(z[i], lo, hi)
            out[i] = _F32(math.exp(max(z[i] - top, _FLOOR))) if keep else _ZERO
            count += keep
    return count


@_jit
def total32(current, lanes, groups):
    """Torch's float32 sum of the band's weights."""
    if lanes:
        return _torch_sum(current, current, _ZERO, lanes, groups)
    return _F32(np.sum(current.astype(np.float64)))


@_jit
def entropy32(z, current, top, total, lanes, groups, aux):
    """:attr:`Distribution.entropy` in float32: ``ln Z - sum(w * s) / Z`` with ``s = max(z - top,
    floor)``, the sum torch's; ``aux``: scratch."""
    for i in range(z.shape[0]):
        aux[i] = current[i] * max(z[i] - top, _FLOOR)
    if lanes:
        weighted = _torch_sum(current, aux, _ZERO, lanes, groups)
    else:
        weighted = _F32(np.sum(aux.astype(np.float64)))
    return max(log32(total) - weighted / total, _ZERO)


@_jit
def log32(x):
    """``log`` of a float32, correctly rounded."""
    return _F32(math.log(np.float64(x)))


@_jit
def moments(z, current, top, out):
    """float64 ``sum w``, ``sum w s``, ``sum w s^2`` of the band's weights into ``out[0:3]``."""
    total = 0.0
    first = 0.0
    second = 0.0
    for i in range(z.shape[0]):
        weight = np.float64(current[i])
        s = np.float64(max(z[i] - top, _FLOOR))
        total += weight
        first += weight * s
        second += weight * s * s
    out[0] = total
    out[1] = first
    out[2] = second


@_jit
def mean_std(z, lo, hi):
    """Mean and population standard deviation of the band's logits (float64 sums in eight
    independent lanes, which vectorise; as float32)."""
    vocab = z.shape[0]
    lanes = np.zeros(8)
    counts = np.zeros(8)
    whole = vocab // 8 * 8
    for base in range(0, whole, 8):
        for j in range(8):
            keep = in_band(z[base + j], lo, hi)
            lanes[j] += np.float64(z[base + j]) if keep else 0.0
            counts[j] += 1.0 if keep else 0.0
    for i in range(whole, vocab):
        keep = in_band(z[i], lo, hi)
        lanes[0] += np.float64(z[i]) if keep else 0.0
        counts[0] += 1.0 if keep else 0.0
    n = counts.sum()
    mean = lanes.sum() / n
    lanes[:] = 0.0
    for base in range(0, whole, 8):
        for j in range(8):
            centred = np.float64(z[base + j]) - mean
            lanes[j] += centred * centred if in_band(z[base + j], lo, hi) else 0.0
    for i in range(whole, vocab):
        centred = np.float64(z[i]) - mean
        lanes[0] += centred * centred if in_band(z[i], lo, hi) else 0.0
    return _F32(mean), _F32(math.sqrt(lanes.sum() / n))


@_jit
def weights_of(z, w, m, lo, hi, top, finite, out):
    """The band's weights and its number of tokens: ``w`` itself for the whole row, else
    :func:`materialise` into ``out``."""
    if lo == -np.inf and hi == np.inf and top == m:
        return w, finite
    return out, materialise(z, w, m, lo, hi, top, out)


@_jit
def log_prob32(value, top, log_total):
    """:meth:`Distribution.log_prob_of` in float32: ``(value - max) - ln Z``."""
    return (value - top) - log_total


@_jit
def min_band(z, lo, hi):
    """The smallest logit in the band (``+inf`` when empty)."""
    low = np.float32(np.inf)
    for i in range(z.shape[0]):
        if in_band(z[i], lo, hi) and z[i] < low:
            low = z[i]
    return low


@_jit
def lowest_at_least(z, lo, hi, current, threshold):
    """The smallest logit in the band whose weight is ``>= threshold`` (``+inf`` when none):
    with weights monotone in the logit, the kept set of ``weight >= threshold`` is ``z >= it``."""
    low = np.float32(np.inf)
    for i in range(z.shape[0]):
        if current[i] >= threshold and in_band(z[i], lo, hi) and z[i] < low:
            low = z[i]
    return low

