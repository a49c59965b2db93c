"""Optimal-k (Bregman) decoding: choose k per row by minimising a sparsity-regularised divergence.

Noarov, Mallick, Wang, Joshi, Sun, Xie, Yu, Dobriban, "Foundations of Top-k Decoding for
Language Models", arXiv 2505.19371 (NeurIPS 2025). For the primal KL divergence with
sparsity weight ``lambda`` the cost of keeping the top k is ``-ln P_k + lambda * k``, which
is discretely convex in k, so the best k is the first where the next increment is
non-negative: ``k* = min{k >= 1 : p_(k+1) <= (e^lambda - 1) * P_k}`` (samplerd's derivation
for the KL case; the paper's alpha-family renormalisation is not implemented). The first k
is found on a growing sorted prefix, so the common small-k case never sorts the vocabulary;
off the CPU, where growing the prefix would read a flag back to the host each time, the whole
row is sorted once.
"""

from __future__ import annotations

import torch

from samplerd.sampling.declarations import Parameter, Stage, Strategy
from samplerd.sampling.selection import kth_largest
from samplerd.sampling.topk import top_values

OPTIMAL_K = Parameter(
    "optimal_k", "float", 0.0, "Sparsity weight lambda of optimal-k decoding (larger keeps fewer tokens).",
    low=0.0, high=50.0, off="0",
)

_FIRST_PREFIX = 64


def optimal_k(dist, ratio: torch.Tensor) -> torch.Tensor:
    """``k*`` per row (``[rows, 1]`` int64) for ``p_(k+1) <= ratio * P_k``."""
    vocab = dist.logits.shape[-1]
    width = min(_FIRST_PREFIX, vocab) if dist.logits.device.type == "cpu" else vocab
    while True:
        top = dist.log_prob_of(top_values(dist.logits, min(width + 1, vocab))[0]).exp()
        whole_row = top.shape[-1] == vocab
        if whole_row:  # p_(V+1) = 0 closes every row
            top = torch.cat([top, torch.zeros_like(top[:, :1])], dim=-1)
        mass = top[:, :-1].cumsum(dim=-1)
        satisfied = top[:, 1:] <= ratio * mass
        if whole_row or bool(satisfied.any(dim=-1).all()):
            return satisfied.to(torch.int8).argmax(dim=-1, keepdim=True) + 1
        width = min(width * 8, vocab)


def keep(dist, rows) -> torch.Tensor:
    k = optimal_k(dist, torch.expm1(rows.float("optimal_k")))
    return dist.logits >= kth_largest(dist.logits, k)


STRATEGY = Strategy(
    name="optimal_k",
    stage=Stage.TRUNCATION,
    summary="Top-k with k* = min{k : p_(k+1) <= (e^lambda - 1) P_k} (primal KL Bregman decoding).",
    paper="Noarov et al., Foundations of Top-k Decoding for Language Models, arXiv 2505.19371",
    parameters=(OPTIMAL_K,),
    is_active=lambda p: p.optimal_k > 0.0,
    keep=keep,
)
