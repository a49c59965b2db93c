"""Float64 reference definitions of samplerd's strategies, for the tests.

Written from docs/semantics.md and the definitions in the strategy modules'
docstrings, deliberately NOT from the kernels in ``sampling/``: plain NumPy in float64,
sorting the row, one stage at a time. Every ``keep_*`` function takes the logits ``z`` of
the distribution the stage sees (a 1-D float64 array, ``-inf`` = removed) and returns the
boolean keep-mask of that strategy alone.

Also here: the random rows the tests draw from (no exact ties among finite logits, unless
asked), and the goodness-of-fit helper.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from scipy import stats
from scipy.special import ndtri

GREEDY_BELOW = 1e-5
MIROSTAT_ZIPF_TOKENS = 100
DRY_MAX_MATCH = 50


# ----------------------------------------------------------------------------- basics


def as_array(z) -> np.ndarray:
    """A 1-D float64 copy of a row (tensor, list or array)."""
    if isinstance(z, torch.Tensor):
        return z.detach().to(torch.float64).cpu().numpy().copy()
    return np.array(z, dtype=np.float64)


def softmax(z) -> np.ndarray:
    z = as_array(z)
    finite = np.isfinite(z)
    w = np.zeros_like(z)
    w[finite] = np.exp(z[finite] - z[finite].max())
    return w / w.sum()


def entropy(p: np.ndarray) -> float:
    """Shannon entropy in nats, 0 log 0 = 0."""
    q = p[p > 0]
    return float(-(q * np.log(q)).sum())


def varentropy(p: np.ndarray) -> float:
    q = p[p > 0]
    h = entropy(p)
    return float((q * (np.log(q) + h) ** 2).sum())


def top_ranked(score: np.ndarray, m: int) -> np.ndarray:
    """The ``m`` highest finite scores, with every score tied to the m-th (threshold semantics)."""
    finite = np.isfinite(score)
    if m <= 0:
        return np.zeros_like(finite)
    values = np.sort(score[finite])[::-1]
    if m >= values.size:
        return finite.copy()
    return finite & (score >= values[m - 1])


def prefix_by_mass(score: np.ndarray, p: np.ndarray, target: float) -> np.ndarray:
    """Rank ``j`` (by ``score`` descending) is kept iff the mass of the ranks before it is ``< target``;
    the boundary rank's whole tie group is kept."""
    finite = np.isfinite(score)
    order = np.flatnonzero(finite)[np.argsort(-score[finite], kind="stable")]
    mass = p[order]
    before = np.concatenate([[0.0], np.cumsum(mass)[:-1]])
    kept_ranks = before < target
    last = order[np.flatnonzero(kept_ranks)[-1]]
    return finite & (score >= score[last])


def descending_probs(z: np.ndarray) -> np.ndarray:
    p = softmax(z)
    return np.sort(p[np.isfinite(z)])[::-1]


# ----------------------------------------------------------------------------- truncations


def keep_top_k(z, k: int) -> np.ndarray:
    z = as_array(z)
    if k <= 0:
        return np.isfinite(z)
    return top_ranked(z, k)


def keep_top_p(z, top_p: float) -> np.ndarray:
    z = as_array(z)
    if top_p >= 1.0:
        return np.isfinite(z)
    return prefix_by_mass(z, softmax(z), top_p)


def keep_min_p(z, min_p: float) -> np.ndarray:
    z = as_array(z)
    p = softmax(z)
    return np.isfinite(z) & (p >= min_p * p.max())


def typicality(z) -> np.ndarray:
    """``-|(-ln p) - H|`` (higher = more typical), ``-inf`` for removed tokens."""
    z = as_array(z)
    p = softmax(z)
    finite = np.isfinite(z)
    score = np.full_like(z, -np.inf)
    with np.errstate(divide="ignore"):
        score[finite] = -np.abs(-np.log(p[finite]) - entropy(p))
    return score


def keep_typical(z, typical_p: float, min_keep: int = 1) -> np.ndarray:
    z = as_array(z)
    if typical_p >= 1.0:
        return np.isfinite(z)
    score = typicality(z)
    return prefix_by_mass(score, softmax(z), typical_p) | top_ranked(score, min_keep)


