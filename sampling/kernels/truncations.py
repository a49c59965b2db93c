"""One kernel per truncation of the general fused path: each gives the band ``[lo, hi]`` of
logits its strategy keeps, from the band the stage before kept (``top`` its largest logit).

Every strategy's kept set is a band of logits: a lower threshold for all but typical sampling
(tokens near the entropy: an interval) and XTC (it removes the largest). Each kernel decides
as the strategy's reference module in :mod:`samplerd.sampling.strategies` does, on the same float32
quantities (see :mod:`samplerd.sampling.kernels.current`). ``s`` is the row's scratch tuple
(:class:`samplerd.sampling.kernels.records.Scratch`, one thread's slice), ``p`` its :data:`ROW` record.
"""

from __future__ import annotations

import math

import numpy as np

from samplerd.sampling.kernels.common import _F32, _NEG_INF, _POS_INF, _ZERO, _jit
from samplerd.sampling.kernels.current import (
    entropy32,
    lowest_at_least,
    mean_std,
    total32,
    weights_of,
)
from samplerd.sampling.kernels.draw import stream_key, uniform_at
from samplerd.sampling.kernels.ranking import in_band, kth_in_band, ndtri, prefix_boundary, sorted_top
from samplerd.sampling.rng import STREAM_XTC

_LN2 = _F32(math.log(2.0))


@_jit
def _total(current, lo, hi, top, m, known, lanes, groups):
    """Torch's float32 total of the band's weights; ``known[0]``, the whole row's, computed in
    the statistics pass, when the band is the whole row."""
    if lo == -np.inf and hi == np.inf and top == m:
        return known[0]
    return total32(current, lanes, groups)


@_jit
def protect(z, stage_lo, lo, hi, top, min_keep, keeps_argmax, values, maxima):
    """``min_tokens_to_keep`` as :func:`samplerd.sampling.pipeline._protect_top_tokens`: the stage's lower
    threshold lowered to the m-th largest logit of the band (all of it when smaller), else to
    the band's maximum for strategies that may remove it."""
    if min_keep > 1:
        return min(stage_lo, max(kth_in_band(z, lo, hi, min_keep, values, maxima), lo))
    if not keeps_argmax:
        return min(stage_lo, top)
    return stage_lo


@_jit
def top_n_sigma(z, lo, hi, top, n):
    """Top-nσ (Tang et al., "Top-nσ: Not All Logits Are You Need", arXiv 2411.07641): keep
    ``z >= max - n * std`` of the band's logits (population std)."""
    _, std = mean_std(z, lo, hi)
    return max(lo, top - n * std)


@_jit
def top_k(z, lo, hi, k, values, maxima):
    """Top-k (Fan et al., "Hierarchical Neural Story Generation", ACL 2018): keep ``z >=`` the
    k-th largest logit of the band (all of it when smaller)."""
    return max(lo, kth_in_band(z, lo, hi, k, values, maxima))


@_jit
def optimal_k(z, w, m, lo, hi, top, finite, weight, lanes, s):
    """Optimal-k / Bregman decoding (Noarov et al., "Foundations of Top-k Decoding for Language
    Models", arXiv 2505.19371): ``k* = min{k : p_(k+1) <= (e^lambda - 1) P_k}``, then top-k."""
    current, score, aux, partial, values, index, bins, sums32, sums64, groups, maxima, known = s
    vocab = z.shape[0]
    current, _ = weights_of(z, w, m, lo, hi, top, finite, current)
    log_total = _F32(math.log(np.float64(_total(current, lo, hi, top, m, known, lanes, groups))))
    ratio = _F32(math.expm1(np.float64(weight)))
    width = min(64, vocab)
    while True:
        count = min(width + 1, vocab)
        sorted_top(z, lo, hi, count, values, index, score, maxima)
        mass = 0.0
        for j in range(count):
            if j + 1 < count:
                following = _F32(math.exp(np.float64((score[j + 1] - top) - log_total)))
            elif count == vocab:
                following = _ZERO  # the whole row: p_(V+1) = 0 closes it
            else:
                break
            mass += np.float64(_F32(math.exp(np.float64((score[j] - top) - log_total))))
            if following <= ratio * _F32(mass):
                return max(lo, score[j])
        width = min(width * 8, vocab)


