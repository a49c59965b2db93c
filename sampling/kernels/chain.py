"""The temperature -> top-k -> top-p -> min-p chain of :mod:`samplerd.sampling.fused`, bit for bit as the general path.
"""

from __future__ import annotations

import numpy as np

from samplerd.sampling.kernels.common import (
    _CHUNK,
    _F32,
    _FLOOR,
    _LAST_BIN,
    _NEAR_BINS,
    _NEG_INF,
    _NUM_BINS,
    _POS_INF,
    _SCALE,
    _ZERO,
    _jit,
)
from samplerd.sampling.kernels.draw import _draw, _uniforms
from samplerd.sampling.kernels.prepare import _mask
from samplerd.sampling.kernels.torch_sums import _block_totals, _sum_from_groups, _torch_sum

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
    """:func:`samplerd.sampling.selection.prefix_boundary` replayed float for float on the
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
def _scan(prepared, settings, lanes, block, work):
    """Per row: the full distribution's statistics (``stats[0:3]``); the largest tokens
    (``top_values`` / ``top_ids``, descending, ties in index order); top-k's threshold
    (``floors``; ``k`` already raised to ``min_keep``; -inf when it keeps every finite token)
    and ``min_tokens_to_keep``'s (``protect``; +inf when 1); then top-p, min-p, the final
    threshold (``thresholds``) and the final distribution's statistics and block sums.
    Reads ``prepared`` (:class:`~samplerd.sampling.kernels.records.Prepared`) and ``settings``
    (:class:`~samplerd.sampling.kernels.records.ChainSettings`), writes ``work``
    (:class:`~samplerd.sampling.kernels.records.ChainWork`).

    With ``lanes`` (:func:`sum_lanes`) the float32 sums torch would compute are replayed here.
    Without, ``totals`` holds torch's row totals of ``w`` for top-p rows, the final weights go
    to ``final`` for torch's block sums, and rows chaining top-p after a top-k that removes
    tokens are left to :func:`_finish_chained`, their top-k weights in row ``chained_row[r]``
    of ``chained_out`` for torch's total."""
    z, w, m, chunk_max, finite = prepared
    top_k_on, k, min_keep, top_p_on = settings.top_k_on, settings.k, settings.min_keep, settings.top_p_on
    top_p_value, min_p_on, log_min_p = settings.top_p, settings.min_p_on, settings.log_min_p
    top_width = settings.top_width
    (totals, top_values, top_ids, floors, protect, chained_out, chained_row, bins, members, member_count, sums,
     thresholds, kept, stats, final, block_totals, index, scratch, groups) = work
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
def _finish_chained(prepared, settings, chained_totals, work):
    """The end of :func:`_scan` for the rows it left (without ``lanes``): ``chained_totals``
    holds torch's float32 totals of their top-k weights."""
    z, w, m, chunk_max, finite = prepared
    top_p_value, min_p_on, log_min_p = settings.top_p, settings.min_p_on, settings.log_min_p
    floors, protect, chained_row = work.floors, work.protect, work.chained_row
    thresholds, kept = work.thresholds, work.kept
    bins, members, member_count, sums = work.bins, work.members, work.member_count, work.sums
    stats, final, index, scratch, groups = work.stats, work.final, work.index, work.scratch, work.groups
    for r in range(z.shape[0]):
        if chained_row[r] >= 0:
            thresholds[r] = _threshold(z[r], w[r], m[r], chunk_max[r], True, top_p_value[r],
                                       chained_totals[chained_row[r]], min_p_on[r], log_min_p[r], finite[r], floors[r],
                                       protect[r], bins[r], members[r], member_count[r], sums[r], _LAST_BIN, index,
                                       scratch)
            kept[r] = _final_stats(z[r], w[r], m[r], thresholds[r], 0, 0, groups, stats[r], stats[r])
            _mask(z[r], w[r], thresholds[r], final[r])


@_jit
def _outputs(prepared, settings, width, work, out):
    """The draws and every output but the kept count (:class:`~samplerd.sampling.kernels.records.ChainOutputs`):
    ``tokens``, ``logprobs`` and ``surprise`` (padded -1 / NaN past ``n``), ``measures`` rows
    (entropy, varentropy, truncated entropy, kept mass, top-k entropy, top-k mass) and the top
    log-probabilities (-1 / -inf where unused)."""
    z, w, m = prepared.z, prepared.w, prepared.m
    n, stats_k, wanted, seeds, steps = settings.n, settings.stats_k, settings.wanted, settings.seeds, settings.steps
    thresholds, block_totals, sums, kept = work.thresholds, work.block_totals, work.stats, work.kept
    top_values, top_ids = work.top_values, work.top_ids
    tokens, logprobs, surprise, stats, ranked_ids, ranked_logprobs = out
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


@_jit
def _scan_and_draw(prepared, settings, lanes, block, work, out):
    """:func:`_scan` then :func:`_outputs` in one call, where no torch sum is needed between
    them (with ``lanes``): one dispatch of the records fewer per batch."""
    _scan(prepared, settings, lanes, block, work)
    _outputs(prepared, settings, block, work, out)
