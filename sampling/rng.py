"""Counter-based random numbers: each uniform is a pure function of (seed, step, stream, index).

A seeded row must give the same tokens whatever else shares its batch, on any device and
after a restart, so no stateful generator is shared by the batch. Each number is SplitMix64's
finaliser applied to a key built from the counters (the construction of Steele, Lea and
Flood, "Fast Splittable Pseudorandom Number Generators", OOPSLA 2014, used as a hash of the
counter, as in counter-based generators such as Philox). :func:`uniforms` computes them on the
host with NumPy's wrapping uint64 arithmetic; :func:`device_uniforms` computes the same bits
with torch int64 operations on the tensors' device (two's-complement products wrap as uint64
ones do; right shifts are made logical by masking), so a CUDA batch uploads only the seeds
and steps.
"""

from __future__ import annotations

import os

import numpy as np
import torch

from samplerd.sampling.transfer import upload

# The generator's constants, shared by every implementation of it (NumPy and torch here, numba
# in samplerd.sampling.kernels.draw): SplitMix64's increment and finaliser multipliers, the salt
# that keys a seed, and 2**-53, which turns the top 53 bits into a float64 in [0, 1).
GOLDEN = np.uint64(0x9E3779B97F4A7C15)
MUL1 = np.uint64(0xBF58476D1CE4E5B9)
MUL2 = np.uint64(0x94D049BB133111EB)
SEED_SALT = np.uint64(0x632BE59BD9B4E019)
UNIT = 1.0 / 9007199254740992.0

# Independent streams of numbers for one (seed, step): draws, XTC's coin, path selection.
STREAM_DRAW = 0
STREAM_XTC = 1
STREAM_PATHS = 2


def _mix(x: np.ndarray) -> np.ndarray:
    x = (x ^ (x >> np.uint64(30))) * MUL1
    x = (x ^ (x >> np.uint64(27))) * MUL2
    return x ^ (x >> np.uint64(31))


def uniforms(seeds: np.ndarray, steps: np.ndarray, stream: int, count: int) -> np.ndarray:
    """``[rows, count]`` float64 uniforms in ``[0, 1)``, keyed per row by (seed, step, stream, index).

    ``seeds`` and ``steps`` are ``[rows]`` integer arrays (seeds taken modulo 2**64).
    """
    with np.errstate(over="ignore"):
        seed = np.asarray(seeds).astype(np.uint64)
        step = np.asarray(steps).astype(np.uint64)
        key = _mix(seed * GOLDEN + SEED_SALT)
        key = _mix(key ^ (step * GOLDEN + np.uint64(stream + 1)))
        index = np.arange(count, dtype=np.uint64)[None, :]
        bits = _mix(key[:, None] + (index + np.uint64(1)) * GOLDEN)
    return (bits >> np.uint64(11)).astype(np.float64) * UNIT


def _as_int64(values: np.ndarray) -> torch.Tensor:
    """uint64 values as int64 with the same bits."""
    return torch.from_numpy(np.ascontiguousarray(np.asarray(values).astype(np.uint64)).view(np.int64))


def _signed(constant: np.uint64) -> int:
    """A uint64 constant as the int64 with the same bits."""
    return int(np.array(constant, dtype=np.uint64).view(np.int64))


def _shift_right(x: torch.Tensor, bits: int) -> torch.Tensor:
    """Logical right shift of int64 bit patterns (torch's ``>>`` is arithmetic)."""
    return (x >> bits) & ((1 << (64 - bits)) - 1)


def _device_mix(x: torch.Tensor) -> torch.Tensor:
    x = (x ^ _shift_right(x, 30)) * _signed(MUL1)
    x = (x ^ _shift_right(x, 27)) * _signed(MUL2)
    return x ^ _shift_right(x, 31)


def device_uniforms(seeds: np.ndarray, steps: np.ndarray, stream: int, count: int,
                    device: torch.device | str) -> torch.Tensor:
    """:func:`uniforms` computed on ``device``, bit for bit: ``[rows, count]`` float64."""
    golden = _signed(GOLDEN)
    counters = upload(torch.stack([_as_int64(seeds), _as_int64(steps)]), device)
    seed, step = counters[0], counters[1]
    key = _device_mix(seed * golden + _signed(SEED_SALT))
    key = _device_mix(key ^ (step * golden + (stream + 1)))
    index = torch.arange(1, count + 1, dtype=torch.int64, device=key.device)[None, :]
    bits = _device_mix(key[:, None] + index * golden)
    return _shift_right(bits, 11).double() * UNIT


def fresh_seeds(count: int) -> np.ndarray:
    """Seeds for rows that asked for none: fresh randomness from the operating system."""
    return np.frombuffer(os.urandom(8 * count), dtype=np.uint64).copy()