@_jit
def entropy_top_k(z, w, m, lo, hi, top, finite, k_min, k_max, lanes, s):
    """Entropy-adaptive top-k (PURE, "Perceive, Understand and Restore"): ``k = round(k_min +
    (k_max - k_min) * sigmoid(clip(H, 0, 10) - 5))``, then top-k."""
    current, score, aux, partial, values, index, bins, sums32, sums64, groups, maxima, known = s
    current, _ = weights_of(z, w, m, lo, hi, top, finite, current)
    total = _total(current, lo, hi, top, m, known, lanes, groups)
    entropy = entropy32(z, current, top, total, lanes, groups, aux)
    level = _F32(1.0 / (1.0 + math.exp(-np.float64(min(max(entropy, _ZERO), _F32(10.0)) - _F32(5.0)))))
    low = _F32(k_min)
    k = np.rint(low + (_F32(k_max) - low) * level)
    k = np.int64(min(max(k, low), _F32(k_max)))
    return max(lo, kth_in_band(z, lo, hi, k, values, maxima))


@_jit
def statistical_top_k(z, lo, hi, k):
    """Statistical top-k (You et al., "Spark Transformer", arXiv 2506.06644): keep ``z >= mean
    + std * Phi^-1(1 - k/d)`` over the band's d logits (everything when ``k >= d``)."""
    mean, std = mean_std(z, lo, hi)
    count = 0
    for i in range(z.shape[0]):
        count += in_band(z[i], lo, hi)
    share = _F32(k) / _F32(count)
    if share >= 1:
        return lo
    return max(lo, mean + std * _F32(ndtri(np.float64(max(_F32(1.0) - share, _ZERO)))))


@_jit
def top_h(z, w, m, lo, hi, top, finite, alpha, lanes, s):
    """Top-H (Baghaei Potraghloo et al., "Top-H Decoding", arXiv 2509.02510), as the authors'
    code: rank 1 always; rank j kept while the partial sum of ``-p ln p`` stays within
    ``alpha * H`` (float64 terms from the float32 log-probabilities)."""
    current, score, aux, partial, values, index, bins, sums32, sums64, groups, maxima, known = s
    current, _ = weights_of(z, w, m, lo, hi, top, finite, current)
    log_total = _F32(math.log(np.float64(_total(current, lo, hi, top, m, known, lanes, groups))))
    entropy = 0.0
    for i in range(z.shape[0]):
        if in_band(z[i], lo, hi):
            log_p = np.float64((z[i] - top) - log_total)
            partial[i] = -math.exp(log_p) * log_p
            entropy += partial[i]
            score[i] = z[i]
        else:
            partial[i] = 0.0
            score[i] = _NEG_INF
    budget = np.float64(alpha) * entropy
    first_over = prefix_boundary(score, partial, np.nextafter(budget, 1e30), top, bins, sums64, index, values)
    above = 0.0
    for i in range(z.shape[0]):
        if score[i] > first_over:
            above += partial[i]
    log_p_first = np.float64((first_over - top) - log_total)
    partial_first = -math.exp(log_p_first) * log_p_first if math.isfinite(log_p_first) else 0.0
    if above + partial_first <= budget:
        return max(lo, min(first_over, top))
    # The boundary's tie group does not fit: keep what is above it (at least the maximum).
    low = np.float32(np.inf)
    for i in range(z.shape[0]):
        if score[i] > first_over and score[i] < low:
            low = score[i]
    return max(lo, min(low, top))


