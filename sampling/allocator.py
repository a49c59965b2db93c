"""Keep freed tensor memory in the process, so large temporaries do not fault pages in again.

Each kernel creates several full-size temporaries (16 MB for a [32, 128256] float32 batch).
glibc's malloc serves blocks that large with fresh ``mmap`` calls and returns them to the
system on free, so every temporary pays thousands of page faults — measured here, that is
more than half the time of a ``sample()`` call on a CPU. :func:`keep_freed_memory` raises
glibc's thresholds so such blocks come from, and go back to, the heap. It changes process-wide
malloc behaviour (the resident size stays near its high-water mark), so the library never
calls it on its own; long-running sampler processes (samplerd's workers) do.

The fused CPU path (:mod:`samplerd.sampling.fused`, every strategy but penalties, DRY and logit bias)
does not need it: its batch-sized arrays are workspaces kept per thread and reused while the
batch shape stays the same, so ``from samplerd.sampling import sample`` gets the benchmarked speed in an
untuned process (``samplerd bench kernels`` measures untuned; ``--tune-malloc`` tunes). Only
the eager pipeline's temporaries, and float16 / bfloat16 logits' float32 copy, still fault
their pages in on every call.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import sys

_M_TRIM_THRESHOLD = -1
_M_TOP_PAD = -2
_M_MMAP_THRESHOLD = -3
_MMAP_THRESHOLD_BYTES = 32 * 1024 * 1024  # glibc's largest allowed value on 64-bit
_TRIM_THRESHOLD_BYTES = 1024 * 1024 * 1024
_TOP_PAD_BYTES = 64 * 1024 * 1024


def keep_freed_memory() -> bool:
    """Tune glibc malloc for large, short-lived tensors; False where that is not possible
    (not Linux, or a C library without ``mallopt``)."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    return all(
        mallopt(option, value) == 1
        for option, value in (
            (_M_MMAP_THRESHOLD, _MMAP_THRESHOLD_BYTES),
            (_M_TRIM_THRESHOLD, _TRIM_THRESHOLD_BYTES),
            (_M_TOP_PAD, _TOP_PAD_BYTES),
        )
    )
