"""Path-aware top-p steps on a sampler actor: one :class:`~samplerd.workers.batch.PathGroup` at a time.

Each job is one path-aware sequence of a ``SampleStream`` session at one step: its live paths'
logits, parameters, states and accumulated log-probabilities. The group's rows go through one
``sampling.filter_logits`` call (each path filtered with the sequence's parameters, path-aware
top-p itself switched off), then each sequence's ``path_aware_step`` pools its paths'
candidates and keeps ``path_beams`` of them: exactly the library's answer, computed beside
the batch's other groups instead of in the front end.
"""

from __future__ import annotations

import dataclasses
import time

import torch

from samplerd.sampling import filter_logits
from samplerd.sampling.strategies.path_top_p import path_aware_step
from samplerd.workers.batch import PathChoice, PathGroup, PathGroupResult, PathJob, RowError, host_arrays

#: The strategy label of path-aware steps (metrics).
PATH_STRATEGY = "path_top_p"


def run_path_group(logits: torch.Tensor, group: PathGroup) -> PathGroupResult:
    """Every job of ``group``, ``logits`` being its rows stacked (``[paths of all jobs, V]``).
    A job that fails gets its :class:`~samplerd.workers.batch.RowError`; the others are unaffected."""
    started = time.perf_counter()
    params, steps, states = [], [], []
    for job in group.jobs:
        per_path = _per_path(job)
        for state in job.states:
            params.append(per_path)
            steps.append(job.step)
            states.append(state)
    try:
        filtered = filter_logits(logits, params, steps, states)
    except Exception:  # some job's rows are at fault: filter each job alone, below
        filtered = None
    choices: list[PathChoice | RowError] = []
    start = 0
    for job in group.jobs:
        stop = start + len(job.states)
        try:
            rows = filtered[start:stop] if filtered is not None else filter_logits(
                logits[start:stop], _per_path(job), job.step, job.states)
            chosen = path_aware_step(rows, torch.tensor(job.path_logprobs, dtype=torch.float64),
                                     job.params.path_beams, job.params.path_top_p, job.seed, job.step)
            choices.append(PathChoice(*host_arrays([chosen.parent, chosen.token, chosen.path_logprob,
                                                    chosen.token_logprob])))
        except Exception as error:  # returned to the job as its answer
            choices.append(RowError.from_exception(error))
        start = stop
    return PathGroupResult(choices, time.perf_counter() - started)


def _per_path(job: PathJob):
    """The parameters each path is filtered with: the sequence's, path-aware top-p off."""
    return dataclasses.replace(job.params, path_beams=1, path_top_p=1.0)
