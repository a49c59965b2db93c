"""Mirostat v1 and v2: truncation that steers the observed surprise towards a target tau.

Basu, Ramachandran, Keskar, Varshney, "Mirostat: A Neural Text Decoding Algorithm that
Directly Controls Perplexity", ICLR 2021, arXiv 2007.14966. Surprise is in bits. Each
sequence carries ``mu`` (initially ``2 * tau``); after each draw ``mu -= eta * (s - tau)``,
where ``s = -log2 p(token)`` under the untruncated distribution (the paper's definition;
llama.cpp uses the truncated, renormalised probability instead).

* v1 (the paper's Algorithm 1): estimate the Zipf exponent ``s_hat`` by least squares over
  the top m = 100 probabilities, ``k = (eps_hat * 2^mu / (1 - N^-eps_hat))^(1/s_hat)`` with
  ``eps_hat = s_hat - 1`` and N the vocabulary size, in float64; then top-k with
  ``round(k) + 1`` as in the authors' code, clamped to [1, finite tokens]; a non-finite or
  non-positive ``s_hat`` or ``k`` means "all finite tokens".
* v2 (llama.cpp's "Mirostat 2.0"): keep ``p >= 2^-mu`` (at least the argmax).

Mirostat replaces the other truncations: combining it with one is an error.
"""

from __future__ import annotations

import math

import torch

from samplerd.sampling.declarations import Parameter, Stage, Strategy
from samplerd.sampling.selection import kth_largest
from samplerd.sampling.topk import top_values

ZIPF_TOKENS = 100

MODE = Parameter(
    "mirostat", "int", 0, "Mirostat version: 1 or 2 (replaces the other truncations).",
    choices=(0, 1, 2), off="0",
)
TAU = Parameter(
    "mirostat_tau", "float", 5.0, "Target surprise in bits.", low=0.0, high=100.0, low_inclusive=False,
    off="(only used when mirostat > 0)",
)
ETA = Parameter(
    "mirostat_eta", "float", 0.1, "Learning rate of mu.", low=0.0, high=10.0, low_inclusive=False,
    off="(only used when mirostat > 0)",
)
_PAPER = ("Basu et al., Mirostat: A Neural Text Decoding Algorithm that Directly Controls Perplexity, "
          "ICLR 2021, arXiv 2007.14966")


def zipf_exponent(sorted_probs: torch.Tensor) -> torch.Tensor:
    """Least-squares Zipf exponent ``s_hat`` (float64 ``[rows, 1]``) from descending probabilities."""
    probs = sorted_probs.double()
    ranks = torch.arange(1, probs.shape[-1], dtype=torch.float64, device=probs.device)
    t = torch.log((ranks + 1) / ranks)
    b = torch.log(probs[:, :-1] / probs[:, 1:])
    usable = (probs[:, :-1] > 0) & (probs[:, 1:] > 0)
    tb = torch.where(usable, t * b, torch.zeros_like(b)).sum(dim=-1, keepdim=True)
    tt = torch.where(usable, t * t, torch.zeros_like(b)).sum(dim=-1, keepdim=True)
    return tb / tt


def v1_k(s_hat: torch.Tensor, mu: torch.Tensor, vocab: int, finite_count: torch.Tensor) -> torch.Tensor:
    """Mirostat v1's k per row, ``[rows, 1]`` int64 in [1, finite_count]."""
    eps_hat = s_hat - 1.0
    small = eps_hat.abs() < 1e-9
    safe_eps = torch.where(small, torch.ones_like(eps_hat), eps_hat)
    scale = torch.where(small, 1.0 / torch.full_like(eps_hat, math.log(vocab)),
                        safe_eps / (1.0 - vocab ** (-safe_eps)))
    k = (scale * torch.pow(2.0, mu)).pow(1.0 / s_hat)
    finite_count = finite_count.double()
    usable = torch.isfinite(s_hat) & (s_hat > 0) & torch.isfinite(k) & (k > 0)
    k = torch.where(usable, torch.round(k) + 1.0, finite_count)
    return torch.minimum(k.clamp(min=1.0), finite_count).long()


def keep_v1(dist, rows) -> torch.Tensor:
    top = dist.log_prob_of(top_values(dist.logits, ZIPF_TOKENS)[0]).exp()
    finite_count = dist.finite.sum(dim=-1, keepdim=True)
    k = v1_k(zipf_exponent(top), rows.mirostat_mu, dist.logits.shape[-1], finite_count)
    return dist.logits >= kth_largest(dist.logits, k)


def keep_v2(dist, rows) -> torch.Tensor:
    log2_probs = dist.log_probs / math.log(2.0)
    return log2_probs >= -rows.mirostat_mu.float()


def next_mu(mu: torch.Tensor, surprise_bits: torch.Tensor, tau: torch.Tensor, eta: torch.Tensor) -> torch.Tensor:
    """The controller's update ``mu - eta * (surprise - tau)``."""
    return mu - eta * (surprise_bits - tau)


MIROSTAT_V1 = Strategy(
    name="mirostat_v1",
    stage=Stage.TRUNCATION,
    summary="Top-k with k from a Zipf fit, steered so surprise tracks tau (stateful mu).",
    paper=_PAPER,
    parameters=(MODE, TAU, ETA),
    is_active=lambda p: p.mirostat == 1,
    keep=keep_v1,
)
MIROSTAT_V2 = Strategy(
    name="mirostat_v2",
    stage=Stage.TRUNCATION,
    summary="Keep p >= 2^-mu, steered so surprise tracks tau (stateful mu).",
    paper=_PAPER + "; v2 as in llama.cpp's mirostat_v2 sampler",
    parameters=(MODE, TAU, ETA),
    is_active=lambda p: p.mirostat == 2,
    keep=keep_v2,
    keeps_argmax=False,
)
