"""The fused GPU chain (sampling/gpu) makes the CPU path's decisions, under the rule of
:mod:`samplerd.sampling.gpu`: the same kept sets, top-logprob ids and seeded tokens except where a
float-sum decision lies within ``RELATIVE_TOLERANCE`` of its boundary; statistics within
float32 rounding.

Without a GPU the kernel runs in Triton's interpreter (``TRITON_INTERPRET=1``) on CPU
tensors, at small shapes (the interpreter is slow); with one, the same tests run compiled on
``cuda``. The reference is :func:`sampling.sample` on the CPU (the fused CPU path for
sampled rows, the general pipeline for greedy ones).
"""

from __future__ import annotations

import os
import re

import numpy as np
import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")  # read when the kernels are defined
triton = pytest.importorskip("triton", reason="triton is not installed (pip install samplerd[gpu])")

from samplerd.sampling import SamplingError, SamplingParams, sample  # noqa: E402
from samplerd.sampling.gpu import RELATIVE_TOLERANCE, fused_chain, kernels  # noqa: E402
from samplerd.sampling.rng import STREAM_DRAW, uniforms  # noqa: E402

tl = triton.language
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
STATISTICS = ("entropy", "varentropy", "truncated_entropy", "kept_mass", "top_k_entropy", "top_k_mass")


def _on_gpu(logits, params, steps):
    out = fused_chain.sample(logits.to(DEVICE), params, steps)
    return out


