"""The demo language model: ``samplerd serve --model demo`` and ``samplerd demo-model DIR``.

A tiny GPT-2 with random weights and a byte-level BPE tokenizer trained on a few sentences
(:mod:`samplerd.workers.generation.tiny_model`), written as an ordinary Hugging Face model directory, so
``Generate`` can be tried without downloading a model. Its text is gibberish: it shows the
mechanics (streaming, stop conditions, statistics), not language.
"""

from __future__ import annotations

import os
from pathlib import Path

#: The ``--model`` value that selects the demo model.
DEMO = "demo"


def write_demo_model(directory: str | Path) -> Path:
    """Write the demo model to ``directory`` (created if missing); its path."""
    from samplerd.workers.generation.tiny_model import build_tiny_model

    return build_tiny_model(directory)


def demo_model_dir() -> str:
    """The demo model's directory in the user's cache, written on first use."""
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "samplerd" / "demo-model"
    if not (cache / "config.json").is_file():
        write_demo_model(cache)
    return str(cache)
