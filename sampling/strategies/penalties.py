"""Repetition, frequency and presence penalties over a row's token history.

* repetition penalty (Keskar et al., "CTRL: A Conditional Transformer Language Model for
  Controllable Generation", arXiv 1909.05858): a logit ``z`` of a token seen in the history
  becomes ``z / r`` when positive and ``z * r`` otherwise (Hugging Face's reading);
* frequency and presence penalties (OpenAI API semantics, as vLLM and llama.cpp):
  ``z -= frequency * count + presence * [count > 0]``.

The history is whatever the caller passes in the row's :class:`~samplerd.sampling.state.SequenceState`
(a session passes the prompt and every generated token).
"""

from __future__ import annotations

import torch

from samplerd.sampling.declarations import Parameter, Stage, Strategy
from samplerd.sampling.rows import RowParams

REPETITION = Parameter(
    "repetition_penalty", "float", 1.0,
    "Divides positive (multiplies negative) logits of tokens already in the history.",
    low=0.0, high=100.0, low_inclusive=False, off="1",
)
FREQUENCY = Parameter(
    "frequency_penalty", "float", 0.0,
    "Subtracted from a token's logit once per occurrence in the history.",
    low=-2.0, high=2.0, off="0",
)
PRESENCE = Parameter(
    "presence_penalty", "float", 0.0,
    "Subtracted from the logit of every token that occurs in the history.",
    low=-2.0, high=2.0, off="0",
)

_PAPER_COUNT = "OpenAI API frequency/presence penalties (as implemented in vLLM and llama.cpp)"

def token_counts(history: torch.Tensor, vocab_size: int) -> torch.Tensor:
    """``[rows, V]`` float32 occurrence counts from a ``[rows, L]`` history padded with -1."""
    rows = history.shape[0]
    index = torch.where(history >= 0, history, torch.full_like(history, vocab_size))
    counts = torch.zeros(rows, vocab_size + 1, dtype=torch.float32, device=history.device)
    counts.scatter_add_(1, index, torch.ones_like(index, dtype=torch.float32))
    return counts[:, :vocab_size]


def apply_penalties(logits: torch.Tensor, counts: torch.Tensor, repetition: torch.Tensor,
                    frequency: torch.Tensor, presence: torch.Tensor) -> torch.Tensor:
    """Apply the three penalties; each parameter tensor is ``[rows, 1]`` (neutral values are no-ops)."""
    seen = counts > 0
    scaled = torch.where(logits > 0, logits / repetition, logits * repetition)
    logits = torch.where(seen, scaled, logits)
    return logits - frequency * counts - presence * seen.to(logits.dtype)


def process(logits: torch.Tensor, rows: RowParams) -> torch.Tensor:
    """The three penalties on the rows that switch any of them on (a neutral one changes nothing)."""
    counts = token_counts(_padded(rows.histories, logits.device), logits.shape[-1])
    return apply_penalties(logits, counts, rows.float("repetition_penalty"), rows.float("frequency_penalty"),
                           rows.float("presence_penalty"))


def _padded(histories: list[tuple[int, ...]], device: torch.device) -> torch.Tensor:
    """``[rows, L]`` int64 token histories, padded with -1."""
    longest = max((len(h) for h in histories), default=0)
    padded = torch.full((len(histories), max(longest, 1)), -1, dtype=torch.int64)
    for row, history in enumerate(histories):
        if history:
            padded[row, : len(history)] = torch.tensor(history, dtype=torch.int64)
    return padded.to(device)


REPETITION_PENALTY = Strategy(
    name="repetition_penalty",
    stage=Stage.PENALTY,
    summary="Scale down logits of tokens already generated (divide if > 0, multiply if < 0).",
    paper="Keskar et al., CTRL: A Conditional Transformer Language Model for Controllable Generation, "
    "arXiv 1909.05858",
    parameters=(REPETITION,),
    is_active=lambda p: p.repetition_penalty != 1.0,
    process=process,
)
FREQUENCY_PENALTY = Strategy(
    name="frequency_penalty",
    stage=Stage.PENALTY,
    summary="Subtract frequency * count(token in history).",
    paper=_PAPER_COUNT,
    parameters=(FREQUENCY,),
    is_active=lambda p: p.frequency_penalty != 0.0,
    process=process,
)
PRESENCE_PENALTY = Strategy(
    name="presence_penalty",
    stage=Stage.PENALTY,
    summary="Subtract presence once for every token present in the history.",
    paper=_PAPER_COUNT,
    parameters=(PRESENCE,),
    is_active=lambda p: p.presence_penalty != 0.0,
    process=process,
)