def keep_epsilon(z, epsilon: float) -> np.ndarray:
    z = as_array(z)
    p = softmax(z)
    return np.isfinite(z) & ((p >= epsilon) | (z >= z.max()))


def eta_floor(z, eta: float) -> float:
    return min(eta, math.sqrt(eta) * math.exp(-entropy(softmax(z))))


def keep_eta(z, eta: float) -> np.ndarray:
    z = as_array(z)
    p = softmax(z)
    return np.isfinite(z) & ((p >= eta_floor(z, eta)) | (z >= z.max()))


def keep_top_n_sigma(z, n: float) -> np.ndarray:
    z = as_array(z)
    finite = np.isfinite(z)
    if n <= 0:
        return finite
    sigma = z[finite].std(ddof=0)  # population standard deviation over the finite logits
    return finite & (z >= z[finite].max() - n * sigma)


def keep_top_h(z, alpha: float) -> np.ndarray:
    """Whole vocabulary: rank 1 always; rank j kept iff sum_{r<=j} -p ln p <= alpha * H(p)."""
    z = as_array(z)
    if alpha <= 0:
        return np.isfinite(z)
    p = softmax(z)
    finite = np.isfinite(z) & (p > 0)
    order = np.flatnonzero(finite)[np.argsort(-z[finite], kind="stable")]
    partial = np.cumsum(-p[order] * np.log(p[order]))
    kept_ranks = partial <= alpha * entropy(p)
    kept_ranks[0] = True
    last = order[np.flatnonzero(kept_ranks)[-1]]
    return np.isfinite(z) & (z >= z[last])


def optimal_k(z, lam: float) -> int:
    """k* = min{k >= 1 : p_(k+1) <= (e^lambda - 1) * P_k}, with p_(|F|+1) = 0."""
    desc = descending_probs(as_array(z))
    prefix = np.cumsum(desc)
    following = np.concatenate([desc[1:], [0.0]])
    return int(np.flatnonzero(following <= math.expm1(lam) * prefix)[0]) + 1


def keep_optimal_k(z, lam: float) -> np.ndarray:
    z = as_array(z)
    return top_ranked(z, optimal_k(z, lam))


def entropy_top_k(z, k_max: int, k_min: int) -> int:
    h = entropy(softmax(z))
    level = 1.0 / (1.0 + math.exp(-(min(max(h, 0.0), 10.0) - 5.0)))
    k = float(np.round(k_min + (k_max - k_min) * level))
    return int(min(max(k, k_min), k_max))


def keep_entropy_top_k(z, k_max: int, k_min: int = 1) -> np.ndarray:
    z = as_array(z)
    return top_ranked(z, entropy_top_k(z, k_max, k_min))


def keep_statistical_top_k(z, k: int) -> np.ndarray:
    z = as_array(z)
    finite = np.isfinite(z)
    values = z[finite]
    if k >= values.size:
        return finite
    theta = values.mean() + values.std(ddof=0) * ndtri(1.0 - k / values.size)
    return finite & ((z >= theta) | (z >= values.max()))


def mirostat_v1_k(z, mu: float) -> int:
    """The paper's k: Zipf exponent from the top 100 probabilities (positive ones), round(k) + 1."""
    z = as_array(z)
    vocab = z.size
    finite_count = int(np.isfinite(z).sum())
    top = np.sort(softmax(z))[::-1][: min(MIROSTAT_ZIPF_TOKENS, vocab)]
    num = den = 0.0
    for i in range(1, top.size):  # ranks i and i + 1 (1-based)
        if top[i - 1] > 0 and top[i] > 0:
            t = math.log((i + 1) / i)
            num += t * math.log(top[i - 1] / top[i])
            den += t * t
    s_hat = num / den if den > 0 else math.nan
    if not math.isfinite(s_hat) or s_hat <= 0:
        return finite_count
    eps = s_hat - 1.0
    scale = 1.0 / math.log(vocab) if abs(eps) < 1e-9 else eps / (1.0 - vocab ** (-eps))
    try:
        k = (scale * 2.0**mu) ** (1.0 / s_hat)
    except OverflowError:
        return finite_count
    if not math.isfinite(k) or k <= 0:
        return finite_count
    return int(min(max(round(k) + 1, 1), finite_count))


