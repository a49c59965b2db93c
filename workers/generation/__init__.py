"""Text generation with a Hugging Face causal LM: samplerd's own decode loop.

- :mod:`samplerd.workers.generation.request`: the request, its events, the session statistics;
- :mod:`samplerd.workers.generation.engine`: :class:`GenerationEngine`, the decode loop with
  continuous batching (the batching design is in its module docstring);
- :mod:`samplerd.workers.generation.kv_batch`: the running batch's left-padded KV cache;
- :mod:`samplerd.workers.generation.sequence`: one live generation's state and stop conditions;
- :mod:`samplerd.workers.generation.detokenizer`: incremental detokenisation and stop strings;
- :mod:`samplerd.workers.generation.loader`: loading a model directory (device, dtype, errors);
- :mod:`samplerd.workers.generation.tiny_model`: a tiny GPT-2 built from nothing, for tests and benchmarks.

Needs torch and transformers, not Ray; :mod:`samplerd.workers.lm_actor` puts an engine in a Ray actor.
"""

from samplerd.workers.generation.engine import BATCHING, GenerationEngine, GenerationResult, UnknownRequestError
from samplerd.workers.generation.loader import ModelInfo, ModelLoadError
from samplerd.workers.generation.request import (
    FINISH_REASONS,
    FinishEvent,
    GenerationEvent,
    GenerationRequest,
    InvalidGenerationRequest,
    SessionStats,
    TokenEvent,
)

__all__ = [
    "BATCHING",
    "FINISH_REASONS",
    "FinishEvent",
    "GenerationEngine",
    "GenerationEvent",
    "GenerationRequest",
    "GenerationResult",
    "InvalidGenerationRequest",
    "ModelInfo",
    "ModelLoadError",
    "SessionStats",
    "TokenEvent",
    "UnknownRequestError",
]
