"""Path-aware top-p: nucleus sampling over several live paths, weighted by path probability.

From Li and Li, "Analysis on Riemann Hypothesis with Cross Entropy Optimization and
Reasoning", arXiv 2409.19790, which proposes choosing the next token "based on accumulated
path probabilities among multiple top-k chain of thoughts paths" by combining top-p sampling
with a beam of width k. The paper gives no algorithm statement; samplerd implements this
reading (docs/semantics.md, "Path-aware top-p"; our construction): each of the k live paths ``b`` with
log-probability ``L_b`` proposes the tokens of its own nucleus (``top_p``, after the rest of
the pipeline); a candidate ``(b, x)`` scores ``L_b + ln p_b(x)``; a global nucleus of mass
``path_top_p`` is taken over the pooled candidates, and k of them are drawn without
replacement in proportion to their path probability (Gumbel-top-k: Kool, van Hoof, Welling,
"Stochastic Beams and Where to Find Them", ICML 2019). With k = 1 and ``path_top_p = 1`` it
is ordinary nucleus sampling. The paths of a sequence live in a decoding session; this
module holds the per-step math.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from samplerd.sampling.declarations import Parameter, Stage, Strategy
from samplerd.sampling.rng import STREAM_PATHS, device_uniforms
from samplerd.sampling.transfer import upload

BEAMS = Parameter(
    "path_beams", "int", 1, "Live paths per sequence for path-aware top-p (sessions only).",
    low=1, high=16, off="1",
)
PATH_TOP_P = Parameter(
    "path_top_p", "float", 1.0, "Mass of the global nucleus over pooled path candidates.",
    low=0.0, high=1.0, low_inclusive=False, off="1",
)

STRATEGY = Strategy(
    name="path_top_p",
    stage=Stage.TRUNCATION,
    summary="Nucleus per path, global nucleus over accumulated path probability, k paths kept.",
    paper="Li and Li, Analysis on Riemann Hypothesis with Cross Entropy Optimization and Reasoning, "
    "arXiv 2409.19790 (samplerd's reading: docs/semantics.md)",
    parameters=(BEAMS, PATH_TOP_P),
    is_active=lambda p: p.path_beams > 1,
)


@dataclass(frozen=True)
class PathStep:
    """The k paths chosen at one step: which path each extends, the token, the new log-probability."""

    parent: torch.Tensor  # int64 [k], index into the previous paths
    token: torch.Tensor  # int64 [k]
    path_logprob: torch.Tensor  # float64 [k]
    token_logprob: torch.Tensor  # float32 [k], ln p_b(x) of the chosen token on its path


def path_aware_step(
    filtered_logits: torch.Tensor,
    path_logprobs: torch.Tensor,
    beams: int,
    path_top_p: float,
    seed: int,
    step: int,
) -> PathStep:
    """One step of path-aware top-p for one sequence.

    Args:
        filtered_logits: ``[paths, V]`` output of :func:`sampling.filter_logits` for each live
            path (temperature applied, each path's nucleus kept, the rest ``-inf``).
        path_logprobs: ``[paths]`` accumulated log-probability of each live path.
        beams: how many paths to keep (k).
        path_top_p: mass of the global nucleus over the pooled candidates.
        seed, step: key of the counter-based random numbers (reproducible per sequence).
    """
    logits = filtered_logits.float()
    log_probs = torch.log_softmax(logits, dim=-1)
    if path_logprobs.device != logits.device:
        path_logprobs = upload(path_logprobs, logits.device)
    scores = path_logprobs.double()[:, None] + log_probs.double()
    flat = scores.reshape(-1)
    pooled = torch.log_softmax(flat, dim=0)
    ranked = pooled.sort(descending=True).values
    sorted_mass = ranked.exp()
    before = sorted_mass.cumsum(0) - sorted_mass
    # the least candidate of the nucleus: the last rank whose mass before it is < path_top_p
    # (rank 0 always is); a gather, not a boolean mask, so nothing is read back
    boundary = ranked.gather(0, (before < path_top_p).sum(0, keepdim=True) - 1)
    eligible = (pooled >= boundary) & torch.isfinite(pooled)
    noise = device_uniforms(np.array([seed]), np.array([step]), STREAM_PATHS, flat.numel(), pooled.device)[0]
    gumbel = -torch.log(-torch.log(noise.clamp(min=1e-300)))
    keys = torch.where(eligible, pooled + gumbel, torch.full_like(pooled, float("-inf")))
    count = min(beams, int(eligible.sum().item()))  # the output's size: the step's one host read
    chosen = keys.topk(count).indices
    vocab = logits.shape[-1]
    parent, token = chosen // vocab, chosen % vocab
    return PathStep(parent=parent, token=token, path_logprob=scores.reshape(-1)[chosen],
                    token_logprob=log_probs[parent, token])
