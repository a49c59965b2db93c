"""The generation benchmark runs and shows that batching pays."""

from __future__ import annotations

from service.bench_generate import format_table, run_generation_bench


def test_sixteen_concurrent_prompts_beat_one(tiny_model_dir):
    rows = run_generation_bench(tiny_model_dir, max_tokens=16, repeats=2, print_table=False)
    by_case = {(r["concurrency"], r["batching"]): r for r in rows}
    assert set(by_case) == {(1, "padded"), (16, "padded"), (16, "solo")}
    assert by_case[16, "padded"]["tokens"] == 16 * 16
    # Measured side by side; the margin on a shared 2-core machine is ~8x, asked for here is 2x.
    assert by_case[16, "padded"]["tokens_per_s"] > 2 * by_case[1, "padded"]["tokens_per_s"]
    assert "tokens/s" in format_table(rows, "tiny")
