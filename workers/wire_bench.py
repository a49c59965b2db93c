"""``python -m samplerd.workers.wire_bench``: the batch link's value format (:mod:`samplerd.workers.wire`) against
pickle protocol 5 (what the link used before), encoding and decoding the same batches and
answers side by side in one run; prints milliseconds and ratios (wire / pickle)."""

from __future__ import annotations

import argparse
import pickle
import time

import torch

from samplerd.sampling import SamplingParams, SequenceState, sample
from samplerd.workers.batch import WIRE_TYPES, BatchOutput, GroupResult, stack_group, to_numpy
from samplerd.workers.wire import Codec


def _time(fn, repeats: int) -> float:
    started = time.perf_counter()
    for _ in range(repeats):
        fn()
    return (time.perf_counter() - started) / repeats


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rows", type=int, default=256, help="rows per batch [256]")
    parser.add_argument("--history", type=int, default=1000, help="tokens of history per row with state [1000]")
    parser.add_argument("--repeats", type=int, default=20, help="timed repeats of each [20]")
    args = parser.parse_args(argv)
    codec = Codec(WIRE_TYPES)
    rows = args.rows
    distinct = [SamplingParams(top_p=0.9, seed=i) for i in range(rows)]
    states = [SequenceState(tuple(range(args.history)), None) for _ in range(rows)]
    cases = {
        "batch, one params for all rows": [stack_group([torch.randn(1, 32000) for _ in range(rows)],
                                                       [distinct[0]] * rows, [0] * rows)],
        "batch, params and states per row": [stack_group([torch.randn(1, 32000) for _ in range(rows)],
                                                         distinct, list(range(rows)), states)],
        "answer": BatchOutput([GroupResult(to_numpy(sample(torch.randn(rows, 1000), distinct, 0)), None, 0.1)],
                              "cpu", {"top_p": 0.1}),
    }
    print(f"{rows} rows, {args.repeats} repeats; ms per call (wire / pickle = ratio)")
    for name, value in cases.items():
        meta, raws = codec.encode(value)
        buffers = [bytearray(raw) for raw in raws]
        pickled: list[pickle.PickleBuffer] = []
        data = pickle.dumps(value, protocol=5, buffer_callback=pickled.append)
        encode = _time(lambda v=value: codec.encode(v), args.repeats)
        dumps = _time(lambda v=value: pickle.dumps(v, protocol=5, buffer_callback=lambda b: False), args.repeats)
        decode = _time(lambda m=meta, b=buffers: codec.decode(m, b), args.repeats)
        loads = _time(lambda d=data, p=pickled: pickle.loads(d, buffers=p), args.repeats)
        print(f"{name}: encode {encode * 1e3:.2f} / {dumps * 1e3:.2f} = {encode / dumps:.1f}x; "
              f"decode {decode * 1e3:.2f} / {loads * 1e3:.2f} = {decode / loads:.1f}x")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
