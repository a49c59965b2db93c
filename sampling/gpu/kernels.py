"""The Triton kernel of the fused chain: one program per row, every decision and statistic.

What one program does for its row (the passes all read the row's logits, which on a GPU
stay in L2 between passes for moderate batches):

A. Validity (NaN, +inf, no finite logit) on the raw logits, as
   :func:`samplerd.sampling.checks.check_logits` decides it; the row maximum ``m`` of
   ``z = x / T`` and the first index of the untempered maximum (greedy); then the sums of
   the full distribution with ``s = max(z - m, EXP_FLOOR)`` and ``w = exp(s)`` (0 for
   ``-inf``): ``sum w``, ``sum w s``, ``sum w s^2`` (entropy, varentropy).
B. Thresholds by a multi-pivot search on order-preserving integer keys of the float32
   logits (:func:`_key`): each pass evaluates ``PIVOTS`` candidate keys at once, the count
   (top-k, ``min_tokens_to_keep``, the top-``W`` list) or the weight (top-p) of the tokens
   at or above each, and narrows the key interval ``PIVOTS``-fold; the answer is the
   largest key whose count / weight reaches the target, which is always some token's key.
   Keeping ``z >= threshold`` then keeps whole tie groups by construction.
C. The final distribution's sums (kept tokens, kept mass, truncated entropy), the top
   ``W`` tokens of the row (compacted in index order, then one sort of at most ``2 W``
   candidates by (logit descending, index ascending)), and the inverse-CDF draws over
   blocks of 1024 tokens with uniforms from SplitMix64 keyed as :mod:`samplerd.sampling.rng` keys
   them.

Cost, unmeasured (no GPU has run this yet): a sampled row reads its logits twice in A, about
eight times per threshold in B (32-bit keys, 16 pivots a pass: top-k, top-p and the top-``W``
list each; ``min_tokens_to_keep`` adds one more search), once for the kept set and once per
8 draws. After top-k, the other searches start at top-k's key instead of the lowest finite
one (top-p always; ``min_tokens_to_keep``, and the top-``W`` list when ``W <= k``), since k
tokens reach it: the same answers, in the passes of a narrower key interval. Where the
benchmark shows this far above the 5x-the-read-floor target, the next levers are more
pivots per pass, a lower starting key from block maxima, and several programs per row for
small batches.

Every reduction is a ``tl.sum`` / ``tl.max`` / ``tl.cumsum`` within a block, in the fixed
tree order the compiler gives it, then added across blocks in index order in float64; no
atomics anywhere. A row's outputs depend on its own logits and parameters alone.
"""

from __future__ import annotations

import triton
import triton.language as tl

# Packed per-row parameters: one int64 row each (floats as their float32 bits).
P_FLAGS, P_K, P_MIN_KEEP, P_N, P_STATS_K, P_WANTED, P_SEED, P_STEP, P_DIVISOR, P_TOP_P, P_LOG_MIN_P, P_ROW = range(12)
PARAM_COLUMNS = 12
FLAG_GREEDY, FLAG_TOP_K, FLAG_TOP_P, FLAG_MIN_P = 1, 2, 4, 8

# Status codes per row (0: sampled).
STATUS_NAN, STATUS_POS_INF, STATUS_NO_FINITE = 1, 2, 3

#: Stats rows of the ``stats`` output.
STATS = ("entropy", "varentropy", "truncated_entropy", "kept_mass", "top_k_entropy", "top_k_mass")

_STATS_TILE = tl.constexpr(16)  # the top-k statistics' fixed summation tile
# samplerd.sampling.draw.BLOCK: the draw picks a block, then a token, as inverse_cdf does.
DRAW_BLOCK = tl.constexpr(1024)
_EXP_FLOOR = tl.constexpr(-87.0)  # samplerd.sampling.distribution.EXP_FLOOR
_LOWEST_FINITE_KEY = tl.constexpr(-0x7F800000)  # _key(-FLT_MAX); _key(-inf) is one less


