"""Counter-based random numbers: each uniform is a pure function of (seed, step, stream, index).

A seeded row must give the same tokens whatever else shares its batch, on any device and
after a restart, so no stateful generator is shared by the batch. Each number is SplitMix64's
finaliser applied to a key built from the counters (the construction of Steele, Lea and
Flood, "Fast Splittable Pseudorandom Number Generators", OOPSLA 2014, used as a hash of the
counter, as in counter-based generators such as Philox). Only a handful of numbers are needed
per row (one per draw), so they are computed with NumPy's wrapping uint64 arithmetic.
"""

from __future__ import annotations

import os

import numpy as np

_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_MUL1 = np.uint64(0xBF58476D1CE4E5B9)
_MUL2 = np.uint64(0x94D049BB133111EB)

# Independent streams of numbers for one (seed, step): draws, XTC's coin, path selection.
STREAM_DRAW = 0
STREAM_XTC = 1
STREAM_PATHS = 2


def _mix(x: np.ndarray) -> np.ndarray:
    x = (x ^ (x >> np.uint64(30))) * _MUL1
    x = (x ^ (x >> np.uint64(27))) * _MUL2
    return x ^ (x >> np.uint64(31))


def uniforms(seeds: np.ndarray, steps: np.ndarray, stream: int, count: int) -> np.ndarray:
    """``[rows, count]`` float64 uniforms in ``[0, 1)``, keyed per row by (seed, step, stream, index).

    ``seeds`` and ``steps`` are ``[rows]`` integer arrays (seeds taken modulo 2**64).
    """
    with np.errstate(over="ignore"):
        seed = np.asarray(seeds).astype(np.uint64)
        step = np.asarray(steps).astype(np.uint64)
        key = _mix(seed * _GOLDEN + np.uint64(0x632BE59BD9B4E019))
        key = _mix(key ^ (step * _GOLDEN + np.uint64(stream + 1)))
        index = np.arange(count, dtype=np.uint64)[None, :]
        bits = _mix(key[:, None] + (index + np.uint64(1)) * _GOLDEN)
    return (bits >> np.uint64(11)).astype(np.float64) * (1.0 / 9007199254740992.0)


def fresh_seeds(count: int) -> np.ndarray:
    """Seeds for rows that asked for none: fresh randomness from the operating system."""
    return np.frombuffer(os.urandom(8 * count), dtype=np.uint64).copy()
