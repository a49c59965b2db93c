"""Top-H decoding: keep the most probable tokens while their partial entropy stays bounded.

Baghaei Potraghloo, Azizi, Kundu, Pedram, "Top-H Decoding: Adapting the Creativity and
Coherence with Bounded Entropy in Text Generation", arXiv 2509.02510 (NeurIPS 2025). As the
authors' code computes it, over the whole vocabulary (no top-100 window): rank 1 is always
kept; rank ``j`` is kept iff ``sum_{r <= j} -p_r ln p_r <= top_h * H(p)``. (The paper's
prose describes the renormalised entropy of the kept set; neither the authors' code nor
Hugging Face's implementation computes that, and samplerd follows the code.)
"""

from __future__ import annotations

import torch

from samplerd.sampling.declarations import Parameter, Stage, Strategy
from samplerd.sampling.selection import prefix_boundary

TOP_H = Parameter(
    "top_h", "float", 0.0, "Entropy budget alpha: keep ranks while partial entropy <= alpha * H.",
    low=0.0, high=1.0, off="0",
)


def keep(dist, rows) -> torch.Tensor:
    # float64 from the exact log-probabilities: near-deterministic rows put terms of 1e-40
    # into these sums, below float32's range, and the budget must use the same terms.
    log_probs = dist.log_probs.double()
    partial = torch.where(dist.finite, -log_probs.exp() * log_probs, torch.zeros_like(log_probs))
    budget = rows.float("top_h").double() * partial.sum(dim=-1, keepdim=True)
    # First rank whose partial sum exceeds the budget (W_j > budget <=> W_j >= next float up).
    over_budget = torch.nextafter(budget, torch.full_like(budget, 1e30))
    first_over = prefix_boundary(dist.logits, partial, over_budget, best=dist.max)
    above = dist.logits > first_over
    mass_above = torch.where(above, partial, torch.zeros_like(partial)).sum(dim=-1, keepdim=True)
    log_p_first = (first_over - dist.max - dist.log_total).double()
    partial_first = torch.where(torch.isfinite(log_p_first), -log_p_first.exp() * log_p_first,
                                torch.zeros_like(log_p_first))
    tie_group_fits = (mass_above + partial_first) <= budget
    kept = above | ((dist.logits == first_over) & tie_group_fits)
    return kept | (dist.logits >= dist.max)


STRATEGY = Strategy(
    name="top_h",
    stage=Stage.TRUNCATION,
    summary="Keep ranks while the partial sum of -p ln p stays <= top_h * H(p); rank 1 always.",
    paper="Baghaei Potraghloo et al., Top-H Decoding: Adapting the Creativity and Coherence with "
    "Bounded Entropy in Text Generation, arXiv 2509.02510",
    parameters=(TOP_H,),
    is_active=lambda p: p.top_h > 0.0,
    keep=keep,
)
