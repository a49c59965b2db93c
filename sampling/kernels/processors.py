"""The logits processors on one row, from the row's token history, in the pipeline's order:
repetition / frequency / presence penalties (:mod:`samplerd.sampling.strategies.penalties`), DRY
(:mod:`samplerd.sampling.strategies.dry`), logit bias (:mod:`samplerd.sampling.strategies.logit_bias`).

Each works on the tokens the history (or the bias) names, never on the whole vocabulary: a
per-thread vocabulary-sized counter is filled from the history, used, and zeroed again at the
same tokens. The float32 operations are the reference's, in its order, so the processed logits
are the reference's bit for bit.
"""

from __future__ import annotations

import numba
import numpy as np

from samplerd.sampling.kernels import records as f
from samplerd.sampling.kernels.common import _F32, _jit, _jit_parallel
from samplerd.sampling.strategies.dry import MAX_MATCH


@_jit
def _penalise(z, history, repetition, frequency, presence, counts):
    """``z -= frequency * count + presence * [count > 0]`` after the repetition penalty (a seen
    token's logit divided by ``repetition`` when positive, multiplied otherwise)."""
    for token in history:
        counts[token] += 1
    for token in history:
        count = counts[token]
        if count == 0:  # already done
            continue
        counts[token] = 0
        value = z[token]
        value = value / repetition if value > 0 else value * repetition
        z[token] = (value - frequency * _F32(count)) - presence


@_jit
def _is_breaker(token, breakers):
    at = np.searchsorted(breakers, token)
    return at < breakers.shape[0] and breakers[at] == token


@_jit
def _dry(z, history, breakers, amounts, allowed, longest):
    """DRY: each token that followed an earlier occurrence of the history's suffix loses the
    amount for the longest such suffix (``amounts[length - allowed]``) once it is at least
    ``allowed`` tokens long. Matches stop at a sequence breaker and at :data:`MAX_MATCH` tokens."""
    last = history.shape[0] - 1
    if last < 1 or _is_breaker(history[last], breakers):
        return
    end = history[last]
    for start in range(last):
        if history[start] != end or _is_breaker(history[start + 1], breakers):
            continue
        length = 1
        while length < MAX_MATCH:
            earlier = start - length
            suffix = last - length
            if earlier < 0 or _is_breaker(history[suffix], breakers) or history[earlier] != history[suffix]:
                break
            length += 1
        token = history[start + 1]
        longest[token] = max(longest[token], length)
    for start in range(last):
        token = history[start + 1]
        length = longest[token]
        if length == 0:  # no match, or already done
            continue
        longest[token] = 0
        if length >= allowed:
            z[token] = z[token] - amounts[length - allowed]


@_jit
def process_row(z, p, inputs, counts):
    """Apply row ``p``'s (a :data:`~samplerd.sampling.kernels.records.PROCESSING` record) processors
    to its logits ``z`` in place; ``counts`` is int32 vocabulary-sized scratch, all zero, left so."""
    history = inputs.history[p.history_start:p.history_stop]
    if p.flags & f.PENALTIES:
        _penalise(z, history, p.repetition, p.frequency, p.presence, counts)
    if p.flags & f.DRY:
        _dry(z, history, inputs.breakers[p.breakers_start:p.breakers_stop], inputs.amounts[p.amounts_start:],
             p.allowed_length, counts)
    if p.flags & f.LOGIT_BIAS:
        for j in range(p.bias_start, p.bias_stop):
            token = inputs.bias_tokens[j]
            z[token] = z[token] + inputs.bias_amounts[j]


@_jit_parallel
def process_rows(x, out, rows, inputs, counts):
    """``out`` = the logits ``x`` with each row's processors applied (``rows``, one
    :data:`~samplerd.sampling.kernels.records.PROCESSING` record each); rows spread over the threads
    that ``counts`` (int32 ``[threads, V]``, all zero, left so) has room for."""
    threads = min(counts.shape[0], x.shape[0])
    for thread in numba.prange(threads):
        for r in range(thread, x.shape[0], threads):
            out[r] = x[r]
            if rows[r].flags:
                process_row(out[r], rows[r], inputs, counts[thread])



@_jit
def process_one_row(x, out, rows, inputs, counts):
    """:func:`process_rows` of a one-row batch, on the caller's thread."""
    out[0] = x[0]
    if rows[0].flags:
        process_row(out[0], rows[0], inputs, counts[0])
