"""A row-batched softmax view of masked logits, computed lazily and shared between stages.

Several strategies need the same quantities of the current distribution (its maximum,
unnormalised weights, total mass, entropy); computing each once per stage keeps the number
of passes over the vocabulary small, which is what makes the kernels fast on a CPU.
"""

from __future__ import annotations

from functools import cached_property

import torch

# exp() leaves its vectorised fast path for inputs whose result is denormal or zero (and
# for -inf), costing 10-100x more per element on x86 CPUs. Shifted logits are clamped here
# for weights and entropy sums: exp(-87) ~ 1.6e-38 is still a normal float32. Removed
# tokens get weight exactly 0 separately; a kept token more than 87 nats below the maximum
# is counted with weight 1.6e-38 instead of its true (smaller) one, a change far below
# float32 resolution of any sum it enters. Decisions that compare log-probabilities use
# the raw logits, which are exact.
EXP_FLOOR = -87.0


def row_dot(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``(a * b).sum(-1, keepdim=True)`` without materialising the product."""
    return torch.linalg.vecdot(a, b).unsqueeze(-1)


class Distribution:
    """``softmax(logits)`` per row, where ``-inf`` marks a removed token.

    Every row must hold at least one finite logit. Per-row scalars have shape ``[rows, 1]``
    so they broadcast against ``[rows, V]``. ``may_have_removed=False`` promises that every
    logit is finite, which saves a masking pass.
    """

    def __init__(self, logits: torch.Tensor | None, row_max: torch.Tensor | None = None,
                 may_have_removed: bool = True) -> None:
        if logits is not None:
            self.__dict__["logits"] = logits
        self.may_have_removed = may_have_removed
        if row_max is not None:
            self.__dict__["max"] = row_max

    @cached_property
    def logits(self) -> torch.Tensor:
        """The logits, ``-inf`` for removed tokens (built on first use by :meth:`restricted`)."""
        parent_logits, keep = self._restricted_from
        return torch.where(keep, parent_logits, float("-inf"))

    @cached_property
    def max(self) -> torch.Tensor:
        """Largest logit of each row, ``[rows, 1]``."""
        return self.logits.amax(dim=-1, keepdim=True)

    @cached_property
    def shifted(self) -> torch.Tensor:
        """``logits - max`` clamped below at :data:`EXP_FLOOR` (finite everywhere)."""
        return torch.sub(self.logits, self.max).clamp_(min=EXP_FLOOR)

    @cached_property
    def finite(self) -> torch.Tensor:
        """Boolean mask of the tokens still in the distribution."""
        return self.logits > float("-inf")

    @cached_property
    def weights(self) -> torch.Tensor:
        """Unnormalised probabilities ``exp(logits - max)``; exactly 0 for removed tokens."""
        weights = self.shifted.exp()
        if self.may_have_removed:
            weights.masked_fill_(~self.finite, 0.0)
        return weights

    @cached_property
    def total(self) -> torch.Tensor:
        """Sum of the weights, ``[rows, 1]`` (at least 1: the maximum has weight 1)."""
        return self.weights.sum(dim=-1, keepdim=True)

    @cached_property
    def log_total(self) -> torch.Tensor:
        return self.total.log()

    @cached_property
    def probs(self) -> torch.Tensor:
        return self.weights / self.total

    @cached_property
    def _weighted_shifted(self) -> torch.Tensor:
        return self.weights * self.shifted

    @cached_property
    def mean_shifted(self) -> torch.Tensor:
        """``E_p[logits - max]``, ``[rows, 1]``."""
        return self._weighted_shifted.sum(dim=-1, keepdim=True) / self.total

    @cached_property
    def entropy(self) -> torch.Tensor:
        """Shannon entropy in nats, ``[rows, 1]``: ``ln Z - E_p[logits - max]``."""
        return (self.log_total - self.mean_shifted).clamp_(min=0.0)

    @cached_property
    def varentropy(self) -> torch.Tensor:
        """``Var_p[-ln p]`` in nats squared, ``[rows, 1]``."""
        second = row_dot(self._weighted_shifted, self.shifted) / self.total
        return (second - self.mean_shifted.square()).clamp_(min=0.0)

    def log_prob_of(self, logit_values: torch.Tensor) -> torch.Tensor:
        """Log-probability of tokens whose logits are ``logit_values`` (any trailing shape)."""
        return logit_values - self.max - self.log_total

    def restricted(self, keep: torch.Tensor, row_max: torch.Tensor | None = None) -> Distribution:
        """The renormalised distribution over ``keep``, reusing this one's shifted logits and
        weights instead of recomputing exp. ``keep`` must hold each row's maximum unless the
        caller passes the kept set's ``row_max`` (then the weights are rescaled to it).

        Its masked logits are only built if something asks for them.
        """
        child = Distribution(None, self.max if row_max is None else row_max)
        child._restricted_from = (self.logits, keep)
        child.__dict__["finite"] = keep
        if row_max is None:
            child.__dict__["shifted"] = self.shifted  # removed tokens only meet zero weights
            child.__dict__["weights"] = torch.where(keep, self.weights, 0.0)
        return child

    @cached_property
    def log_probs(self) -> torch.Tensor:
        """Exact log-probabilities from the raw logits; ``-inf`` for removed tokens."""
        return self.log_prob_of(self.logits)
