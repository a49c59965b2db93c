"""Entropy-adaptive top-k: k grows with the row's entropy along a sigmoid.

From PURE ("Perceive, Understand and Restore: Real-World Image Super-Resolution with
Autoregressive Multimodal Generative Models"; code: nonwhy/PURE, logit_processor_3dim.py):
``k = clamp(round(k_min + (k_max - k_min) * sigmoid(clip(H, 0, 10) - 5)), k_min, k_max)``,
H in nats. samplerd uses each row's own entropy (PURE averages it over the batch) and keeps
every token tied with the k-th.
"""

from __future__ import annotations

import torch

from samplerd.sampling.declarations import Parameter, Stage, Strategy
from samplerd.sampling.selection import kth_largest

CENTRE_NATS = 5.0
ENTROPY_CLIP_NATS = 10.0

K_MAX = Parameter(
    "entropy_top_k", "int", 0, "k_max of entropy-adaptive top-k (k reached at high entropy).",
    low=0, high=2**31 - 1, off="0",
)
K_MIN = Parameter(
    "entropy_top_k_min", "int", 1, "k_min of entropy-adaptive top-k (k at zero entropy).",
    low=1, high=2**31 - 1, off="(only used when entropy_top_k > 0)",
)


def adaptive_k(entropy: torch.Tensor, k_min: torch.Tensor, k_max: torch.Tensor) -> torch.Tensor:
    """Per-row k (``[rows, 1]`` int64) from entropy in nats."""
    level = torch.sigmoid(entropy.clamp(0.0, ENTROPY_CLIP_NATS) - CENTRE_NATS)
    k = torch.round(k_min + (k_max - k_min) * level)
    return torch.minimum(torch.maximum(k, k_min), k_max).long()


def keep(dist, rows) -> torch.Tensor:
    k = adaptive_k(dist.entropy, rows.float("entropy_top_k_min"), rows.float("entropy_top_k"))
    return dist.logits >= kth_largest(dist.logits, k, max(p.entropy_top_k for p in rows.params))


STRATEGY = Strategy(
    name="entropy_top_k",
    stage=Stage.TRUNCATION,
    summary="Top-k with k = k_min + (k_max - k_min) * sigmoid(H - 5), per row.",
    paper="Perceive, Understand and Restore: Real-World Image Super-Resolution with Autoregressive "
    "Multimodal Generative Models (PURE), entropy-based top-k",
    parameters=(K_MAX, K_MIN),
    is_active=lambda p: p.entropy_top_k > 0,
    keep=keep,
)