def _logits(rows: int, vocab: int, seed: int, scale: float = 3.0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(rows, vocab, generator=generator) * scale


def _tempered(row: torch.Tensor, p: SamplingParams) -> np.ndarray:
    z = row.float()
    if p.temperature >= 1e-5:
        z = z / torch.tensor(p.temperature, dtype=torch.float32)
    return z.double().numpy()


def _draw_is_clear(z: np.ndarray, kept: int, u: float) -> bool:
    """Whether ``u * total`` lies farther than the tolerance from every token boundary of
    the inverse CDF over the ``kept`` largest logits (in index order), in float64."""
    threshold = np.sort(z)[::-1][kept - 1]
    w = np.where(z >= threshold, np.exp(np.maximum(z - z.max(), -87.0)), 0.0)
    cumulative = np.cumsum(w)
    total = cumulative[-1]
    return bool(np.min(np.abs(cumulative[w > 0] - u * total)) > RELATIVE_TOLERANCE * total)


def _top_p_is_clear(z: np.ndarray, p: SamplingParams) -> bool:
    """Whether no prefix mass of top-p's ranking (after top-k) lies within the tolerance of
    its target, in float64."""
    if not p.uses(fused_chain.top_p.STRATEGY):
        return True
    ranked = np.sort(z[z > -np.inf])[::-1]
    if p.top_k > 0:
        k = max(p.top_k, p.min_tokens_to_keep)
        if k < ranked.size:
            ranked = ranked[ranked >= ranked[k - 1]]
    w = np.exp(np.maximum(ranked - ranked[0], -87.0))
    prefix = np.cumsum(w)
    target = p.top_p * prefix[-1]
    return bool(np.min(np.abs(prefix - target)) > RELATIVE_TOLERANCE * prefix[-1])


def _assert_same_as_cpu(logits: torch.Tensor, params: list, steps: list) -> tuple[int, int]:
    """Compare the GPU chain with the CPU path row by row under the rule; returns (rows
    whose decisions were clear of every boundary, rows compared)."""
    got = _on_gpu(logits, params, steps)
    want = sample(logits, params, steps)
    clear_rows = 0
    for r, p in enumerate(params):
        z = _tempered(logits[r], p)
        top_p_clear = p.temperature < 1e-5 or _top_p_is_clear(z, p)
        kept = int(want.stats.kept_tokens[r])
        if top_p_clear:
            # Both kept sets are {z >= t} for some t: equal counts mean equal sets.
            assert int(got.stats.kept_tokens[r]) == kept, f"row {r}"
        for name in STATISTICS:
            if name in ("truncated_entropy", "kept_mass") and not top_p_clear:
                continue
            torch.testing.assert_close(getattr(got.stats, name)[r].cpu(), getattr(want.stats, name)[r],
                                       rtol=1e-4, atol=1e-5, msg=f"row {r} {name}")
        greedy = p.temperature < 1e-5
        draws = None if greedy else uniforms(np.array([p.seed], dtype=np.uint64),
                                             np.array([steps[r]], dtype=np.uint64), STREAM_DRAW, p.n)[0]
        clear = top_p_clear
        for j in range(p.n):
            if greedy or (top_p_clear and _draw_is_clear(z, kept, draws[j])):
                assert int(got.token_ids[r, j]) == int(want.token_ids[r, j]), f"row {r} draw {j}"
                torch.testing.assert_close(got.logprobs[r, j].cpu(), want.logprobs[r, j], rtol=1e-4, atol=1e-5)
                torch.testing.assert_close(got.stats.surprise[r, j].cpu(), want.stats.surprise[r, j], rtol=1e-4,
                                           atol=1e-5)
            else:
                clear = False
        assert (got.token_ids[r, p.n:] == -1).all()
        if want.top_logprobs is not None and top_p_clear:
            width = p.top_logprobs
            ids, values = (t[r, :width].cpu() for t in got.top_logprobs)
            assert torch.equal(ids, want.top_logprobs[0][r, :width]), f"row {r}"
            torch.testing.assert_close(values, want.top_logprobs[1][r, :width], rtol=1e-4, atol=1e-5)
        assert got.strategies[r] == want.strategies[r]
        clear_rows += clear
    return clear_rows, len(params)


def test_every_strategy_of_the_chain_matches_the_cpu_path():
    logits = _logits(8, 2500, seed=1)
    logits[3, 400:] = float("-inf")  # masked tokens
    logits[4, 7] = logits[4].max() + 2.0  # one dominant token
    params = [
        SamplingParams(temperature=0.8, seed=11, n=11, top_logprobs=4),
        SamplingParams(temperature=1.2, top_k=40, seed=12, stats_top_k=25),
        SamplingParams(temperature=0.7, top_p=0.8, seed=13, top_logprobs=6),
        SamplingParams(temperature=1.0, min_p=0.1, seed=14, n=2),
        SamplingParams(temperature=0.9, top_k=100, top_p=0.6, min_p=0.02, seed=15, top_logprobs=3),
        SamplingParams(temperature=1.5, top_p=0.3, min_tokens_to_keep=30, seed=16),
        SamplingParams(temperature=0.0, top_logprobs=5, n=2),  # greedy
        SamplingParams(temperature=1.1, top_k=5, min_tokens_to_keep=9, seed=17, top_logprobs=12),
    ]
    clear, rows = _assert_same_as_cpu(logits, params, list(range(8)))
    assert clear == rows  # random logits at these settings sit far from every boundary


def test_tie_groups_at_every_threshold_are_kept_whole():
    vocab = 1200
    row = torch.linspace(-4.0, 0.0, vocab)
    logits = torch.stack([row, row, row, row]).clone()
    logits[0, 100:110] = 1.0  # top-k = 4 lands inside a group of 10 equal tokens
    logits[1, 50:56] = 2.0  # top-p's boundary token is one of 6 equal tokens
    logits[2, 900:960] = 0.5  # min-p's boundary below a group of 60
    logits[3, [3, 600, 1100]] = 3.0  # greedy: the first of three maxima
    params = [SamplingParams(top_k=4, seed=1), SamplingParams(top_p=0.05, seed=2),
              SamplingParams(min_p=0.99, seed=3, top_logprobs=64), SamplingParams(temperature=0.0, top_logprobs=2)]
    got = _on_gpu(logits, params, [0, 0, 0, 0])
    assert got.stats.kept_tokens.tolist() == [10, 6, 60, 1]
    assert int(got.token_ids[3, 0]) == 3
    assert got.top_logprobs[0][2, :60].sort().values.tolist() == list(range(900, 960))  # ties in index order
    assert got.top_logprobs[0][2].tolist() == list(range(900, 960)) + [-1] * 4
    _assert_same_as_cpu(logits, params, [0, 0, 0, 0])


def test_seeded_tokens_equal_the_cpu_tokens_except_within_rounding_of_a_boundary():
    logits = _logits(6, 3000, seed=2, scale=2.0)
    params = [SamplingParams(temperature=t, top_p=p, top_k=k, seed=s, n=8)
              for t, p, k, s in [(1.0, 1.0, 0, 101), (0.7, 0.9, 0, 102), (1.3, 0.95, 200, 103),
                                 (1.0, 0.5, 0, 104), (0.5, 1.0, 50, 105), (2.0, 0.99, 0, 106)]]
    steps = [0, 1, 2, 3, 2**40, 2**64 - 1]
    clear, rows = _assert_same_as_cpu(logits, params, steps)
    assert clear >= rows - 1  # 48 draws: at most one may land within 1e-5 of a boundary


def test_float16_and_bfloat16_rows_match_the_cpu_path():
    for dtype in (torch.float16, torch.bfloat16):
        logits = _logits(2, 1500, seed=3).to(dtype)
        logits[1, :3] = logits[1].max()  # ties, exact in the narrow type
        params = [SamplingParams(temperature=0.8, top_k=20, top_p=0.9, seed=5, top_logprobs=3),
                  SamplingParams(top_k=2, seed=6, n=2)]
        clear, rows = _assert_same_as_cpu(logits, params, [1, 2])
        assert clear == rows


@pytest.mark.parametrize(("value", "message"), [(float("nan"), "contains NaN"), (float("inf"), "contains +inf"),
                                               (None, "has no finite logit")])
def test_bad_rows_raise_a_sampling_error_naming_the_row(value, message):
    logits = _logits(3, 300, seed=4)
    if value is None:
        logits[1] = float("-inf")
    else:
        logits[1, 17] = value
    with pytest.raises(SamplingError, match=f"^logits row 1 {re.escape(message)}$") as raised:
        _on_gpu(logits, [SamplingParams(top_k=5, seed=1)] * 3, [0, 0, 0])
    assert raised.value.field == "logits"
    with pytest.raises(SamplingError, match=f"^logits row 1 {re.escape(message)}$"):
        sample(logits, [SamplingParams(top_k=5, seed=1)] * 3, [0, 0, 0])


def test_a_row_gives_the_same_result_alone_and_in_any_batch():
    logits = _logits(3, 1100, seed=5)
    params = [SamplingParams(temperature=0.9, top_p=0.9, seed=7, n=4, top_logprobs=2),
              SamplingParams(top_k=3, seed=8), SamplingParams(temperature=0.0)]
    together = _on_gpu(logits, params, [5, 6, 7])
    alone = _on_gpu(logits[:1], params[:1], [5])
    reordered = fused_chain.sample(logits.flip(0).to(DEVICE), params[::-1], [7, 6, 5], rows=[2])
    # A neighbour that widens every per-launch size: draws per pass, top list, outputs.
    widened = _on_gpu(logits[:2], [params[0], SamplingParams(stats_top_k=300, n=9, top_logprobs=40, seed=1)], [5, 0])
    for other in (alone, reordered, widened):
        assert torch.equal(other.token_ids[0, :4], together.token_ids[0])  # n = 4; wider batches pad
        assert torch.equal(other.logprobs[0, :4], together.logprobs[0])
        assert torch.equal(other.top_logprobs[0][0, :2], together.top_logprobs[0][0])
        for name in STATISTICS:
            assert torch.equal(getattr(other.stats, name)[0], getattr(together.stats, name)[0])


@triton.jit
def _uniforms_kernel(seed_ptr, step_ptr, out_ptr, HALF: tl.constexpr):
    seed = tl.load(seed_ptr).to(tl.uint64, bitcast=True)
    step = tl.load(step_ptr).to(tl.uint64, bitcast=True)
    tl.store(out_ptr + tl.arange(0, HALF), kernels._uniforms(seed, step, 0, HALF))
    tl.store(out_ptr + HALF + tl.arange(0, HALF), kernels._uniforms(seed, step, HALF, HALF))


@pytest.mark.parametrize(("seed", "step"), [(0, 0), (7, 3), (2**64 - 1, 2**63 + 5), (123456789, 2**32)])
def test_the_kernel_generator_is_sampling_rng_bit_for_bit(seed, step):
    out = torch.empty(8, dtype=torch.float64, device=DEVICE)
    seeds = torch.tensor(np.array([seed], dtype=np.uint64).view(np.int64), device=DEVICE)
    steps = torch.tensor(np.array([step], dtype=np.uint64).view(np.int64), device=DEVICE)
    _uniforms_kernel[(1,)](seeds, steps, out, HALF=4)  # two calls: uniforms 0-3 and 4-7
    want = uniforms(np.array([seed], dtype=np.uint64), np.array([step], dtype=np.uint64), STREAM_DRAW, 8)[0]
    assert out.cpu().numpy().tobytes() == want.tobytes()


def test_the_path_is_only_taken_for_cuda_tensors_and_eligible_rows():
    params = [SamplingParams(top_k=5), SamplingParams(typical_p=0.9), SamplingParams(temperature=0.0, top_p=0.5),
              SamplingParams(temperature=0.0, repetition_penalty=1.2)]
    assert fused_chain.eligible_rows(torch.zeros(4, 8), params) == []
    assert [fused_chain.is_eligible(p) for p in params] == [True, False, True, False]


def test_a_top_p_target_on_a_prefix_mass_moves_the_boundary_by_one_token_at_most():
    # top_p chosen so that its target falls on a prefix mass (to float32 precision): the rule's
    # exception. Either side of the boundary is then right, on either device; nothing further.
    logits = _logits(3, 1000, seed=9)
    params, allowed = [], []
    for r, rank in enumerate((3, 17, 60)):
        z = logits[r].double().numpy()
        ranked = np.sort(z)[::-1]
        w = np.exp(ranked - ranked[0])
        top_p = float(np.float32(w[:rank].sum() / w.sum()))
        params.append(SamplingParams(top_p=top_p, seed=r))
        assert not _top_p_is_clear(z, params[-1])
        allowed.append({rank, rank + 1})
    got = _on_gpu(logits, params, [0, 0, 0])
    want = sample(logits, params, [0, 0, 0])
    for r in range(3):
        assert int(got.stats.kept_tokens[r]) in allowed[r]
        assert int(want.stats.kept_tokens[r]) in allowed[r]
