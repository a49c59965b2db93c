"""A batch's plan, built once before any stage runs: the per-row parameters, which rows each
stage runs on, and the flags that let the pipeline skip work (cf. vLLM's ``SamplingMetadata``).

The stages are the registry's declarations in its order (:data:`samplerd.sampling.registry.STRATEGIES`,
the one place the order is written), each with its kernel and the rows that switch it on; a
stage no row uses is not in the plan.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace

import numpy as np
import torch

from samplerd.sampling.declarations import Strategy
from samplerd.sampling.params import SamplingParams
from samplerd.sampling.registry import MIROSTATS, STRATEGIES
from samplerd.sampling.rng import fresh_seeds
from samplerd.sampling.rows import RowParams
from samplerd.sampling.state import SequenceState
from samplerd.sampling.strategies.temperature import GREEDY, is_greedy
from samplerd.sampling.transfer import upload


@dataclass(frozen=True)
class RowSet:
    """Some rows of a batch: their positions, the same as an index tensor (None when they are
    every row of the batch) and their parameters."""

    positions: list[int]
    index: torch.Tensor | None
    rows: RowParams


@dataclass(frozen=True)
class Step:
    """One stage of the batch: a declaration (the first, when several share its kernel) and
    the rows it runs on."""

    strategy: Strategy
    on: RowSet


@dataclass(frozen=True)
class BatchPlan:
    """Everything the stages need to know about a batch's rows, decided from its parameters."""

    rows: RowParams
    greedy: torch.Tensor  # bool [B]: rows whose temperature selects greedy decoding
    any_greedy: bool
    all_greedy: bool
    processes: tuple[Step, ...]  # penalties, logit bias
    temperatures: tuple[Step, ...]
    truncations: tuple[Step, ...]  # greedy rows left out
    mirostat: RowSet | None  # rows whose mu the draw updates

    def with_greedy(self, found: Sequence[bool]) -> BatchPlan:
        """The plan with the rows flagged in ``found`` (one host bool per row: their dynamic
        temperature came out greedy) greedy as well, and so left out of the truncations."""
        flags = [bool(now) or is_greedy(p) for now, p in zip(found, self.rows.params, strict=True)]
        greedy = upload(torch.tensor(flags), self.greedy.device)
        truncations = []
        for step in self.truncations:
            on = _row_set([i for i in step.on.positions if not flags[i]], self.rows)
            if on is not None:
                truncations.append(Step(step.strategy, on))
        return replace(self, greedy=greedy, any_greedy=True, all_greedy=all(flags), truncations=tuple(truncations))


def plan_batch(params: Sequence[SamplingParams], steps: Sequence[int],
               states: Sequence[SequenceState | None] | None, device: torch.device) -> BatchPlan:
    """The plan of a checked batch: one ``SamplingParams``, step and state (or None) per row."""
    seeds = np.array([p.seed if p.seed is not None else 0 for p in params], dtype=np.uint64)
    unseeded = [i for i, p in enumerate(params) if p.seed is None]
    if unseeded:
        seeds[unseeded] = fresh_seeds(len(unseeded))
    states = states if states is not None else [None] * len(params)
    rows = RowParams(params, seeds, np.asarray(steps, dtype=np.uint64), _initial_mu(params, states, device),
                     [state.history if state is not None else () for state in states], device)

    users: dict[str, list[int]] = {}
    for i, p in enumerate(params):
        for name in p.active_strategies():
            users.setdefault(name, []).append(i)
    greedy_rows = users.get(GREEDY.name, [])
    greedy_flags = [False] * len(params)
    for i in greedy_rows:
        greedy_flags[i] = True

    processes, temperatures, truncations = [], [], []
    for strategy, positions in _by_kernel(users):
        if strategy.keep is not None:
            positions = [i for i in positions if not greedy_flags[i]]
        found = _row_set(positions, rows)
        if found is None:
            continue
        kind = processes if strategy.process else temperatures if strategy.temperature_of else truncations
        kind.append(Step(strategy, found))
    return BatchPlan(
        rows=rows,
        greedy=upload(torch.tensor(greedy_flags), device),
        any_greedy=bool(greedy_rows),
        all_greedy=len(greedy_rows) == len(params),
        processes=tuple(processes),
        temperatures=tuple(temperatures),
        truncations=tuple(truncations),
        mirostat=_row_set(sorted({i for s in MIROSTATS for i in users.get(s.name, ())}), rows),
    )


def _by_kernel(users: dict[str, list[int]]) -> list[tuple[Strategy, list[int]]]:
    """The declarations with a kernel that some row switches on, in registry order, with those
    rows; declarations sharing a kernel merged into the first of them."""
    found: list[tuple[Strategy, list[int]]] = []
    for strategy in STRATEGIES:
        if strategy.kernel is None or strategy.name not in users:
            continue
        if found and found[-1][0].kernel is strategy.kernel:
            found[-1] = (found[-1][0], sorted(set(found[-1][1]) | set(users[strategy.name])))
        else:
            found.append((strategy, users[strategy.name]))
    return found


def _row_set(positions: list[int], rows: RowParams) -> RowSet | None:
    if not positions:
        return None
    if len(positions) == len(rows):
        return RowSet(positions, None, rows)
    index = upload(torch.tensor(positions), rows.device)
    return RowSet(positions, index, rows.subset(positions, index))


def _initial_mu(params: Sequence[SamplingParams], states: Sequence[SequenceState | None],
                device: torch.device) -> torch.Tensor:
    mu = []
    for p, state in zip(params, states, strict=True):
        known = state.mirostat_mu if state is not None else None
        mu.append(known if known is not None else 2.0 * p.mirostat_tau)
    return upload(torch.tensor(mu, dtype=torch.float64), device)[:, None]

