"""Loading a Hugging Face causal LM and its tokenizer from a local directory.

``AutoModelForCausalLM.from_pretrained(dir)`` and ``AutoTokenizer.from_pretrained(dir)``
with ``local_files_only=True``: a model directory is never fetched from a hub. Every failure
(missing directory, no ``config.json``, an architecture transformers cannot load, no
tokenizer) becomes one :class:`ModelLoadError` that says what is wrong and where.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from samplerd.workers.config import DEVICES, MODEL_DTYPES

#: Accepted ``device`` values: ``auto`` is cuda when this process sees a GPU, else cpu.
#: Accepted ``dtype`` values: ``auto`` is float32 on cpu and bfloat16 on cuda (float16 where
#: the GPU has no bfloat16).


class ModelLoadError(RuntimeError):
    """The model or its tokenizer could not be loaded; the message says why and from where."""


@dataclass(frozen=True)
class ModelInfo:
    """What was loaded, for logs, health answers and the front end's validation."""

    model_dir: str
    architecture: str
    device: str
    dtype: str
    vocab_size: int  # rows of the model's logits (may exceed the tokenizer's vocabulary)
    max_positions: int | None  # longest sequence the model accepts (None: no fixed limit)
    eos_token_ids: tuple[int, ...]
    batching: str


@dataclass
class LoadedModel:
    """A model in eval mode on its device, its tokenizer, and what is known about both."""

    model: Any
    tokenizer: Any
    device: torch.device
    dtype: torch.dtype
    eos_token_ids: tuple[int, ...]
    max_positions: int | None


def resolve_device(device: str) -> torch.device:
    """The torch device for a configured name (see :data:`samplerd.workers.config.DEVICES`); Ray exposes an actor's
    GPU as ``cuda:0``."""
    if device not in DEVICES:
        raise ValueError(f"device must be one of {', '.join(DEVICES)}, got {device!r}")
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise ModelLoadError("device 'cuda' asked for, but this process sees no GPU")
    return torch.device("cuda:0" if device == "cuda" else "cpu")


def resolve_dtype(dtype: str, device: torch.device) -> torch.dtype:
    """The torch dtype for a configured name (see :data:`samplerd.workers.config.MODEL_DTYPES`)."""
    if dtype not in MODEL_DTYPES:
        raise ValueError(f"dtype must be one of {', '.join(MODEL_DTYPES)}, got {dtype!r}")
    if dtype == "auto":
        if device.type != "cuda":
            return torch.float32
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return getattr(torch, dtype)


def load_model(model_dir: str | Path, device: str = "auto", dtype: str = "auto") -> LoadedModel:
    """Load the causal LM and tokenizer saved in ``model_dir``; raise :class:`ModelLoadError`."""
    path = Path(model_dir).expanduser()
    if not path.is_dir():
        raise ModelLoadError(f"model directory {str(path)!r} does not exist or is not a directory")
    if not (path / "config.json").is_file():
        raise ModelLoadError(f"model directory {str(path)!r} has no config.json: not a Hugging Face model "
                             "directory (save one with model.save_pretrained(dir) and tokenizer.save_pretrained(dir))")
    torch_device = resolve_device(device)
    torch_dtype = resolve_dtype(dtype, torch_device)

    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    try:
        tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
    except Exception as error:
        raise ModelLoadError(f"cannot load a tokenizer from {str(path)!r}: {error}") from error
    try:
        model = AutoModelForCausalLM.from_pretrained(path, local_files_only=True, dtype=torch_dtype)
    except Exception as error:
        raise ModelLoadError(f"cannot load a causal language model from {str(path)!r}: {error}") from error
    model.to(torch_device)
    model.eval()
    return LoadedModel(model, tokenizer, torch_device, torch_dtype, _eos_ids(model, tokenizer),
                       _max_positions(model.config))


def _eos_ids(model: Any, tokenizer: Any) -> tuple[int, ...]:
    """Every EOS id the tokenizer, the config and the generation config name."""
    found: dict[int, None] = {}
    sources = [getattr(tokenizer, "eos_token_id", None), getattr(model.config, "eos_token_id", None)]
    generation_config = getattr(model, "generation_config", None)
    if generation_config is not None:
        sources.append(getattr(generation_config, "eos_token_id", None))
    for value in sources:
        for v in value if isinstance(value, (list, tuple)) else [value]:
            if v is not None:
                found[int(v)] = None
    return tuple(found)


def _max_positions(config: Any) -> int | None:
    for name in ("max_position_embeddings", "n_positions"):
        value = getattr(config, name, None)
        if isinstance(value, int) and value > 0:
            return value
    return None
