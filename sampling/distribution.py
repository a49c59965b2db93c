"""A row-batched softmax view of masked logits, computed lazily and shared between stages.

Several strategies need the same quantities of the current distribution (its maximum,
unnormalised weights, total mass, entropy); computing each once per stage keeps the number
of passes over the vocabulary small, which is what makes the kernels fast on a CPU.
"""

from __future__ import annotations

from functools import cached_property

import torch

# Shifted logits are clamped here so that products with zero weights stay finite
# (0 * -inf is NaN); exp(-1e4) underflows to exactly 0 in float32 and float64.
_FAR_BELOW = -1.0e4


class Distribution:
    """``softmax(logits)`` per row, where ``-inf`` marks a removed token.

    Every row must hold at least one finite logit. All quantities are float32 tensors;
    per-row scalars have shape ``[rows, 1]`` so they broadcast against ``[rows, V]``.
    """

    def __init__(self, logits: torch.Tensor, row_max: torch.Tensor | None = None) -> None:
        self.logits = logits
        if row_max is not None:
            self.__dict__["max"] = row_max

    @cached_property
    def max(self) -> torch.Tensor:
        """Largest logit of each row, ``[rows, 1]``."""
        return self.logits.amax(dim=-1, keepdim=True)

    @cached_property
    def shifted(self) -> torch.Tensor:
        """``logits - max``, with removed tokens clamped to a large finite negative value."""
        return (self.logits - self.max).clamp_(min=_FAR_BELOW)

    @cached_property
    def weights(self) -> torch.Tensor:
        """Unnormalised probabilities ``exp(logits - max)``; 0 for removed tokens."""
        return self.shifted.exp()

    @cached_property
    def total(self) -> torch.Tensor:
        """Sum of the weights, ``[rows, 1]`` (at least 1, since the max has weight 1)."""
        return self.weights.sum(dim=-1, keepdim=True)

    @cached_property
    def log_total(self) -> torch.Tensor:
        return self.total.log()

    @cached_property
    def probs(self) -> torch.Tensor:
        return self.weights / self.total

    @cached_property
    def finite(self) -> torch.Tensor:
        """Boolean mask of the tokens still in the distribution."""
        return self.logits > float("-inf")

    @cached_property
    def mean_shifted(self) -> torch.Tensor:
        """``E_p[logits - max]``, ``[rows, 1]``."""
        return (self.weights * self.shifted).sum(dim=-1, keepdim=True) / self.total

    @cached_property
    def entropy(self) -> torch.Tensor:
        """Shannon entropy in nats, ``[rows, 1]``: ``log Z - E_p[logits - max]``."""
        return (self.log_total - self.mean_shifted).clamp_(min=0.0)

    @cached_property
    def varentropy(self) -> torch.Tensor:
        """``Var_p[-log p]`` in nats squared, ``[rows, 1]``."""
        second = (self.weights * self.shifted.square()).sum(dim=-1, keepdim=True) / self.total
        return (second - self.mean_shifted.square()).clamp_(min=0.0)

    def log_prob_of(self, logit_values: torch.Tensor) -> torch.Tensor:
        """Log-probability of tokens whose logits are ``logit_values`` (any trailing shape)."""
        return logit_values - self.max - self.log_total

    def restricted(self, keep: torch.Tensor, keeps_argmax: bool) -> Distribution:
        """The renormalised distribution over ``keep``; reuses the max when the argmax stays."""
        masked = self.logits.masked_fill(~keep, float("-inf"))
        return Distribution(masked, self.max if keeps_argmax else None)
