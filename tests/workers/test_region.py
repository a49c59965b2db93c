"""The sampler actor reading logits straight from a client's shared memory (samplerd.workers.region).

The actor class is used in-process (its ``sample_batch`` is plain Python); the regions are real
POSIX shared-memory objects in /dev/shm.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from samplerd.sampling import SamplingParams, sample
from samplerd.workers.batch import RowError, pack_logits, stack_group
from samplerd.workers.pool import localize
from samplerd.workers.region import RegionError, RegionSlice, read_array
from samplerd.workers.sampler_actor import SamplerActor

PARAMS = SamplingParams(top_k=20, seed=3)


@pytest.fixture()
def shm_path() -> Iterator[Path]:
    path = Path("/dev/shm") / f"samplerd-test-region-{os.getpid()}-{os.urandom(4).hex()}"
    yield path
    path.unlink(missing_ok=True)


def region_of(path: Path, logits: torch.Tensor, offset: int = 64) -> RegionSlice:
    """Write ``logits`` at ``offset`` into a new object at ``path``; the slice naming them."""
    raw = pack_logits(logits).tobytes()
    with open(path, "wb") as file:
        file.write(b"\0" * offset + raw)
    info = os.stat(path)
    dtype = {torch.float32: "float32", torch.float16: "float16", torch.bfloat16: "bfloat16"}[logits.dtype]
    return RegionSlice(str(path), (info.st_dev, info.st_ino), offset + len(raw), offset, logits.shape[0],
                       logits.shape[1], dtype, "region 'test'")


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_read_array_returns_the_bytes(shm_path: Path, dtype: torch.dtype) -> None:
    logits = torch.randn(3, 100).to(dtype)
    array = read_array(region_of(shm_path, logits))
    back = torch.from_numpy(array)
    assert torch.equal(back.view(torch.bfloat16) if dtype == torch.bfloat16 else back, logits)


def test_a_shrunk_removed_or_replaced_object_is_a_region_error(shm_path: Path) -> None:
    part = region_of(shm_path, torch.randn(2, 50))
    os.truncate(shm_path, 100)
    with pytest.raises(RegionError, match="shrank"):
        read_array(part)
    shm_path.unlink()
    with pytest.raises(RegionError, match="no longer exists"):
        read_array(part)
    shm_path.write_bytes(b"\0" * 1000)
    with pytest.raises(RegionError, match="replaced"):
        read_array(part)


def test_the_actor_fails_only_the_request_whose_region_broke(shm_path: Path) -> None:
    first, middle, last = torch.randn(2, 300), torch.randn(3, 300), torch.randn(1, 300)
    broken = region_of(shm_path, middle)
    os.truncate(shm_path, 10)
    group = stack_group([first, broken, last], [PARAMS] * 6, [0] * 6)
    result = SamplerActor("cpu").sample_batch([group]).groups[0]
    assert result.output is None
    good_first, error, good_last = result.job_outputs
    assert isinstance(error, RowError) and error.kind == "region" and "shrank" in error.reason
    assert isinstance(error.to_exception(), RegionError)
    assert good_first.token_ids.tolist() == sample(first, PARAMS, 0).token_ids.tolist()
    assert good_last.token_ids.tolist() == sample(last, PARAMS, 0).token_ids.tolist()


def test_the_actor_reads_a_region_and_checks_its_values(shm_path: Path) -> None:
    logits = torch.randn(4, 300).to(torch.float16)
    group = stack_group([region_of(shm_path, logits)], [PARAMS] * 4, [0] * 4)
    output = SamplerActor("cpu").sample_batch([group]).groups[0].output
    assert output.token_ids.tolist() == sample(logits, PARAMS, 0).token_ids.tolist()
    logits[1, 5] = float("nan")
    group = stack_group([region_of(shm_path, logits)], [PARAMS] * 4, [0] * 4)
    (error,) = SamplerActor("cpu").sample_batch([group]).groups[0].job_outputs
    assert error.kind == "sampling" and error.field == "logits" and "row 1" in error.reason


def test_localize_reads_what_it_can_and_leaves_broken_regions_to_the_actor(shm_path: Path, tmp_path: Path) -> None:
    logits = torch.randn(2, 40)
    readable = region_of(shm_path, logits)
    gone = RegionSlice(str(tmp_path / "gone"), (0, 0), 10, 0, 1, 40, "float32", "region 'gone'")
    (group,) = localize([stack_group([readable, gone], [PARAMS] * 3, [0] * 3)])
    assert torch.equal(torch.from_numpy(group.logits[0]), logits)
    assert group.logits[1] is gone
