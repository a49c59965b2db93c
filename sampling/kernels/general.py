"""The general fused kernel: every truncation, per row in a few passes over a cache-resident
row, rows in parallel (the row's penalties, DRY and logit bias are applied before,
:mod:`samplerd.sampling.kernels.processors`).

Per row: the full distribution's statistics; then each switched-on truncation in the
pipeline's order (:mod:`samplerd.sampling.pipeline`), each on the renormalised band the one before kept
(:mod:`samplerd.sampling.kernels.truncations`), with ``min_tokens_to_keep`` applied as the pipeline
does; then the final distribution's statistics, the inverse-CDF draws
(:mod:`samplerd.sampling.kernels.draw`) and the outputs. Greedy rows take the first maximum.
"""

from __future__ import annotations

import math

import numba
import numpy as np

from samplerd.sampling.kernels import records as f
from samplerd.sampling.kernels import truncations as t
from samplerd.sampling.kernels.chain import _WIDTH, _final_pass, _full_pass
from samplerd.sampling.kernels.common import _F32, _NEG_INF, _POS_INF, _jit, _jit_parallel
from samplerd.sampling.kernels.current import entropy32, log32, materialise, total32
from samplerd.sampling.kernels.draw import _draw, _uniforms
from samplerd.sampling.kernels.ranking import top_in_band
from samplerd.sampling.kernels.torch_sums import _block_totals, _sum_from_groups

_LN2 = math.log(2.0)


@_jit
def _truncate(z, w, m, finite, p, lanes, s):
    """The band ``(lo, hi)`` every switched-on truncation of the row keeps, in pipeline order,
    and the band's largest logit."""
    values = s[4]
    maxima = s[10]
    flags = p.flags
    keep = p.min_keep
    lo = _NEG_INF
    hi = _POS_INF
    top = m
    if flags & f.TOP_N_SIGMA:
        cut = t.top_n_sigma(z, lo, hi, top, p.top_n_sigma)
        lo = t.protect(z, cut, lo, hi, top, keep, True, values, maxima)
    if flags & f.TOP_K:
        cut = t.top_k(z, lo, hi, p.top_k, values, maxima)
        lo = t.protect(z, cut, lo, hi, top, keep, True, values, maxima)
    if flags & f.OPTIMAL_K:
        cut = t.optimal_k(z, w, m, lo, hi, top, finite, p.optimal_k, lanes, s)
        lo = t.protect(z, cut, lo, hi, top, keep, True, values, maxima)
    if flags & f.ENTROPY_TOP_K:
        cut = t.entropy_top_k(z, w, m, lo, hi, top, finite, p.entropy_top_k_min, p.entropy_top_k, lanes, s)
        lo = t.protect(z, cut, lo, hi, top, keep, True, values, maxima)
    if flags & f.STATISTICAL_TOP_K:
        cut = t.statistical_top_k(z, lo, hi, p.statistical_top_k)
        lo = t.protect(z, cut, lo, hi, top, keep, False, values, maxima)
    if flags & f.TOP_H:
        cut = t.top_h(z, w, m, lo, hi, top, finite, p.top_h, lanes, s)
        lo = t.protect(z, cut, lo, hi, top, keep, True, values, maxima)
    if flags & f.TOP_P:
        cut = t.top_p(z, w, m, lo, hi, top, finite, p.top_p, lanes, s)
        lo = t.protect(z, cut, lo, hi, top, keep, True, values, maxima)
    if flags & f.MIN_P:
        lo = t.protect(z, t.min_p(lo, top, log32(p.min_p)), lo, hi, top, keep, True, values, maxima)
    if flags & f.TYPICAL:
        lo, hi = t.typical(z, w, m, lo, hi, top, finite, p.typical_p, keep, lanes, s)
        top = min(top, hi)
    if flags & f.EPSILON:
        cut = t.epsilon(z, w, m, lo, hi, top, finite, p.epsilon, lanes, s)
        lo = t.protect(z, cut, lo, hi, top, keep, False, values, maxima)
    if flags & f.ETA:
        cut = t.eta(z, w, m, lo, hi, top, finite, p.eta, lanes, s)
        lo = t.protect(z, cut, lo, hi, top, keep, True, values, maxima)
    if flags & f.XTC:
        hi = t.xtc(z, w, m, lo, hi, top, finite, p, lanes, s)
        top = min(top, hi)
    if flags & f.MIROSTAT_V1:
        cut = t.mirostat_v1(z, w, m, lo, hi, top, finite, p.mirostat_mu, lanes, s)
        lo = t.protect(z, cut, lo, hi, top, keep, True, values, maxima)
    if flags & f.MIROSTAT_V2:
        cut = t.mirostat_v2(z, w, m, lo, hi, top, finite, p.mirostat_mu, lanes, s)
        lo = t.protect(z, cut, lo, hi, top, keep, False, values, maxima)
    return lo, hi, top


