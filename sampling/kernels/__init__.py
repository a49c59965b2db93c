"""numba kernels of the fused CPU path (:mod:`sampling.fused`), one module per job.

Each kernel makes the same decisions as the eager stages of :mod:`sampling.pipeline` (the
readable reference); the wrappers in :mod:`sampling.fused` and :mod:`sampling.fused_general`
prepare their arguments.
"""