def keep_mirostat_v1(z, mu: float) -> np.ndarray:
    z = as_array(z)
    return top_ranked(z, mirostat_v1_k(z, mu))


def keep_mirostat_v2(z, mu: float) -> np.ndarray:
    z = as_array(z)
    p = softmax(z)
    with np.errstate(divide="ignore"):
        return np.isfinite(z) & ((np.log2(p) >= -mu) | (z >= z.max()))


def keep_xtc(z, threshold: float, min_keep: int = 1, coin: bool = True) -> np.ndarray:
    """Remove every token with p >= threshold except the least probable of them (with its ties),
    when the coin says so, at least two tokens reach the threshold and min_keep tokens remain."""
    z = as_array(z)
    finite = np.isfinite(z)
    p = softmax(z)
    top = finite & (p >= threshold)
    if not coin or top.sum() < 2:
        return finite
    removed = top & (z > z[top].min())
    if finite.sum() - removed.sum() < min_keep:
        return finite
    return finite & ~removed


# ----------------------------------------------------------------------------- processors


def penalised(z, history, repetition: float = 1.0, frequency: float = 0.0, presence: float = 0.0) -> np.ndarray:
    z = as_array(z)
    counts = np.bincount(np.asarray(history, dtype=np.int64), minlength=z.size)[: z.size].astype(np.float64)
    seen = counts > 0
    z = np.where(seen, np.where(z > 0, z / repetition, z * repetition), z)
    return z - frequency * counts - presence * seen


def dry_match_lengths(history, breakers) -> dict[int, int]:
    """For each token t that followed an earlier occurrence of the history's suffix: the longest such
    suffix (at most 50 tokens, never across a breaker; a breaker as the follower is not penalised)."""
    h = [int(t) for t in history]
    breakers = set(breakers)
    found: dict[int, int] = {}
    if len(h) < 2 or h[-1] in breakers:
        return found
    last = len(h) - 1
    for i in range(last):  # an earlier occurrence ending at i, followed by h[i + 1]
        follower = h[i + 1]
        if follower in breakers or h[i] != h[last]:
            continue
        n = 0
        while n < DRY_MAX_MATCH and i - n >= 0 and h[i - n] == h[last - n] and h[last - n] not in breakers:
            n += 1
        found[follower] = max(found.get(follower, 0), n)
    return found


def dry_penalty(history, multiplier: float, base: float, allowed_length: int, breakers, vocab: int) -> np.ndarray:
    amounts = np.zeros(vocab)
    for token, n in dry_match_lengths(history, breakers).items():
        if n >= allowed_length and token < vocab:
            amounts[token] = multiplier * base ** (n - allowed_length)
    return amounts


def dynamic_temperature(z, temperature: float, spread: float, exponent: float) -> float:
    z = as_array(z)
    h = entropy(softmax(z))
    low, high = max(0.0, temperature - spread), temperature + spread
    return low + (high - low) * (h / math.log(z.size)) ** exponent


# ----------------------------------------------------------------------------- the pipeline


