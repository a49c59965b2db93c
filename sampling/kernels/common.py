"""What every kernel shares: float32 constants, the jit decorator, the ordered keys of floats.

Per row, ``z`` holds the tempered float32 logits, ``w`` their weights
``exp(max(z - m, EXP_FLOOR))`` (torch's exp; 0 for masked tokens), ``m`` the maximum. A
token's bin is :func:`samplerd.sampling.selection.prefix_boundary`'s ``min(int((m - z) * 64), 2047)``
in float32; ``d = (m - z) * 64`` is its unclamped value.
"""

from __future__ import annotations

import numba
import numpy as np

from samplerd.sampling.distribution import EXP_FLOOR
from samplerd.sampling.selection import _BINS_PER_UNIT, _NUM_BINS

_F32 = np.float32
_SCALE = _F32(_BINS_PER_UNIT)
_LAST_BIN = _NUM_BINS - 1
_NEAR_BINS = int(8 * _BINS_PER_UNIT) - 1  # the bins within 8 nats of the maximum
_FLOOR = _F32(EXP_FLOOR)
_CHUNK = 128  # tokens per chunk; chunk maxima let searches for the largest tokens skip the rest
_NEG_INF = _F32(-np.inf)
_POS_INF = _F32(np.inf)
_ZERO = _F32(0.0)
_SIGN = np.int32(0x7FFFFFFF)
_INF_KEY = np.int32(0x7F800000)  # the keys (_key) of +inf and -inf
_NEG_INF_KEY = np.int32(-0x7F800001)

# No fast-math anywhere: every float operation here is an IEEE one, in the written order
# (float32 sums that decide the kept set must add exactly as torch does). The loops that
# vectorise do so across independent columns, which needs no reassociation.
_jit = numba.njit(cache=True, nogil=True)

# Kernels that loop over rows in parallel (one row per iteration, each row's scratch its own).
_jit_parallel = numba.njit(cache=True, nogil=True, parallel=True)

# Each parallel kernel has a one-row twin without a thread team: a parallel region of one row
# gains nothing and, on a loaded machine, waits until a second thread is scheduled (a few ms
# now and then at B=1 on the shared 2-core machine). The twins are functions of their own:
# numba's disk cache does not tell a parallel compilation of a function from a serial one.
