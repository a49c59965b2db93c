"""The fused sampling chain on CUDA devices, as one Triton kernel per batch.

:func:`sampling.sample` sends the rows of a CUDA batch that use only temperature (or
greedy), top-k (Fan et al. 2018), top-p (Holtzman et al. 2020) and min-p (Nguyen et al.
2024) — with ``n``, ``seed``, ``top_logprobs``, ``stats_top_k`` and ``min_tokens_to_keep``
— to :func:`samplerd.sampling.gpu.fused_chain.sample`; every other row takes the eager torch
pipeline. The kernel (:mod:`samplerd.sampling.gpu.kernels`) keeps samplerd's semantics
(docs/semantics.md): thresholds on the tempered logit, whole
tie groups kept, the chain temperature -> top-k -> top-p -> min-p with each truncation
seeing the renormalised output of the one before, ``min_tokens_to_keep`` lowering every
threshold, inverse-CDF draws with the counter-based uniforms of :mod:`samplerd.sampling.rng`, and
every row statistic. What is ours: the multi-pivot search on integer keys that finds every
threshold with exact tie groups in a few passes, per-row counter-based seeds inside the
kernel, and the statistics in the same kernel.

Same result as the CPU, and where it may differ
-----------------------------------------------
A row gives the same kept set, the same ``top_logprobs`` ids, the same kept count and the
same seeded tokens on the GPU as on the CPU (:mod:`samplerd.sampling.fused` and the general
pipeline), except where a decision lies within float rounding of its boundary. Both sides
compute ``z = x / T`` with IEEE float32 division and compare the same float32 logits, so
top-k, ``min_tokens_to_keep``, min-p (``log(min_p)`` is computed on the host by torch) and
greedy are decided identically. Two decisions use float32 sums, which the GPU adds in a
different (fixed) order than the CPU, with a different ``exp``:

* top-p: the boundary may move when the mass above a candidate boundary is within a
  relative ``1e-5`` of ``top_p`` times the row's total (:data:`RELATIVE_TOLERANCE`);
* a draw may pick a neighbouring kept token when ``u * total`` is within a relative
  ``1e-5`` of the cumulative weight (in index order) at which one token gives way to the
  next.

Statistics (entropies, masses, log-probabilities, surprise) agree within float32 rounding
of their sums (relative ``1e-4``; absolute ``1e-5`` near zero). Nothing else differs:
the tests in ``tests/sampling/test_gpu_kernels.py`` check exactly this rule.

Determinism: no atomics; every sum is a block reduction in the compiler's fixed tree order
followed by a float64 sum across blocks in index order, so a row's result is the same run
to run and whatever else is in its batch.
"""

#: The relative tolerance of the two float-sum decisions (see the module docstring).
RELATIVE_TOLERANCE = 1e-5
