"""The generation benchmark (``samplerd bench generate``): tokens/s for 1 and 16 concurrent prompts.

Runs the :class:`~workers.generation.GenerationEngine` in this process (no Ray, no gRPC), on the
given model directory or, without one, on the tiny GPT-2 that the tests build (made in a
temporary directory). Each case submits ``concurrency`` prompts at once (seeded sampling at
temperature 1, ``ignore_eos`` so every prompt generates exactly ``max_tokens`` tokens), drives
the decode loop to the end and reports generated tokens per second. The 16-prompt case runs
twice: continuously batched (one forward pass per step for all rows), and with
``batching="solo"`` (one forward pass per sequence; only the sampling is batched), so the
table shows what batching the forward pass pays, measured side by side in one run.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from sampling import SamplingParams
from workers.generation import GenerationEngine, GenerationRequest
from workers.generation.tiny_model import build_tiny_model

_PROMPTS = (
    "The quick brown fox",
    "A language model assigns",
    "Sampling picks one token",
    "Entropy measures how",
)


def _run_case(engine: GenerationEngine, concurrency: int, max_tokens: int, repeats: int) -> tuple[int, float]:
    """Best-of-``repeats`` wall time to generate ``concurrency`` x ``max_tokens`` tokens."""
    best = float("inf")
    tokens = 0
    for repeat in range(repeats):
        requests = [GenerationRequest(prompt=_PROMPTS[i % len(_PROMPTS)], max_tokens=max_tokens, ignore_eos=True,
                                      params=SamplingParams(temperature=1.0, seed=1000 * repeat + i))
                    for i in range(concurrency)]
        started = time.perf_counter()
        ids = [engine.submit(r) for r in requests]
        engine.run_until_idle()
        elapsed = time.perf_counter() - started
        tokens = sum(len(engine.poll(rid)[-1].token_ids) for rid in ids)
        best = min(best, elapsed)
    return tokens, best


def run_generation_bench(model_dir: str | Path | None = None, *, device: str = "cpu", dtype: str = "auto",
                         concurrencies: tuple[int, ...] = (1, 16), max_tokens: int = 64, repeats: int = 3,
                         torch_threads: int | None = 1, print_table: bool = True) -> list[dict[str, Any]]:
    """Measure generation throughput; return one dict per case and print a table.

    Each row: ``case``, ``batching``, ``concurrency``, ``tokens``, ``seconds`` (best of
    ``repeats``), ``tokens_per_s`` and ``speedup`` (tokens/s over the 1-prompt case).
    ``torch_threads`` sets torch's intra-op threads for the run (1 by default: on a shared
    machine more threads make each small operation wait for busy cores; None leaves it).
    """
    threads_before = torch.get_num_threads()
    if torch_threads is not None:
        torch.set_num_threads(torch_threads)
    try:
        with tempfile.TemporaryDirectory(prefix="samplerd-tiny-lm-") as scratch:
            directory = Path(model_dir) if model_dir is not None else build_tiny_model(Path(scratch) / "model")
            engines = {"padded": GenerationEngine(directory, device, dtype, max_batch_size=max(concurrencies))}
            if engines["padded"].info.batching != "padded":
                engines = {"solo": engines["padded"]}
            elif max(concurrencies) > 1:
                engines["solo"] = GenerationEngine(directory, device, dtype, max_batch_size=max(concurrencies),
                                                   batching="solo")
            for engine in engines.values():  # warm up: first calls load kernels
                engine.generate(GenerationRequest(prompt=_PROMPTS[0], max_tokens=4, ignore_eos=True))
            rows: list[dict[str, Any]] = []
            main = next(iter(engines))
            cases = [(mode, c) for c in concurrencies for mode in engines if mode == main or c > 1]
            for mode, concurrency in cases:
                tokens, seconds = _run_case(engines[mode], concurrency, max_tokens, repeats)
                rows.append({"case": f"{concurrency} concurrent", "batching": mode, "concurrency": concurrency,
                             "tokens": tokens, "seconds": seconds, "tokens_per_s": tokens / seconds})
    finally:
        torch.set_num_threads(threads_before)
    base = rows[0]["tokens_per_s"]
    for row in rows:
        row["speedup"] = row["tokens_per_s"] / base
    if print_table:
        print(format_table(rows, str(model_dir) if model_dir is not None else "tiny GPT-2 (built in a temp dir)"))
    return rows


def format_table(rows: list[dict[str, Any]], model: str) -> str:
    """The benchmark rows as a plain-text table."""
    lines = [f"generation benchmark: {model}",
             f"{'case':<16}{'batching':<10}{'tokens':>8}{'seconds':>10}{'tokens/s':>11}{'speedup':>9}"]
    for row in rows:
        lines.append(f"{row['case']:<16}{row['batching']:<10}{row['tokens']:>8}{row['seconds']:>10.3f}"
                     f"{row['tokens_per_s']:>11.1f}{row['speedup']:>8.2f}x")
    return "\n".join(lines)


if __name__ == "__main__":
    run_generation_bench()