def reference_filter(z, p, history=(), mirostat_mu=None, xtc_coin=True) -> np.ndarray:
    """The final logits (float64, ``-inf`` = removed) of one row under ``SamplingParams`` ``p``,
    stage by stage in the order of docs/semantics.md, each stage seeing the previous one's output."""
    z = as_array(z)
    if p.repetition_penalty != 1.0 or p.frequency_penalty != 0.0 or p.presence_penalty != 0.0:
        z = penalised(z, history, p.repetition_penalty, p.frequency_penalty, p.presence_penalty)
    if p.dry_multiplier > 0:
        z = z - dry_penalty(history, p.dry_multiplier, p.dry_base, p.dry_allowed_length,
                            p.dry_sequence_breakers, z.size)
    for token, bias in p.logit_bias:
        z[token] += bias
    temperature = p.temperature
    if temperature >= GREEDY_BELOW and p.dynatemp_range > 0:
        temperature = dynamic_temperature(z, temperature, p.dynatemp_range, p.dynatemp_exponent)
    if temperature < GREEDY_BELOW:
        out = np.full_like(z, -np.inf)
        first = int(np.argmax(z))
        out[first] = z[first]
        return out
    z = z / temperature
    m = p.min_tokens_to_keep

    def stage(keep, own_min_keep=False):
        nonlocal z
        keep = keep & np.isfinite(z)
        if not own_min_keep:
            keep = keep | top_ranked(z, m)
        z = np.where(keep, z, -np.inf)

    if p.mirostat == 1:
        mu = 2 * p.mirostat_tau if mirostat_mu is None else mirostat_mu
        stage(keep_mirostat_v1(z, mu))
        return z
    if p.mirostat == 2:
        mu = 2 * p.mirostat_tau if mirostat_mu is None else mirostat_mu
        stage(keep_mirostat_v2(z, mu))
        return z
    if p.top_n_sigma > 0:
        stage(keep_top_n_sigma(z, p.top_n_sigma))
    if p.top_k > 0:
        stage(keep_top_k(z, p.top_k))
    if p.optimal_k > 0:
        stage(keep_optimal_k(z, p.optimal_k))
    if p.entropy_top_k > 0:
        stage(keep_entropy_top_k(z, p.entropy_top_k, p.entropy_top_k_min))
    if p.statistical_top_k > 0:
        stage(keep_statistical_top_k(z, p.statistical_top_k))
    if p.top_h > 0:
        stage(keep_top_h(z, p.top_h))
    if p.top_p < 1:
        stage(keep_top_p(z, p.top_p))
    if p.min_p > 0:
        stage(keep_min_p(z, p.min_p))
    if p.typical_p < 1:
        stage(keep_typical(z, p.typical_p, m), own_min_keep=True)
    if p.epsilon > 0:
        stage(keep_epsilon(z, p.epsilon))
    if p.eta > 0:
        stage(keep_eta(z, p.eta))
    if p.xtc_probability > 0 and p.xtc_threshold <= 0.5:
        stage(keep_xtc(z, p.xtc_threshold, m, xtc_coin), own_min_keep=True)
    return z


def kept(logits) -> np.ndarray:
    """Boolean mask of the finite entries (the kept set) of a 1-D row."""
    return np.isfinite(as_array(logits))


def ids(mask) -> list[int]:
    return np.flatnonzero(np.asarray(mask)).tolist()


# ----------------------------------------------------------------------------- random rows


def random_row(rng: np.random.Generator, vocab: int, allow_neg_inf: bool = True) -> np.ndarray:
    """One float32-representable row of varied shape: Gaussian at several scales, peaked, Zipf-like,
    wide uniform; sometimes with ``-inf`` entries (at least one finite)."""
    shape = rng.choice(["gauss", "peaked", "zipf", "wide"])
    if shape == "gauss":
        z = rng.standard_normal(vocab) * rng.choice([0.1, 0.5, 1.0, 2.0, 5.0, 10.0])
    elif shape == "peaked":
        z = rng.standard_normal(vocab)
        z[rng.integers(vocab)] += rng.uniform(2.0, 15.0)
    elif shape == "zipf":
        z = -rng.uniform(0.5, 2.5) * np.log(np.arange(1, vocab + 1)) + rng.normal(0.0, 0.05, vocab)
        rng.shuffle(z)
    else:
        z = rng.uniform(-30.0, 5.0, vocab)
    z = z + rng.uniform(-20.0, 20.0)
    if allow_neg_inf and vocab > 1 and rng.random() < 0.3:
        masked = rng.random(vocab) < rng.uniform(0.05, 0.6)
        masked[rng.integers(vocab)] = False
        z[masked] = -np.inf
    return z.astype(np.float32)


