"""numba kernels of the fused CPU path (:mod:`samplerd.sampling.fused`), one module per job.

Each kernel makes the same decisions as the eager stages of :mod:`samplerd.sampling.pipeline` (the
readable reference); the wrappers in :mod:`samplerd.sampling.fused` and :mod:`samplerd.sampling.fused_general`
prepare their arguments.
"""