@_jit
def _first_max(z, m):
    for i in range(z.shape[0]):
        if z[i] == m:
            return i
    return 0


@_jit
def _row(r, z, w, m, maxima, finite, p, lanes, block, scratch, out):
    """Everything for row ``r``: its truncations, draws and outputs."""
    current, score, aux, partial, values, index, bins, sums32, sums64, groups = scratch
    full = np.empty(3)
    whole = _full_pass(z, w, m, False, bins, groups, full)
    known = np.empty(1, dtype=np.float32)  # torch's float32 total of the row's weights
    vocab = z.shape[0]
    if lanes * 4 == _WIDTH and lanes <= vocab and vocab // _WIDTH <= 2**19:  # the pass's groups are torch's
        known[0] = _sum_from_groups(z, w, _NEG_INF, lanes, groups, whole)
    else:
        known[0] = total32(w, lanes, groups)
    s = scratch + (maxima, known)
    log_total = math.log(full[0])
    mean = full[1] / full[0]
    out.measures[r, 0] = max(log_total - mean, 0.0)
    out.measures[r, 1] = max(full[2] / full[0] - mean * mean, 0.0)
    # The full distribution's top-k statistics.
    found = top_in_band(z, _NEG_INF, _POS_INF, p.stats_k, index, values, maxima)
    mass = 0.0
    for j in range(found):
        mass += math.exp(np.float64(values[j]) - m - log_total)
    entropy = 0.0
    for j in range(found):
        share = math.exp(np.float64(values[j]) - m - log_total) / mass
        if share > 0:
            entropy -= share * math.log(share)
    out.measures[r, 4] = max(entropy, 0.0)
    out.measures[r, 5] = min(mass, 1.0)
    draws = p.n
    if p.flags & f.GREEDY:
        token = _first_max(z, m)
        lo = hi = top = z[token]
        kept = 1
        final_log_total = 0.0
        out.measures[r, 2] = 0.0
        out.measures[r, 3] = min(math.exp(-log_total), 1.0)
        for j in range(draws):
            out.tokens[r, j] = token
    else:
        lo, hi, top = _truncate(z, w, m, finite, p, lanes, s)
        final = np.empty(3)
        totals = np.empty(-(-z.shape[0] // block))
        if hi == _POS_INF and top == m:  # a lower threshold on the row's own weights, as the chain's
            whole = _final_pass(z, w, m, lo, groups, final)
            kept = np.int64(final[2])
            gate, weights, gate_lo = z, w, lo
        else:
            kept = materialise(z, w, m, lo, hi, top, current)
            whole = _full_pass(z, current, top, False, bins, groups, final)
            gate, weights, gate_lo = current, current, _F32(0.0)  # where(current >= 0, current, 0) = current
        final_log_total = math.log(final[0])
        out.measures[r, 2] = max(final_log_total - final[1] / final[0], 0.0)
        out.measures[r, 3] = min(final[0] * math.exp(np.float64(top) - m) / full[0], 1.0)
        if lanes:
            _block_totals(gate, weights, gate_lo, block, lanes, groups, whole if lanes * 4 == _WIDTH else 0, totals)
        else:
            for b in range(totals.shape[0]):
                chunk = 0.0
                for i in range(b * block, min((b + 1) * block, z.shape[0])):
                    chunk += weights[i] if gate[i] >= gate_lo else 0.0
                totals[b] = chunk
        _draw(gate, weights, gate_lo, totals, block, _uniforms(p.seed, p.step, draws), draws, out.tokens[r])
    out.kept[r] = kept
    for j in range(out.tokens.shape[1]):
        if j < draws:
            value = np.float64(z[out.tokens[r, j]])
            out.logprobs[r, j] = (value - top) - final_log_total
            out.surprise[r, j] = log_total - (value - m)
        else:
            out.tokens[r, j] = -1
            out.logprobs[r, j] = np.nan
            out.surprise[r, j] = np.nan
    wanted = min(p.top_logprobs, out.ranked_ids.shape[1])
    if p.flags & f.GREEDY:  # the final distribution holds the first maximum alone
        found = min(wanted, 1)
        out.ranked_ids[r, 0:found] = out.tokens[r, 0]
        score[0] = top
    else:
        found = top_in_band(z, lo, hi, wanted, out.ranked_ids[r], score, maxima) if wanted else 0
    for j in range(out.ranked_ids.shape[1]):
        if j < found:
            out.ranked_logprobs[r, j] = (np.float64(score[j]) - top) - final_log_total
        else:
            out.ranked_ids[r, j] = -1
            out.ranked_logprobs[r, j] = -np.inf
    out.mu[r] = np.nan
    if p.flags & (f.MIROSTAT_V1 | f.MIROSTAT_V2):
        bits = np.float64(out.surprise[r, 0]) / _LN2
        out.mu[r] = p.mirostat_mu - np.float64(p.mirostat_eta) * (bits - np.float64(p.mirostat_tau))


@_jit_parallel
def sample_rows(prepared, params, lanes, block, scratch, out):
    """Sample every row of ``prepared`` (a :class:`~samplerd.sampling.kernels.records.Prepared`;
    ``params`` one :data:`~samplerd.sampling.kernels.records.ROW` each) into ``out``
    (:class:`~samplerd.sampling.kernels.records.Outputs`). Rows are spread over the threads that
    ``scratch`` has room for; each row's result depends on that row alone."""
    z, w, m, maxima, finite = prepared
    rows = z.shape[0]
    threads = min(scratch.current.shape[0], rows)
    for thread in numba.prange(threads):
        s = (scratch.current[thread], scratch.score[thread], scratch.aux[thread], scratch.partial[thread],
             scratch.values[thread], scratch.index[thread], scratch.bins[thread], scratch.sums32[thread],
             scratch.sums64[thread], scratch.groups[thread])
        for r in range(thread, rows, threads):
            _row(r, z[r], w[r], m[r], maxima[r], finite[r], params[r], lanes, block, s, out)


@_jit
def sample_one_row(prepared, params, lanes, block, scratch, out):
    """:func:`sample_rows` of a one-row batch, on the caller's thread."""
    z, w, m, maxima, finite = prepared
    s = (scratch.current[0], scratch.score[0], scratch.aux[0], scratch.partial[0], scratch.values[0],
         scratch.index[0], scratch.bins[0], scratch.sums32[0], scratch.sums64[0], scratch.groups[0])
    _row(0, z[0], w[0], m[0], maxima[0], finite[0], params[0], lanes, block, s, out)


@_jit
def dynamic_divisors(x, w, m, params, status, lanes, groups, aux, divisors):
    """Dynamic temperature (llama.cpp's temp-ext): ``T = T_min + (T_max - T_min) * (H / ln V) **
    exponent``, H the float32 entropy of each row's untempered logits ``x`` (``w`` their weights,
    torch's exp; ``m`` their maxima) as :func:`samplerd.sampling.strategies.temperature.dynamic_temperature`
    computes it, into ``divisors`` on the dynamic rows whose ``status`` is good."""
    vocab = x.shape[1]
    for r in range(x.shape[0]):
        p = params[r]
        if not p.flags & f.DYNATEMP or status[r] < 0:
            continue
        if vocab <= 1:
            divisors[r] = p.temperature
            continue
        total = total32(w[r], lanes, groups)
        entropy = entropy32(x[r], w[r], m[r], total, lanes, groups, aux)
        normalised = min(max(entropy / _F32(math.log(vocab)), _F32(0.0)), _F32(1.0))
        low = max(p.temperature - p.dynatemp_range, _F32(0.0))
        high = p.temperature + p.dynatemp_range
        divisors[r] = low + (high - low) * _F32(np.float64(normalised) ** np.float64(p.dynatemp_exponent))