def tie_free_rows(count: int, seed: int, min_vocab: int = 2, max_vocab: int = 300,
                  allow_neg_inf: bool = True) -> list[torch.Tensor]:
    """``count`` random float32 rows whose finite logits are pairwise distinct."""
    rng = np.random.default_rng(seed)
    rows: list[torch.Tensor] = []
    while len(rows) < count:
        z = random_row(rng, int(rng.integers(min_vocab, max_vocab + 1)), allow_neg_inf)
        finite = z[np.isfinite(z)]
        if np.unique(finite).size == finite.size:
            rows.append(torch.from_numpy(z))
    return rows


# ----------------------------------------------------------------------------- goodness of fit


def chi_square_p_value(counts: np.ndarray, probs: np.ndarray) -> float:
    """Pearson chi-square p-value of observed ``counts`` against ``probs``, pooling every cell whose
    expected count is below 5 into one cell (and that cell into the smallest other one if it is
    still below 5)."""
    counts = np.asarray(counts, dtype=np.float64)
    probs = np.asarray(probs, dtype=np.float64)
    total = counts.sum()
    expected = probs / probs.sum() * total
    small = expected < 5
    obs = list(counts[~small])
    exp = list(expected[~small])
    if small.any():
        pooled_obs, pooled_exp = counts[small].sum(), expected[small].sum()
        if pooled_exp >= 5 or not exp:
            obs.append(pooled_obs)
            exp.append(pooled_exp)
        else:
            j = int(np.argmin(exp))
            obs[j] += pooled_obs
            exp[j] += pooled_exp
    if len(obs) < 2:
        return 1.0
    return float(stats.chisquare(np.array(obs), np.array(exp)).pvalue)


# ----------------------------------------------------------------------------- hypothesis strategies

from hypothesis import strategies as st  # noqa: E402

NEG_INF = float("-inf")


@st.composite
def logit_rows(draw, min_vocab: int = 1, max_vocab: int = 40, allow_neg_inf: bool = True):
    """A float32 row with at least one finite logit; exact ties are common (values on a coarse grid
    half of the time) and ``-inf`` entries allowed."""
    vocab = draw(st.integers(min_vocab, max_vocab))
    coarse = draw(st.booleans())
    finite = (st.integers(-20, 20).map(lambda v: v / 2.0) if coarse
              else st.floats(-30.0, 30.0, allow_nan=False, allow_infinity=False, width=32))
    element = st.one_of(finite, st.just(NEG_INF)) if allow_neg_inf else finite
    values = draw(st.lists(element, min_size=vocab, max_size=vocab))
    if all(v == NEG_INF for v in values):
        values[draw(st.integers(0, vocab - 1))] = draw(finite)
    return torch.tensor(values, dtype=torch.float32)


TRUNCATION_VALUES = {
    "top_k": st.integers(1, 45),
    "top_p": st.floats(0.01, 0.99),
    "min_p": st.floats(0.001, 1.0),
    "typical_p": st.floats(0.01, 0.99),
    "epsilon": st.floats(1e-4, 0.9),
    "eta": st.floats(1e-4, 0.9),
    "top_n_sigma": st.floats(0.01, 5.0),
    "top_h": st.floats(0.01, 1.0),
    "optimal_k": st.floats(0.001, 10.0),
    "entropy_top_k": st.integers(1, 45),
    "statistical_top_k": st.integers(1, 45),
    "mirostat": st.sampled_from([1, 2]),
    "xtc_probability": st.just(1.0),
}
# Where the definition keeps the most probable token (not typical, not XTC).
KEEPS_ARGMAX = set(TRUNCATION_VALUES) - {"typical_p", "xtc_probability"}


@st.composite
def truncation_params(draw, names=tuple(TRUNCATION_VALUES)):
    """(name, SamplingParams keywords) for one truncation strategy, a temperature and a min_tokens_to_keep."""
    name = draw(st.sampled_from(names))
    config = {name: draw(TRUNCATION_VALUES[name])}
    if name == "xtc_probability":
        config["xtc_threshold"] = draw(st.floats(0.0, 0.5))
    config["temperature"] = draw(st.sampled_from([1.0, 0.5, 2.0, 0.0]))
    config["min_tokens_to_keep"] = draw(st.sampled_from([1, 1, 2, 5]))
    config["seed"] = draw(st.integers(0, 2**64 - 1))
    return name, config
