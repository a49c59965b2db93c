"""The GPU kernel benchmark refuses to run without CUDA, saying why (it runs in
test_gpu_cuda.py on a GPU machine), and its sort-based baseline samples what it keeps."""

from __future__ import annotations

import pytest
import torch

from samplerd.sampling.gpu import bench

no_cuda = pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA: the benchmark would run")


@no_cuda
def test_the_benchmark_says_it_needs_cuda():
    with pytest.raises(RuntimeError, match=r"needs a CUDA device \(samplerd bench kernels --device cuda\)"):
        bench.run()


@no_cuda
def test_the_command_exits_with_the_reason(capsys):
    with pytest.raises(SystemExit) as exited:
        bench.main(["--batches", "1"])
    assert exited.value.code == 2
    assert "needs a CUDA device" in capsys.readouterr().err


@no_cuda
def test_bench_kernels_on_cuda_is_this_benchmark(capsys):
    from samplerd.sampling.bench import main as kernels_main

    with pytest.raises(SystemExit) as exited:
        kernels_main(["--device", "cuda", "--rows", "1"])
    assert exited.value.code == 2
    assert "needs a CUDA device" in capsys.readouterr().err


def test_the_sort_based_baseline_draws_only_kept_tokens():
    logits = torch.randn(64, 500, generator=torch.Generator().manual_seed(0))
    top = logits.topk(3).indices
    chosen = bench.sort_based(logits, top_k=3)
    assert (chosen == top).any(dim=1).all()
    nucleus = bench.sort_based(logits, top_p=1e-6)  # only the argmax holds the first mass
    assert torch.equal(nucleus[:, 0], logits.argmax(dim=1))