@_jit
def top_p(z, w, m, lo, hi, top, finite, mass, lanes, s):
    """Top-p / nucleus (Holtzman et al., "The Curious Case of Neural Text Degeneration", ICLR
    2020): keep the most probable prefix of mass ``>= top_p`` with its boundary tie group."""
    current, score, aux, partial, values, index, bins, sums32, sums64, groups, maxima, known = s
    current, _ = weights_of(z, w, m, lo, hi, top, finite, current)
    target = mass * _total(current, lo, hi, top, m, known, lanes, groups)
    for i in range(z.shape[0]):
        score[i] = z[i] if in_band(z[i], lo, hi) else _NEG_INF
    return max(lo, prefix_boundary(score, current, target, top, bins, sums32, index, values))


@_jit
def min_p(lo, top, log_min_p):
    """Min-p (Nguyen et al., "Turning Up the Heat", arXiv 2407.01082): keep ``z >= max + ln min_p``."""
    return max(lo, top + log_min_p)


@_jit
def typical(z, w, m, lo, hi, top, finite, mass, min_keep, lanes, s):
    """Locally typical sampling (Meister et al., "Locally Typical Sampling", TACL 2023): rank by
    ``-|z - (max + ln Z - H)|``, keep the prefix of mass ``>= typical_p`` (and the
    ``min_keep`` most typical); returns the kept band ``(lo, hi)``."""
    current, score, aux, partial, values, index, bins, sums32, sums64, groups, maxima, known = s
    current, _ = weights_of(z, w, m, lo, hi, top, finite, current)
    total = _total(current, lo, hi, top, m, known, lanes, groups)
    entropy = entropy32(z, current, top, total, lanes, groups, aux)
    centre = (top + _F32(math.log(np.float64(total)))) - entropy
    best = _NEG_INF
    for i in range(z.shape[0]):
        score[i] = -abs(z[i] - centre) if in_band(z[i], lo, hi) else _NEG_INF
        best = max(best, score[i])
    threshold = prefix_boundary(score, current, mass * total, best, bins, sums32, index, values)
    if min_keep > 1:
        threshold = min(threshold, kth_in_band(score, _NEG_INF, _POS_INF, min_keep, values, maxima[:0]))
    new_lo = np.float32(np.inf)
    new_hi = _NEG_INF
    for i in range(z.shape[0]):
        if score[i] >= threshold and in_band(z[i], lo, hi):
            new_lo = min(new_lo, z[i])
            new_hi = max(new_hi, z[i])
    return new_lo, new_hi


@_jit
def epsilon(z, w, m, lo, hi, top, finite, floor, lanes, s):
    """Epsilon sampling (Hewitt et al., "Truncation Sampling as Language Model Desmoothing",
    EMNLP Findings 2022): keep ``p >= epsilon``."""
    current, score, aux, partial, values, index, bins, sums32, sums64, groups, maxima, known = s
    current, _ = weights_of(z, w, m, lo, hi, top, finite, current)
    return max(lo, lowest_at_least(z, lo, hi, current, floor * _total(current, lo, hi, top, m, known, lanes, groups)))


@_jit
def eta(z, w, m, lo, hi, top, finite, value, lanes, s):
    """Eta sampling (Hewitt et al., as epsilon): keep ``p >= min(eta, sqrt(eta) * exp(-H))``."""
    current, score, aux, partial, values, index, bins, sums32, sums64, groups, maxima, known = s
    current, _ = weights_of(z, w, m, lo, hi, top, finite, current)
    total = _total(current, lo, hi, top, m, known, lanes, groups)
    entropy = entropy32(z, current, top, total, lanes, groups, aux)
    floor = min(value, np.sqrt(value) * _F32(math.exp(-np.float64(entropy))))
    return max(lo, lowest_at_least(z, lo, hi, current, floor * total))


@_jit
def xtc_coin(seed, step):
    """The first uniform of stream STREAM_XTC (:func:`samplerd.sampling.rng.uniforms`), in float32."""
    return _F32(uniform_at(stream_key(seed, step, STREAM_XTC), 0))


