"""What :func:`sampling.sample` returns."""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class SampleStats:
    """Per-row statistics, computed in the same pass as the draw (nats throughout).

    ``full`` is the distribution the truncations see (after penalties, logit bias and
    temperature; temperature 1 for greedy rows); ``truncated`` is the final one.
    """

    entropy: torch.Tensor  # [B] Shannon entropy of the full distribution
    varentropy: torch.Tensor  # [B] Var[-ln p] under the full distribution
    truncated_entropy: torch.Tensor  # [B] entropy of the final (truncated, renormalised) distribution
    kept_tokens: torch.Tensor  # [B] int64, tokens left after truncation
    kept_mass: torch.Tensor  # [B] full-distribution mass of the kept tokens (Z; -ln Z is the distortion)
    top_k_entropy: torch.Tensor  # [B] entropy of the renormalised top-k (k = stats_top_k) of the full distribution
    top_k_mass: torch.Tensor  # [B] full-distribution mass of its top k tokens
    surprise: torch.Tensor  # [B, n] -ln p_full(chosen token)


@dataclass(frozen=True)
class SampleOutput:
    """Sampled tokens with their log-probabilities and statistics.

    Rows asking for fewer samples than the batch's largest ``n`` are padded with token id -1
    and log-probability NaN.
    """

    token_ids: torch.Tensor  # int64 [B, n]
    logprobs: torch.Tensor  # float32 [B, n], under the final distribution
    stats: SampleStats
    strategies: list[str]  # per row, the strategy label
    mirostat_mu: torch.Tensor  # float64 [B], mu after this step (NaN where mirostat is off)
    top_logprobs: tuple[torch.Tensor, torch.Tensor] | None = None  # (ids int64 [B, K], logprobs float32 [B, K])
