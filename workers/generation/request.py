"""What a generation request is and what it streams back: plain, picklable values.

A :class:`GenerationRequest` goes in; a stream of :class:`TokenEvent` values (one per
generated token, in order) comes out, closed by exactly one :class:`FinishEvent`. These
types import neither torch nor transformers nor ray, so the gRPC front end can build and
read them cheaply, and they cross Ray's object store unchanged.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

from samplerd.sampling import SamplingError, SamplingParams

#: Why a generation ended. ``error`` is only used when the engine itself failed (the model's
#: forward pass raised, say); ``FinishEvent.error`` then says what happened.
FINISH_REASONS = ("length", "stop", "eos", "cancelled", "error")


class InvalidGenerationRequest(SamplingError):
    """A generation request that cannot run; ``field`` names the culprit (INVALID_ARGUMENT).

    A subclass of :class:`~sampling.SamplingError`, so a front end that maps SamplingError to
    INVALID_ARGUMENT with a field violation handles it the same way. Picklable, so it
    crosses Ray unchanged.
    """

    def __reduce__(self) -> tuple[type, tuple[str, str]]:
        return type(self), (self.field, self.reason)


@dataclass(frozen=True)
class GenerationRequest:
    """One sequence to generate.

    Exactly one of ``prompt`` (text, tokenized with the model's tokenizer, special tokens added
    as the tokenizer does by default) and ``prompt_token_ids`` is given. ``max_tokens`` bounds
    the generated tokens (the model's context length may end it earlier, also as ``length``).
    Generation stops at the first of: a token in ``stop_token_ids`` (``stop``), the model's
    EOS token unless ``ignore_eos`` (``eos``), a stop string appearing in the generated text
    (``stop``; the text is cut before it), ``max_tokens`` (``length``). ``params.n`` must be
    1 and ``params.path_beams`` 1 (one sequence per request). ``request_id`` is chosen by the
    engine when not given, and must be unique among live requests when given.
    """

    prompt: str | None = None
    prompt_token_ids: tuple[int, ...] | None = None
    params: SamplingParams = field(default_factory=SamplingParams)
    max_tokens: int = 16
    stop: tuple[str, ...] = ()
    stop_token_ids: tuple[int, ...] = ()
    ignore_eos: bool = False
    request_id: str | None = None

    def __post_init__(self) -> None:
        if (self.prompt is None) == (self.prompt_token_ids is None):
            raise InvalidGenerationRequest("prompt", "prompt: give exactly one of prompt and prompt_token_ids")
        if self.prompt is not None and not isinstance(self.prompt, str):
            raise InvalidGenerationRequest("prompt", f"prompt must be a string, got {type(self.prompt).__name__}")
        if self.prompt_token_ids is not None:
            ids = _int_tuple("prompt_token_ids", self.prompt_token_ids)
            if not ids:
                raise InvalidGenerationRequest("prompt_token_ids", "prompt_token_ids must not be empty")
            object.__setattr__(self, "prompt_token_ids", ids)
        if not isinstance(self.params, SamplingParams):
            raise InvalidGenerationRequest(
                "params", f"params must be a SamplingParams, got {type(self.params).__name__}")
        if self.params.n != 1:
            raise InvalidGenerationRequest("n", f"n must be 1 for generation (one request per sequence), "
                                           f"got {self.params.n}")
        if self.params.path_beams != 1:
            raise InvalidGenerationRequest("path_beams", "path_beams must be 1 for generation, "
                                           f"got {self.params.path_beams}")
        if isinstance(self.max_tokens, bool) or not isinstance(self.max_tokens, int) or self.max_tokens < 1:
            raise InvalidGenerationRequest("max_tokens", f"max_tokens must be an integer >= 1, got {self.max_tokens!r}")
        stop = (self.stop,) if isinstance(self.stop, str) else tuple(self.stop)
        for s in stop:
            if not isinstance(s, str) or not s:
                raise InvalidGenerationRequest("stop", f"stop strings must be non-empty strings, got {s!r}")
        object.__setattr__(self, "stop", stop)
        object.__setattr__(self, "stop_token_ids", _int_tuple("stop_token_ids", self.stop_token_ids))
        if self.request_id is not None and (not isinstance(self.request_id, str) or not self.request_id):
            raise InvalidGenerationRequest("request_id", f"request_id must be a non-empty string, got "
                                           f"{self.request_id!r}")


def _int_tuple(name: str, values: Any) -> tuple[int, ...]:
    try:
        out = tuple(values)
    except TypeError:
        raise InvalidGenerationRequest(name, f"{name} must be a sequence of token ids") from None
    for v in out:
        if isinstance(v, bool) or not isinstance(v, int) or v < 0:
            raise InvalidGenerationRequest(name, f"{name} must hold non-negative integers, got {v!r}")
    return tuple(int(v) for v in out)


@dataclass(frozen=True)
class TokenEvent:
    """One generated token, in generation order (``index`` 0 is the first generated token).

    ``text`` is the piece of output text this token releases: the concatenated ``text`` of all
    events of a request (token events and the finish event) is exactly the generated text.
    A piece can be empty (an incomplete UTF-8 character, text that may start a stop string
    and is held back, an EOS or stop token) and may carry text of earlier tokens.
    ``logprob`` is the token's log-probability under the final (truncated) distribution,
    ``surprise`` its ``-ln p`` under the full distribution (after penalties and temperature),
    both in nats; the other statistics are those of :class:`sampling.SampleStats` for this
    row. ``top_logprobs`` holds ``(token_id, logprob)`` pairs when ``params.top_logprobs > 0``;
    ``mirostat_mu`` is the controller state after this token (None without mirostat).
    """

    request_id: str
    index: int
    token_id: int
    text: str
    logprob: float
    surprise: float
    entropy: float
    varentropy: float
    truncated_entropy: float
    kept_tokens: int
    kept_mass: float
    top_k_entropy: float
    top_k_mass: float
    strategy: str
    top_logprobs: tuple[tuple[int, float], ...] = ()
    mirostat_mu: float | None = None

    def to_dict(self) -> dict[str, Any]:
        """The event as a plain dict (``type`` = ``token``)."""
        return {"type": "token", **asdict(self)}


@dataclass(frozen=True)
class SessionStats:
    """Statistics of the whole generated sequence (all nats; NaN when no token was generated).

    ``mean_surprise`` is the mean of the tokens' ``surprise`` (mirostat's observed
    cross-entropy); ``log_perplexity`` is the same mean, ``-1/n sum ln p_full(token)``, named
    as the detection statistic names it; ``perplexity`` is its exponential; ``mean_entropy``
    the mean Shannon entropy of the full distributions the tokens were drawn from; and
    ``detection_gap = log_perplexity - mean_entropy`` is the zero-shot statistic of Radvand et
    al., "Zero-Shot Statistical Tests for LLM-Generated Text Detection using Finite Sample
    Concentration Inequalities" (arXiv 2501.02406): near 0 for text the model itself sampled,
    positive for text it finds more surprising than its own predictions. "Full distribution"
    is the sampler's (after penalties, logit bias and temperature), as in SampleStream sessions.
    """

    tokens: int
    mean_surprise: float
    log_perplexity: float
    perplexity: float
    mean_entropy: float
    detection_gap: float

    @classmethod
    def from_sums(cls, tokens: int, surprise_sum: float, entropy_sum: float) -> SessionStats:
        """The statistics from the running sums of surprise and entropy over ``tokens`` tokens."""
        if tokens == 0:
            nan = float("nan")
            return cls(0, nan, nan, nan, nan, nan)
        mean_surprise = surprise_sum / tokens
        mean_entropy = entropy_sum / tokens
        return cls(tokens, mean_surprise, mean_surprise, math.exp(min(mean_surprise, 700.0)), mean_entropy,
                   mean_surprise - mean_entropy)


@dataclass(frozen=True)
class FinishEvent:
    """The last event of every request: why it ended and what it produced.

    ``finish_reason`` is one of :data:`FINISH_REASONS`; ``stop_reason`` is the stop string or
    stop token id that ended it (None otherwise). ``text`` is text still held back when it
    ended (usually empty; the last piece of the stream); ``output_text`` the whole generated
    text (the stop string excluded) and ``token_ids`` every generated token id (an EOS or
    stop token included). ``error`` says what failed when ``finish_reason == "error"``.
    """

    request_id: str
    finish_reason: str
    text: str
    output_text: str
    token_ids: tuple[int, ...]
    prompt_tokens: int
    stats: SessionStats
    stop_reason: str | int | None = None
    error: str | None = None

    @property
    def generated_tokens(self) -> int:
        """How many tokens were generated."""
        return len(self.token_ids)

    def to_dict(self) -> dict[str, Any]:
        """The event as a plain dict (``type`` = ``finish``)."""
        return {"type": "finish", **asdict(self), "generated_tokens": self.generated_tokens}


#: What a request's stream holds.
GenerationEvent = TokenEvent | FinishEvent
