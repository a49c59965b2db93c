"""What both fused CPU paths (:mod:`samplerd.sampling.fused`, :mod:`samplerd.sampling.fused_general`)
do first: apply the rows' processors (:mod:`samplerd.sampling.fused_processors`), check the logits,
divide by the temperature, find the maxima and take torch's ``exp`` of the shifted logits, into
a per-thread workspace that the kernels then read as a
:class:`~samplerd.sampling.kernels.records.Prepared`.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence

import numpy as np
import torch

from samplerd.sampling import fused_processors
from samplerd.sampling.draw import block_size
from samplerd.sampling.kernels.common import _CHUNK
from samplerd.sampling.kernels.prepare import _prepare, _prepare_one_row, _zero_masked_rows
from samplerd.sampling.kernels.records import Prepared
from samplerd.sampling.rng import fresh_seeds
from samplerd.sampling.selection import _NUM_BINS

_local = threading.local()


class Workspace:
    """The large per-row scratch arrays, kept per thread for the last batch shape (fresh
    large temporaries would fault their pages in again on every call)."""

    def __init__(self, rows: int, vocab: int) -> None:
        self.shape = (rows, vocab)
        self.z = np.empty((rows, vocab), dtype=np.float32)
        self.w = np.empty((rows, vocab), dtype=np.float32)
        self.bins = np.empty((rows, vocab), dtype=np.uint16)
        self.members = np.empty((rows, vocab), dtype=np.int32)
        self.index = np.empty(vocab, dtype=np.int64)
        self.scratch = np.empty(vocab, dtype=np.float32)
        self.groups = np.empty((vocab // 512 + 2, 64), dtype=np.float32)
        self.chunk_max = np.empty((rows, -(-vocab // _CHUNK)), dtype=np.float32)
        self.sums = np.empty((rows, _NUM_BINS), dtype=np.float32)
        self.block = block_size(vocab)
        self.small = np.empty((5, rows), dtype=np.float32)  # m, floors, protect, thresholds, totals
        self.stats = np.empty((rows, 5), dtype=np.float64)
        self.counts = np.empty((3, rows), dtype=np.int64)  # finite, member counts, chained rows


def workspace(rows: int, vocab: int) -> Workspace:
    """This thread's workspace for a ``[rows, vocab]`` batch (the last one's when it fits)."""
    space = getattr(_local, "workspace", None)
    if space is None or space.shape != (rows, vocab):
        space = _local.workspace = Workspace(rows, vocab)
    return space


def seeds(params: Sequence) -> np.ndarray:
    """Each row's seed, fresh ones for the rows without."""
    out = np.array([p.seed if p.seed is not None else 0 for p in params], dtype=np.uint64)
    unseeded = [i for i, p in enumerate(params) if p.seed is None]
    if unseeded:
        out[unseeded] = fresh_seeds(len(unseeded))
    return out


def processed(logits: torch.Tensor, params: Sequence, states, space: Workspace) -> np.ndarray:
    """The float32 logits after each row's penalties, DRY and logit bias: the caller's own
    (as numpy) when no row has any, else the workspace's copy."""
    return fused_processors.processed(logits.detach().float().contiguous().numpy(), params, states, space.z)


def maxima_and_weights(x: np.ndarray, divisors: np.ndarray, space: Workspace) -> tuple[Prepared, np.ndarray]:
    """``x / divisors``, its maxima and weights (torch's exp) into the workspace, and each row's
    status (:func:`samplerd.sampling.kernels.prepare._maxima`; the caller raises on bad rows)."""
    rows = x.shape[0]
    dividing = bool((divisors != 1).any())
    z = space.z if dividing else x
    m, finite = space.small[0], space.counts[0]
    status = np.empty(rows, dtype=np.int64)
    (_prepare if rows > 1 else _prepare_one_row)(x, divisors, z, m, space.chunk_max, space.w, dividing, status)
    torch.from_numpy(space.w).exp_()  # torch's vectorised exp: the general path's weights, bit for bit
    _zero_masked_rows(z, space.w, status, finite)
    return Prepared(z, space.w, m, space.chunk_max, finite), status


def first_pass(logits: torch.Tensor, x: np.ndarray, divisors: np.ndarray, space: Workspace) -> Prepared:
    """:func:`maxima_and_weights` of the processed logits ``x`` (:func:`processed`), raising
    :class:`~samplerd.sampling.errors.SamplingError` on the first bad row of ``logits``."""
    prepared, status = maxima_and_weights(x, divisors, space)
    fused_processors.check_prepared(status, logits, x is space.z)
    return prepared
