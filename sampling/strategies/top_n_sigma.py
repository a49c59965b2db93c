"""Top-nσ: keep tokens whose logit is within n standard deviations of the maximum.

Tang, Ren, Luo, Wang, Zhao, Zhou, Wen, "Top-nσ: Not All Logits Are You Need",
arXiv 2411.07641 (ACL 2025). llama.cpp's reading: the population standard deviation over
the finite logits, keep ``z >= max - n * sigma``. The kept set does not depend on
temperature (both sides scale by 1/T). n <= 0 switches it off.
"""

from __future__ import annotations

import torch

from samplerd.sampling.declarations import Parameter, Stage, Strategy

TOP_N_SIGMA = Parameter(
    "top_n_sigma", "float", 0.0, "Keep logits >= max - n * std (population std over finite logits).",
    low=-1e9, high=1e9, off="<= 0",
)


def finite_mean_std(dist) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and population standard deviation over each row's finite logits, ``[rows, 1]`` each."""
    logits = dist.logits
    if not dist.may_have_removed:
        variance, mean = torch.var_mean(logits, dim=-1, correction=0, keepdim=True)
        return mean, variance.sqrt()
    finite = dist.finite
    count = finite.sum(dim=-1, keepdim=True).to(logits.dtype)
    values = torch.where(finite, logits, torch.zeros_like(logits))
    mean = values.sum(dim=-1, keepdim=True) / count
    centred = torch.where(finite, logits - mean, torch.zeros_like(logits))
    std = (centred.square().sum(dim=-1, keepdim=True) / count).sqrt()
    return mean, std


def keep(dist, rows) -> torch.Tensor:
    _, std = finite_mean_std(dist)
    return dist.logits >= dist.max - rows.float("top_n_sigma") * std


STRATEGY = Strategy(
    name="top_n_sigma",
    stage=Stage.TRUNCATION,
    summary="Keep z >= max - n * sigma over the finite logits (temperature-invariant).",
    paper="Tang et al., Top-nσ: Not All Logits Are You Need, arXiv 2411.07641",
    parameters=(TOP_N_SIGMA,),
    is_active=lambda p: p.top_n_sigma > 0.0,
    keep=keep,
)
