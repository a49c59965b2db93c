"""Greedy decoding, temperature, and dynamic temperature.

Temperature divides the logits, ``p = softmax(z / T)`` (the softmax temperature of Ackley,
Hinton and Sejnowski, "A Learning Algorithm for Boltzmann Machines", 1985). ``T`` below
1e-5 means greedy decoding: the first maximal logit before temperature, as vLLM and
llama.cpp do. Dynamic temperature (llama.cpp's ``temp-ext``, after kalomaze's proposal)
picks ``T`` per row from the entropy of the distribution:
``T_dyn = T_min + (T_max - T_min) * (H / ln V) ** exponent`` with
``T_min = max(0, T - range)`` and ``T_max = T + range``.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from samplerd.sampling.declarations import Parameter, Stage, Strategy
from samplerd.sampling.distribution import Distribution
from samplerd.sampling.rows import RowParams

GREEDY_BELOW = 1e-5

TEMPERATURE = Parameter(
    "temperature", "float", 1.0,
    "Divides the logits before truncation; below 1e-5 means greedy (argmax before temperature).",
    low=0.0, off="1 (no change); 0 selects greedy decoding",
)
DYNATEMP_RANGE = Parameter(
    "dynatemp_range", "float", 0.0,
    "Dynamic temperature: T varies in [T - range, T + range] with the row's entropy.",
    low=0.0, off="0",
)
DYNATEMP_EXPONENT = Parameter(
    "dynatemp_exponent", "float", 1.0,
    "Dynamic temperature: exponent applied to the normalised entropy H / ln V.",
    low=0.0, low_inclusive=False, off="(only used when dynatemp_range > 0)",
)


def is_greedy(p) -> bool:
    return p.temperature < GREEDY_BELOW


def may_come_out_greedy(p) -> bool:
    """Whether ``p``'s dynamic temperature can fall below :data:`GREEDY_BELOW` (its lowest value,
    ``max(0, T - range)`` in float32 as the kernel computes it, with a margin), decided on the host."""
    if p.dynatemp_range <= 0 or is_greedy(p):
        return False
    lowest = max(np.float32(p.temperature) - np.float32(p.dynatemp_range), np.float32(0.0))
    return bool(lowest < 2 * GREEDY_BELOW)


def dynamic_temperature(logits: torch.Tensor, base: torch.Tensor, spread: torch.Tensor,
                        exponent: torch.Tensor) -> torch.Tensor:
    """Per-row dynamic temperature ``[rows, 1]`` from the entropy of ``softmax(logits)``.

    ``H_max = ln V`` counts every vocabulary entry, masked ones included, as llama.cpp does.
    """
    vocab = logits.shape[-1]
    if vocab <= 1:
        return base
    entropy = Distribution(logits).entropy
    normalised = (entropy / math.log(vocab)).clamp_(0.0, 1.0)
    low = (base - spread).clamp(min=0.0)
    high = base + spread
    return low + (high - low) * normalised.pow(exponent)


def plain_temperature(logits: torch.Tensor, rows: RowParams) -> torch.Tensor:
    """Each row's ``temperature`` parameter, ``[rows, 1]``."""
    return rows.float("temperature")


def entropy_scaled_temperature(logits: torch.Tensor, rows: RowParams) -> torch.Tensor:
    """Each row's dynamic temperature, ``[rows, 1]`` (see :func:`dynamic_temperature`)."""
    return dynamic_temperature(logits, rows.float("temperature"), rows.float("dynatemp_range"),
                               rows.float("dynatemp_exponent"))


GREEDY = Strategy(
    name="greedy",
    stage=Stage.TEMPERATURE,
    summary="The most probable token (first index on ties); temperature = 0.",
    paper="Greedy decoding (argmax); ties resolved to the first maximal index as torch.argmax and llama.cpp do",
    parameters=(),
    is_active=is_greedy,
)

TEMPERATURE_STRATEGY = Strategy(
    name="temperature",
    stage=Stage.TEMPERATURE,
    summary="Pure sampling from softmax(z / T).",
    paper="Ackley, Hinton, Sejnowski, A Learning Algorithm for Boltzmann Machines, Cognitive Science 1985",
    parameters=(TEMPERATURE,),
    is_active=lambda p: not is_greedy(p),
    temperature_of=plain_temperature,
)

DYNATEMP = Strategy(
    name="dynatemp",
    stage=Stage.TEMPERATURE,
    summary="Entropy-scaled temperature: T_min + (T_max - T_min) * (H / ln V) ** exponent.",
    paper="llama.cpp temp-ext sampler (dynamic temperature, kalomaze, llama.cpp PR #4972)",
    parameters=(DYNATEMP_RANGE, DYNATEMP_EXPONENT),
    is_active=lambda p: p.dynatemp_range > 0 and not is_greedy(p),
    temperature_of=entropy_scaled_temperature,
)
