"""XTC ("Exclude Top Choices"): sometimes remove the most probable tokens to favour creativity.

p-e-w, text-generation-webui PR #6335 (2024), as in llama.cpp's ``xtc`` sampler: with
probability ``xtc_probability`` (a seeded coin per row and step), every token with
``p >= xtc_threshold`` is removed except the least probable of them (with its tie group),
provided at least two tokens reach the threshold and at least ``min_tokens_to_keep`` tokens
remain. A threshold above 0.5 can never be reached by two tokens, so it switches XTC off.
"""

from __future__ import annotations

import torch

from samplerd.sampling.declarations import Parameter, Stage, Strategy
from samplerd.sampling.rng import STREAM_XTC

PROBABILITY = Parameter(
    "xtc_probability", "float", 0.0, "Chance per step that XTC removes the top choices.",
    low=0.0, high=1.0, off="0",
)
THRESHOLD = Parameter(
    "xtc_threshold", "float", 0.1, "Tokens with p >= threshold are the 'top choices'.",
    low=0.0, high=1.0, off="> 0.5",
)


def keep(dist, rows) -> torch.Tensor:
    coin = rows.uniforms(STREAM_XTC, 1).to(torch.float32) < rows.float("xtc_probability")
    # A removed token (logit -inf, weight 0) is no candidate, even for a threshold of 0.
    top_choice = dist.finite & (dist.weights >= rows.float("xtc_threshold") * dist.total)
    least_top = torch.where(top_choice, dist.logits, torch.full_like(dist.logits, float("inf")))
    least_top = least_top.amin(dim=-1, keepdim=True)
    survivors = top_choice & (dist.logits == least_top)
    removed = (top_choice.sum(dim=-1, keepdim=True) - survivors.sum(dim=-1, keepdim=True))
    remaining = dist.finite.sum(dim=-1, keepdim=True) - removed
    applies = coin & (top_choice.sum(dim=-1, keepdim=True) >= 2) & (remaining >= rows.min_keep)
    return ~(applies & top_choice & ~survivors)


STRATEGY = Strategy(
    name="xtc",
    stage=Stage.TRUNCATION,
    summary="With probability xtc_probability, drop every token with p >= threshold but the least likely.",
    paper="p-e-w, Exclude Top Choices (XTC), text-generation-webui PR #6335 (2024); llama.cpp xtc sampler",
    parameters=(PROBABILITY, THRESHOLD),
    is_active=lambda p: p.xtc_probability > 0.0 and p.xtc_threshold <= 0.5,
    keep=keep,
    keeps_argmax=False,
    own_min_keep=True,
)