@triton.jit
def _key(z):
    """float32 -> int64 that orders like the float (-0.0 just below +0.0)."""
    bits = z.to(tl.int32, bitcast=True)
    return (bits ^ ((bits >> 31) & 0x7FFFFFFF)).to(tl.int64)


@triton.jit
def _value(key):
    """The float32 whose :func:`_key` is ``key``."""
    k = key.to(tl.int32)
    return (k ^ ((k >> 31) & 0x7FFFFFFF)).to(tl.float32, bitcast=True)


@triton.jit
def _mix(x):
    """SplitMix64's finaliser (Steele, Lea, Flood, OOPSLA 2014) on uint64, wrapping."""
    x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9
    x = (x ^ (x >> 27)) * 0x94D049BB133111EB
    return x ^ (x >> 31)


@triton.jit
def _uniforms(seed, step, first, N_DRAWS: tl.constexpr):
    """Draw uniforms ``first .. first + N_DRAWS - 1`` of (seed, step):
    :func:`samplerd.sampling.rng.uniforms` with stream ``STREAM_DRAW`` (0), bit for bit."""
    key = _mix(seed * 0x9E3779B97F4A7C15 + 0x632BE59BD9B4E019)
    key = _mix(key ^ (step * 0x9E3779B97F4A7C15 + 1))
    index = (first + tl.arange(0, N_DRAWS)).to(tl.uint64)
    bits = _mix(key + (index + 1) * 0x9E3779B97F4A7C15)
    return (bits >> 11).to(tl.float64) * (1.0 / 9007199254740992.0)


@triton.jit
def _tempered(x_row, offs, vocab, divisor):
    """``z = x / T`` in float32 (IEEE division, as torch divides); ``-inf`` past the row."""
    x = tl.load(x_row + offs, mask=offs < vocab, other=float("-inf")).to(tl.float32)
    return tl.math.div_rn(x, divisor)


@triton.jit
def _select(x_row, vocab, divisor, best, floor, low, high, target, BY_WEIGHT: tl.constexpr,
            BLOCK: tl.constexpr, PIVOTS: tl.constexpr):
    """The largest key ``t`` in ``[low, high]`` such that the tokens with ``key >= t`` and
    ``floor <= z > -inf`` reach ``target`` in count (or in weight ``exp(max(z - best,
    EXP_FLOOR))`` with ``BY_WEIGHT``). The caller guarantees ``low`` reaches it."""
    step_index = (tl.arange(0, PIVOTS) + 1).to(tl.int64)
    low = low + tl.zeros([], dtype=tl.int64)
    high = high + tl.zeros([], dtype=tl.int64)
    while low < high:
        step = (high - low) // PIVOTS + 1
        pivots = low + step_index * step
        reached = tl.zeros([PIVOTS], dtype=tl.float64)
        for start in range(0, vocab, BLOCK):
            # _tempered and _key written out: this loop is the hot one (and the interpreter
            # pays per helper call).
            offs = start + tl.arange(0, BLOCK)
            x = tl.load(x_row + offs, mask=offs < vocab, other=float("-inf")).to(tl.float32)
            z = tl.math.div_rn(x, divisor)
            counted = (z > float("-inf")) & (z >= floor)
            if BY_WEIGHT:
                amount = tl.where(counted, tl.exp(tl.maximum(z - best, _EXP_FLOOR)), 0.0)
            else:
                amount = tl.where(counted, 1.0, 0.0)
            bits = z.to(tl.int32, bitcast=True)
            key = (bits ^ ((bits >> 31) & 0x7FFFFFFF)).to(tl.int64)
            above = key[None, :] >= pivots[:, None]
            reached += tl.sum(tl.where(above, amount[None, :], 0.0), axis=1).to(tl.float64)
        good = tl.sum(((reached >= target) & (pivots <= high)).to(tl.int64), axis=0)
        high = tl.minimum(high, low + (good + 1) * step - 1)
        low = low + good * step
    return low


