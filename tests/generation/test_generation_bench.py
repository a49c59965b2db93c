"""The generation benchmark runs, shows that batching pays, and checks its targets."""

from __future__ import annotations

from samplerd.service.bench.generate import check_targets, format_table, run_generation_bench


def test_sixteen_concurrent_prompts_beat_one(tiny_model_dir):
    rows = run_generation_bench(tiny_model_dir, max_tokens=16, repeats=2, print_table=False)
    by_case = {(r["concurrency"], r["batching"]): r for r in rows}
    assert set(by_case) == {(1, "padded"), (16, "padded"), (16, "solo")}
    assert by_case[16, "padded"]["tokens"] == 16 * 16
    # Measured side by side; the margin on a shared 2-core machine is ~8x, asked for here is 2x.
    assert by_case[16, "padded"]["tokens_per_s"] > 2 * by_case[1, "padded"]["tokens_per_s"]
    assert "tokens/s" in format_table(rows, "tiny")


def test_targets_are_checked_against_the_engine_of_the_same_concurrency():
    engine = [{"concurrency": 1, "batching": "padded", "tokens_per_s": 100.0},
              {"concurrency": 16, "batching": "padded", "tokens_per_s": 1000.0},
              {"concurrency": 16, "batching": "solo", "tokens_per_s": 10.0}]
    grpc_rows = [{"case": "1 concurrent", "concurrency": 1, "tokens_per_s": 85.0},
                 {"case": "16 concurrent", "concurrency": 16, "tokens_per_s": 650.0}]
    lines, met = check_targets(grpc_rows, engine)
    assert not met  # 0.65x at 16 is under 0.7x (solo's 10 tokens/s is not the reference)
    assert any("0.85x" in line and line.endswith("met") for line in lines)
    assert any("0.65x" in line and line.endswith("MISSED") for line in lines)
    grpc_rows[1]["tokens_per_s"] = 700.0
    assert check_targets(grpc_rows, engine)[1]