@_jit
def xtc(z, w, m, lo, hi, top, finite, p, lanes, s):
    """XTC (p-e-w, text-generation-webui PR #6335; llama.cpp's xtc): on a seeded coin, remove
    every token with ``p >= threshold`` but the least probable (its tie group), when at least two
    reach it and ``min_keep`` remain; returns the kept band's new ``hi``."""
    current, score, aux, partial, values, index, bins, sums32, sums64, groups, maxima, known = s
    if not xtc_coin(p.seed, p.step) < p.xtc_probability:
        return hi
    current, count = weights_of(z, w, m, lo, hi, top, finite, current)
    threshold = p.xtc_threshold * _total(current, lo, hi, top, m, known, lanes, groups)
    least = np.float32(np.inf)
    chosen = 0
    for i in range(z.shape[0]):
        if current[i] >= threshold and in_band(z[i], lo, hi):
            chosen += 1
            least = min(least, z[i])
    survivors = 0
    for i in range(z.shape[0]):
        survivors += current[i] >= threshold and z[i] == least and in_band(z[i], lo, hi)
    if chosen >= 2 and count - (chosen - survivors) >= p.min_keep:
        return least
    return hi


@_jit
def mirostat_v1(z, w, m, lo, hi, top, finite, mu, lanes, s):
    """Mirostat v1 (Basu et al., "Mirostat", ICLR 2021, Algorithm 1): a Zipf exponent from the
    top 100 probabilities, ``k = (eps * 2^mu / (1 - N^-eps))^(1/s)``, ``round(k) + 1``; top-k."""
    current, score, aux, partial, values, index, bins, sums32, sums64, groups, maxima, known = s
    vocab = z.shape[0]
    current, finite = weights_of(z, w, m, lo, hi, top, finite, current)
    log_total = _F32(math.log(np.float64(_total(current, lo, hi, top, m, known, lanes, groups))))
    count = min(100, vocab)
    sorted_top(z, lo, hi, count, values, index, score, maxima)
    tb = 0.0
    tt = 0.0
    for r in range(1, count):
        upper = np.float64(_F32(math.exp(np.float64((score[r - 1] - top) - log_total))))
        lower = np.float64(_F32(math.exp(np.float64((score[r] - top) - log_total))))
        if upper > 0 and lower > 0:
            t = math.log((r + 1.0) / r)
            tb += t * math.log(upper / lower)
            tt += t * t
    s_hat = tb / tt if tt > 0 else np.nan
    eps_hat = s_hat - 1.0
    if abs(eps_hat) < 1e-9:
        scale = 1.0 / math.log(vocab)
    else:
        scale = eps_hat / (1.0 - vocab ** (-eps_hat))
    k = (scale * 2.0 ** mu) ** (1.0 / s_hat) if s_hat > 0 else np.nan
    if math.isfinite(s_hat) and s_hat > 0 and math.isfinite(k) and k > 0:
        chosen = np.rint(k) + 1.0
    else:
        chosen = np.float64(finite)
    chosen = np.int64(min(max(chosen, 1.0), np.float64(finite)))
    return max(lo, kth_in_band(z, lo, hi, chosen, values, maxima))


@_jit
def mirostat_v2(z, w, m, lo, hi, top, finite, mu, lanes, s):
    """Mirostat v2 (Basu et al.; llama.cpp's Mirostat 2.0): keep ``log2 p >= -mu``."""
    current, score, aux, partial, values, index, bins, sums32, sums64, groups, maxima, known = s
    current, _ = weights_of(z, w, m, lo, hi, top, finite, current)
    log_total = _F32(math.log(np.float64(_total(current, lo, hi, top, m, known, lanes, groups))))
    bound = -_F32(mu)
    low = np.float32(np.inf)
    for i in range(z.shape[0]):
        if in_band(z[i], lo, hi) and ((z[i] - top) - log_total) / _LN2 >= bound and z[i] < low:
            low = z[i]
    return max(lo, low)

