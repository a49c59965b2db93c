"""Statistical top-k: a sort-free approximate top-k threshold from the row's mean and std.

You et al., "Spark Transformer: Reactivating Sparsity in FFN and Attention",
arXiv 2506.06644, introduce it for activation sparsity: ``theta = mean + std * Phi^-1(1 - k/d)``.
As a sampler filter (samplerd's reading, the paper's estimator details being unverified):
mean and population std over the finite logits, ``d`` = number of finite logits, keep
``z >= theta``, always keep the argmax, ``k >= d`` keeps everything. The kept count is ~k only
for Gaussian logits; real logits have a heavy upper tail, so the realised count is reported
in the row statistics.
"""

from __future__ import annotations

import torch

from samplerd.sampling.declarations import Parameter, Stage, Strategy
from samplerd.sampling.strategies.top_n_sigma import finite_mean_std

STATISTICAL_TOP_K = Parameter(
    "statistical_top_k", "int", 0, "Approximate k: threshold mean + std * Phi^-1(1 - k/d).",
    low=0, high=2**31 - 1, off="0",
)


def keep(dist, rows) -> torch.Tensor:
    mean, std = finite_mean_std(dist)
    if dist.may_have_removed:
        count = dist.finite.sum(dim=-1, keepdim=True).to(torch.float32)
    else:
        count = torch.full_like(mean, dist.logits.shape[-1])
    share = rows.float("statistical_top_k") / count
    theta = mean + std * torch.special.ndtri((1.0 - share).clamp(min=0.0))
    # k >= |F| keeps everything (Phi^-1(0) = -inf; written out so that std = 0 gives no NaN).
    theta = torch.where(share >= 1.0, torch.full_like(theta, float("-inf")), theta)
    return dist.logits >= theta


STRATEGY = Strategy(
    name="statistical_top_k",
    stage=Stage.TRUNCATION,
    summary="Keep z >= mean + std * Phi^-1(1 - k/d) (sort-free, approximately k tokens).",
    paper="You et al., Spark Transformer: Reactivating Sparsity in FFN and Attention, arXiv 2506.06644",
    parameters=(STATISTICAL_TOP_K,),
    is_active=lambda p: p.statistical_top_k > 0,
    keep=keep,
    keeps_argmax=False,
)