@triton.jit
def _kept_weight(x_row, vocab, divisor, best, floor, BLOCK: tl.constexpr):
    """float64 total weight of the tokens with ``floor <= z > -inf``."""
    total = tl.zeros([], dtype=tl.float64)
    for start in range(0, vocab, BLOCK):
        offs = start + tl.arange(0, BLOCK)
        z = _tempered(x_row, offs, vocab, divisor)
        counted = (z > float("-inf")) & (z >= floor)
        total += tl.sum(tl.where(counted, tl.exp(tl.maximum(z - best, _EXP_FLOOR)), 0.0), axis=0).to(tl.float64)
    return total


@triton.jit
def fused_chain_kernel(
    x_ptr, x_stride, vocab, params_ptr,
    status_ptr, tokens_ptr, logprobs_ptr, surprise_ptr, stats_ptr, kept_ptr, top_ids_ptr, top_logprobs_ptr,
    scratch_ptr, rows,
    N_DRAWS: tl.constexpr, TOP_WIDTH: tl.constexpr, WIDEST: tl.constexpr, WANTED: tl.constexpr,
    BLOCK: tl.constexpr, PIVOTS: tl.constexpr,
):
    """One row per program; see the module docstring. ``N_DRAWS``: draws made per pass over
    the row (a power of two); ``TOP_WIDTH``: the width of the ``tokens`` / ``logprobs`` /
    ``surprise`` outputs (the batch's largest ``n``); ``WIDEST``: a power of two >= every row's ``max(stats_top_k,
    top_logprobs)``; ``WANTED``: the width of the top-logprob outputs (>= 1)."""
    r = tl.program_id(0)
    prm = params_ptr + r * 12
    flags = tl.load(prm + 0)
    k = tl.load(prm + 1)
    min_keep = tl.load(prm + 2)
    n = tl.load(prm + 3)
    stats_k = tl.load(prm + 4)
    wanted = tl.load(prm + 5)
    seed = tl.load(prm + 6).to(tl.uint64, bitcast=True)
    step = tl.load(prm + 7).to(tl.uint64, bitcast=True)
    divisor = tl.load(prm + 8).to(tl.int32).to(tl.float32, bitcast=True)
    top_p = tl.load(prm + 9).to(tl.int32).to(tl.float32, bitcast=True)
    log_min_p = tl.load(prm + 10).to(tl.int32).to(tl.float32, bitcast=True)
    x_row = x_ptr + tl.load(prm + 11) * x_stride
    sampled = (flags & 1) == 0
    greedy_row = (flags & 1) != 0

    # A. Validity on the raw logits, the maxima, the finite count.
    has_nan = tl.zeros([], dtype=tl.int32)
    has_pos_inf = tl.zeros([], dtype=tl.int32)
    finite = tl.zeros([], dtype=tl.int64)
    raw_best = tl.full([], float("-inf"), tl.float32)
    for start in range(0, vocab, BLOCK):
        offs = start + tl.arange(0, BLOCK)
        x = tl.load(x_row + offs, mask=offs < vocab, other=float("-inf")).to(tl.float32)
        has_nan = tl.maximum(has_nan, tl.max((x != x).to(tl.int32), axis=0))
        has_pos_inf = tl.maximum(has_pos_inf, tl.max((x == float("inf")).to(tl.int32), axis=0))
        finite += tl.sum(((x > float("-inf")) & (x < float("inf"))).to(tl.int64), axis=0)
        raw_best = tl.maximum(raw_best, tl.max(tl.where(x == x, x, float("-inf")), axis=0))
    status = tl.where(has_nan > 0, 1, tl.where(has_pos_inf > 0, 2, tl.where(finite == 0, 3, 0)))
    tl.store(status_ptr + r, status)
    if status == 0:
        best = tl.math.div_rn(raw_best, divisor)  # division is monotone: the tempered maximum
        total = tl.zeros([], dtype=tl.float64)
        first_moment = tl.zeros([], dtype=tl.float64)
        second_moment = tl.zeros([], dtype=tl.float64)
        argmax = tl.full([], 2147483647, tl.int64)
        for start in range(0, vocab, BLOCK):
            offs = start + tl.arange(0, BLOCK)
            x = tl.load(x_row + offs, mask=offs < vocab, other=float("-inf")).to(tl.float32)
            z = tl.math.div_rn(x, divisor)
            s = tl.maximum(z - best, _EXP_FLOOR)
            w = tl.where(z > float("-inf"), tl.exp(s), 0.0)
            total += tl.sum(w, axis=0).to(tl.float64)
            first_moment += tl.sum(w * s, axis=0).to(tl.float64)
            second_moment += tl.sum(w * s * s, axis=0).to(tl.float64)
            argmax = tl.minimum(argmax, tl.min(tl.where(x == raw_best, offs, 2147483647), axis=0).to(tl.int64))
        log_total = tl.log(total)
        mean = first_moment / total
        tl.store(stats_ptr + 0 * rows + r, tl.maximum(log_total - mean, 0.0).to(tl.float32))
        tl.store(stats_ptr + 1 * rows + r, tl.maximum(second_moment / total - mean * mean, 0.0).to(tl.float32))

        # B. Thresholds: top-k (k already raised to min_tokens_to_keep), the protection of
        # min_tokens_to_keep, top-p on top-k's output, min-p; each lowered to the protection.
        best_key = _key(best)
        neg_inf = float("-inf")
        floor = tl.full([], neg_inf, tl.float32)
        floor_key = tl.full([], _LOWEST_FINITE_KEY, tl.int64)
        if ((flags & 2) != 0) & (k < finite) & sampled:
            floor_key = _select(x_row, vocab, divisor, best, neg_inf, _LOWEST_FINITE_KEY, best_key,
                                k.to(tl.float64), False, BLOCK, PIVOTS)
            floor = _value(floor_key)
        # Every later search starts at top-k's key where that is a lower bound of its answer
        # (k tokens reach it, k >= min_tokens_to_keep; top-p counts only tokens above it): the
        # same answer in fewer passes.
        protect = tl.full([], float("inf"), tl.float32)
        if (min_keep > 1) & sampled:
            protect = tl.full([], neg_inf, tl.float32)
            if min_keep <= finite:
                protect = _value(_select(x_row, vocab, divisor, best, neg_inf, floor_key, best_key,
                                         min_keep.to(tl.float64), False, BLOCK, PIVOTS))
        threshold = floor
        if ((flags & 4) != 0) & sampled:
            kept_total = total
            if floor > neg_inf:
                kept_total = _kept_weight(x_row, vocab, divisor, best, floor, BLOCK)
            target = top_p.to(tl.float64) * kept_total
            cut = _value(_select(x_row, vocab, divisor, best, floor, floor_key, best_key, target, True,
                                 BLOCK, PIVOTS))
            threshold = tl.maximum(threshold, tl.minimum(cut, protect))
        if ((flags & 8) != 0) & sampled:
            threshold = tl.maximum(threshold, tl.minimum(best + log_min_p, protect))

        # C. The final distribution: greedy keeps its first maximum only.
        final_total = tl.full([], 1.0, tl.float64)
        final_first = tl.zeros([], dtype=tl.float64)
        kept = tl.full([], 1, tl.int64)
        if sampled:
            final_total = tl.zeros([], dtype=tl.float64)
            kept = tl.zeros([], dtype=tl.int64)
            for start in range(0, vocab, BLOCK):
                offs = start + tl.arange(0, BLOCK)
                z = _tempered(x_row, offs, vocab, divisor)
                keep = (z > float("-inf")) & (z >= threshold)
                s = tl.maximum(z - best, _EXP_FLOOR)
                w = tl.where(keep, tl.exp(s), 0.0)
                final_total += tl.sum(w, axis=0).to(tl.float64)
                final_first += tl.sum(w * s, axis=0).to(tl.float64)
                kept += tl.sum(keep.to(tl.int64), axis=0)
        log_final = tl.log(final_total)
        tl.store(kept_ptr + r, kept)
        tl.store(stats_ptr + 2 * rows + r, tl.maximum(log_final - final_first / final_total, 0.0).to(tl.float32))
        tl.store(stats_ptr + 3 * rows + r, tl.minimum(final_total / total, 1.0).to(tl.float32))

        # The top ``width`` tokens: those above the width-th largest key, then the first of
        # its tie group in index order, each into its own half of the row's scratch.
        width = tl.maximum(stats_k, wanted)
        edge = tl.full([], _LOWEST_FINITE_KEY, tl.int64)
        if width < finite:
            edge = _select(x_row, vocab, divisor, best, neg_inf, tl.where(width <= k, floor_key, _LOWEST_FINITE_KEY),
                           best_key, width.to(tl.float64), False, BLOCK, PIVOTS)
        scratch = scratch_ptr + r * (2 * WIDEST)
        above_count = tl.zeros([], dtype=tl.int64)
        tied_count = tl.zeros([], dtype=tl.int64)
        for start in range(0, vocab, BLOCK):
            offs = start + tl.arange(0, BLOCK)
            z = _tempered(x_row, offs, vocab, divisor)
            key = _key(z)
            finite_here = z > float("-inf")
            above = finite_here & (key > edge)
            tied = finite_here & (key == edge)
            above_at = above_count + tl.cumsum(above.to(tl.int64), axis=0) - 1
            tied_at = tied_count + tl.cumsum(tied.to(tl.int64), axis=0) - 1
            tl.store(scratch + above_at, offs, mask=above & (above_at < WIDEST))
            tl.store(scratch + WIDEST + tied_at, offs, mask=tied & (tied_at < WIDEST))
            above_count += tl.sum(above.to(tl.int64), axis=0)
            tied_count += tl.sum(tied.to(tl.int64), axis=0)
        tl.debug_barrier()
        slot = tl.arange(0, WIDEST)
        above_ids = tl.load(scratch + slot, mask=slot < above_count, other=0)
        tied_ids = tl.load(scratch + WIDEST + slot, mask=slot < tl.minimum(tied_count, width - above_count), other=0)
        ids = tl.join(above_ids, tied_ids).reshape(2 * WIDEST)
        valid = tl.join((slot < above_count).to(tl.int32),
                        (slot < tl.minimum(tied_count, width - above_count)).to(tl.int32)).reshape(2 * WIDEST) != 0
        values = _tempered(x_row, ids, vocab, divisor)
        # (logit descending, index ascending) as one int64; unused slots sort last.
        order = tl.where(valid, (_key(values) << 32) | (4294967295 - ids.to(tl.int64)), -9223372036854775807 - 1)
        order = tl.sort(order, descending=True)
        head = tl.arange(0, 2 * WIDEST)
        top_ids = 4294967295 - (order & 4294967295)
        top_values = tl.where(head < tl.minimum(width, finite), _value(order >> 32), float("-inf"))
        # The top-k statistics add the sorted values through the scratch in tiles of a fixed
        # width, in order: the same sums whatever WIDEST the batch gave this launch.
        tl.debug_barrier()
        tl.store(scratch + head, (order >> 32).to(tl.int32))
        tl.debug_barrier()
        mass = tl.zeros([], dtype=tl.float64)
        for tile in range(0, stats_k, _STATS_TILE):
            at = tile + tl.arange(0, _STATS_TILE)
            value = _value(tl.load(scratch + at, mask=at < stats_k, other=0).to(tl.int64))
            counted = (at < stats_k) & (at < finite)
            mass += tl.sum(tl.where(counted, tl.exp(value.to(tl.float64) - best - log_total), 0.0), axis=0)
        top_entropy = tl.zeros([], dtype=tl.float64)
        for tile in range(0, stats_k, _STATS_TILE):
            at = tile + tl.arange(0, _STATS_TILE)
            value = _value(tl.load(scratch + at, mask=at < stats_k, other=0).to(tl.int64))
            counted = (at < stats_k) & (at < finite)
            share = tl.where(counted, tl.exp(value.to(tl.float64) - best - log_total), 0.0) / mass
            top_entropy -= tl.sum(tl.where(share > 0, share * tl.log(tl.where(share > 0, share, 1.0)), 0.0), axis=0)
        tl.store(stats_ptr + 4 * rows + r, tl.maximum(top_entropy, 0.0).to(tl.float32))
        tl.store(stats_ptr + 5 * rows + r, tl.minimum(mass, 1.0).to(tl.float32))
        listed = (head < wanted) & (head < kept) & (head < WANTED)
        tl.store(top_ids_ptr + r * WANTED + head, tl.where(listed, top_ids, -1), mask=head < WANTED)
        top_lp = tl.where(listed, (top_values.to(tl.float64) - best - log_final).to(tl.float32), float("-inf"))
        tl.store(top_logprobs_ptr + r * WANTED + head, top_lp, mask=head < WANTED)

        # The draws, N_DRAWS at a time: pick the block where the float64 running sum of
        # float32 block sums passes u * total, then the token where the float64 running sum
        # inside it does.
        for first_draw in range(0, TOP_WIDTH, N_DRAWS):
            draw = first_draw + tl.arange(0, N_DRAWS)
            drawn = draw < n
            tokens = tl.full([N_DRAWS], -1, tl.int64)
            chosen = tl.zeros([N_DRAWS], dtype=tl.float64)
            if greedy_row:
                tokens = tl.full([N_DRAWS], 0, tl.int64) + argmax
            elif first_draw < n:
                targets = _uniforms(seed, step, first_draw, N_DRAWS) * final_total
                running = tl.zeros([], dtype=tl.float64)
                last_kept = tl.full([], -1, tl.int64)
                for start in range(0, vocab, DRAW_BLOCK):
                    offs = start + tl.arange(0, DRAW_BLOCK)
                    z = _tempered(x_row, offs, vocab, divisor)
                    keep = (z > float("-inf")) & (z >= threshold)
                    w = tl.where(keep, tl.exp(tl.maximum(z - best, _EXP_FLOOR)), 0.0)
                    block_total = tl.sum(w, axis=0).to(tl.float64)
                    inside = (tokens < 0) & (running + block_total > targets)
                    if tl.sum(inside.to(tl.int32), axis=0) > 0:
                        cumulative = tl.cumsum(w.to(tl.float64), axis=0) + running
                        passed = (cumulative[None, :] > targets[:, None]) & keep[None, :]
                        first = tl.min(tl.where(passed, offs[None, :], 2147483647), axis=1).to(tl.int64)
                        tokens = tl.where(inside & (first < 2147483647), first, tokens)
                    last_kept = tl.maximum(last_kept,
                                           tl.max(tl.where(keep & (w > 0), offs, -1), axis=0).to(tl.int64))
                    running += block_total
                tokens = tl.where(tokens < 0, last_kept, tokens)  # rounding left u * total past the end
                chosen = _tempered(x_row, tl.where(drawn, tokens, 0), vocab, divisor).to(tl.float64) - best
            out = draw < TOP_WIDTH
            tl.store(tokens_ptr + r * TOP_WIDTH + draw, tl.where(drawn, tokens, -1), mask=out)
            tl.store(logprobs_ptr + r * TOP_WIDTH + draw,
                     tl.where(drawn, (chosen - log_final).to(tl.float32), float("nan")), mask=out)
            tl.store(surprise_ptr + r * TOP_WIDTH + draw,
                     tl.where(drawn, (log_total - chosen).to(tl.float32), float("nan")), mask=out)
