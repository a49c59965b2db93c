"""Text generation with a Hugging Face causal LM: samplerd's own decode loop.

- :mod:`workers.generation.request`: the request, its events, the session statistics;
- :mod:`workers.generation.engine`: :class:`GenerationEngine`, the decode loop with
  continuous batching (the batching design is in its module docstring);
- :mod:`workers.generation.kv_batch`: the running batch's left-padded KV cache;
- :mod:`workers.generation.sequence`: one live generation's state and stop conditions;
- :mod:`workers.generation.detokenizer`: incremental detokenisation and stop strings;
- :mod:`workers.generation.loader`: loading a model directory (device, dtype, errors);
- :mod:`workers.generation.tiny_model`: a tiny GPT-2 built from nothing, for tests and benchmarks.

Needs torch and transformers, not Ray; :mod:`workers.lm_actor` puts an engine in a Ray actor.
"""

from workers.generation.engine import BATCHING, GenerationEngine, GenerationResult, UnknownRequestError
from workers.generation.loader import ModelInfo, ModelLoadError
from workers.generation.request import (
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
