"""DRY ("Don't Repeat Yourself") penalty against verbatim repetition of earlier text.

Definition (p-e-w, text-generation-webui PR #5677, also in llama.cpp and koboldcpp): if the
history ends with a sequence that already occurred earlier, followed there by token ``t``,
and the repeated sequence is ``n >= allowed_length`` tokens long, then ``t``'s logit loses
``multiplier * base ** (n - allowed_length)``. Matches never extend across a sequence-breaker
token, and a history ending in a breaker gets no penalty. Match lengths are capped at 50, as
in the reference, which only matters for penalties above ``base ** 48`` (effectively a ban).

The matching runs over the history, not the vocabulary, so it is computed on the host per DRY
row with vectorised NumPy over the history positions (the history is host data already); the
result is a short list of (row, token, amount) entries, applied on the logits' device by one
gather and one ``index_put`` (each entry is distinct, so the order of writes cannot matter).
"""

from __future__ import annotations

import numpy as np
import torch

from samplerd.sampling.declarations import Parameter, Stage, Strategy
from samplerd.sampling.rows import RowParams
from samplerd.sampling.transfer import upload

MAX_MATCH = 50

MULTIPLIER = Parameter(
    "dry_multiplier", "float", 0.0, "Penalty scale; 0 switches DRY off.", low=0.0, high=100.0, off="0",
)
BASE = Parameter(
    "dry_base", "float", 1.75, "Growth of the penalty per token of repetition beyond the allowed length.",
    low=1.0, high=10.0, low_inclusive=False, off="(only used when dry_multiplier > 0)",
)
ALLOWED_LENGTH = Parameter(
    "dry_allowed_length", "int", 2, "Longest repetition that is not penalised.", low=1, high=1000,
    off="(only used when dry_multiplier > 0)",
)
SEQUENCE_BREAKERS = Parameter(
    "dry_sequence_breakers", "token_ids", (), "Token ids that end a repeated sequence (e.g. newline).",
    high=256, off="empty",
)

def match_lengths(history: np.ndarray, breakers: frozenset[int]) -> dict[int, int]:
    """For each token that followed an earlier occurrence of the history's suffix, the longest
    such suffix length (at most :data:`MAX_MATCH`)."""
    if history.size < 2 or int(history[-1]) in breakers:
        return {}
    is_breaker = np.isin(history, np.fromiter(breakers, dtype=history.dtype)) if breakers else (
        np.zeros(history.size, dtype=bool))
    last = history.size - 1
    starts = np.flatnonzero(history[:-1] == history[-1])
    starts = starts[~is_breaker[starts + 1]]
    lengths = np.ones(starts.size, dtype=np.int64)
    alive = np.ones(starts.size, dtype=bool)
    for m in range(1, MAX_MATCH):
        earlier = starts - m
        alive &= earlier >= 0
        if not alive.any():
            break
        suffix_pos = last - m
        if is_breaker[suffix_pos]:
            break
        alive &= history[np.maximum(earlier, 0)] == history[suffix_pos]
        lengths += alive
    found: dict[int, int] = {}
    for token, length in zip(history[starts + 1].tolist(), lengths.tolist(), strict=True):
        if length > found.get(token, 0):
            found[token] = length
    return found


def penalty_of(p, length: int) -> float:
    """The DRY penalty (float64) on the token that would extend a repetition of ``length`` tokens."""
    return p.dry_multiplier * p.dry_base ** (length - p.dry_allowed_length)


def penalty_entries(histories: list[np.ndarray], params: list,
                    vocab_size: int) -> tuple[list[int], list[int], list[float]]:
    """The rows, tokens and amounts (to subtract from the logit) of every DRY penalty."""
    rows, tokens, amounts = [], [], []
    for row, (history, p) in enumerate(zip(histories, params, strict=True)):
        for token, length in match_lengths(history, frozenset(p.dry_sequence_breakers)).items():
            if length >= p.dry_allowed_length and token < vocab_size:
                rows.append(row)
                tokens.append(token)
                amounts.append(penalty_of(p, length))
    return rows, tokens, amounts


def process(logits: torch.Tensor, rows: RowParams) -> torch.Tensor:
    """The DRY penalty on the rows that switch it on, each against its own history."""
    histories = [np.asarray(history, dtype=np.int64) for history in rows.histories]
    row, token, amount = penalty_entries(histories, rows.params, logits.shape[-1])
    if not row:
        return logits
    where = tuple(upload(torch.tensor([row, token]), logits.device))
    # Amounts beyond float32 become +inf, which bans the token (a float32 tensor made from them
    # directly raises torch's overflow error).
    penalty = upload(torch.tensor(amount, dtype=torch.float64).to(torch.float32), logits.device)
    return logits.index_put(where, logits[where] - penalty)


DRY = Strategy(
    name="dry",
    stage=Stage.PENALTY,
    summary="Penalise the token that would extend a verbatim repetition of the history.",
    paper="p-e-w, DRY: A modern repetition penalty, text-generation-webui PR #5677 (2024)",
    parameters=(MULTIPLIER, BASE, ALLOWED_LENGTH, SEQUENCE_BREAKERS),
    is_active=lambda p: p.dry_multiplier > 0,
    process=process,
)
