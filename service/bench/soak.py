"""``samplerd bench soak``: mixed traffic against a real server while sampler actors are killed.

This process starts a local Ray instance (dashboard off), a ``samplerd serve`` child joined to
it (``--ray-address``), and then, for ``--seconds``, runs ``--concurrency`` client tasks that
send a mix of requests back to back:

- seeded requests (1-3 rows, several strategies, fp32/fp16/bf16, n and top_logprobs), whose
  tokens are checked against ``sampling.sample`` run here on the same input (sampling is a
  pure function of seed, step, logits and parameters, whatever shares the batch);
- unseeded requests (any valid tokens);
- invalid requests (a NaN logit: INVALID_ARGUMENT is their right answer);
- requests with a deadline too short to be met (DEADLINE_EXCEEDED is their right answer).

Every ``--kill-every`` seconds one of the server's sampler actors is killed with
``ray.kill``. The report: requests sent, answered, lost (a request without an answer: its
generous client timeout ran out, or the call failed without a gRPC status; must be 0), wrong
(a seeded answer that differs from the library; must be 0), unexpected (INTERNAL/UNKNOWN, or an
error on a request that had to succeed other than UNAVAILABLE/RESOURCE_EXHAUSTED), answers by
status code, actors killed, and the front end's resident memory (RSS) at start, after warm-up and at the end. The
exit status is 0 only when lost, wrong and unexpected are all 0.

The actor helpers (:func:`sampler_actor_names`, :func:`kill_sampler_actor`) are also what the
fault-injection tests use.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import json
import random
import time
from dataclasses import asdict, dataclass, field
from typing import Any

#: Actor name prefix of the pool (``samplerd.workers.pool.ACTOR_NAME_PREFIX``), repeated here so that
#: importing this module for the CLI does not import Ray.
_ACTOR_NAME_PREFIX = "samplerd-sampler-"
#: Codes a request that had to succeed may still get while actors die or the queue is full.
RETRYABLE = frozenset({"UNAVAILABLE", "RESOURCE_EXHAUSTED"})


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of ``samplerd bench soak``."""
    parser.add_argument("--seconds", type=float, default=60.0, help="how long traffic runs [60]")
    parser.add_argument("--concurrency", type=int, default=8, help="client tasks sending back to back [8]")
    parser.add_argument("--workers", type=int, default=2, help="sampler actors of the server [2]")
    parser.add_argument("--kill-every", type=float, default=10.0, help="seconds between actor kills [10]")
    parser.add_argument("--max-queue", type=int, default=256, help="server --max-queue [256]")
    parser.add_argument("--request-timeout", type=float, default=60.0,
                        help="client timeout of requests without a short deadline; running out = lost [60]")
    parser.add_argument("--seed", type=int, default=0, help="seed of the traffic mix [0]")
    parser.add_argument("--json", metavar="PATH", help="also write the report as JSON")


# -- Ray actors of a server ------------------------------------------------------------------


def sampler_actor_names(server_pid: int) -> list[str]:
    """Names of the live sampler actors of the ``samplerd`` process ``server_pid`` (this process
    must be connected to the server's Ray cluster)."""
    import ray

    prefix = f"{_ACTOR_NAME_PREFIX}{server_pid}-"
    return sorted(a["name"] for a in ray.util.list_named_actors(all_namespaces=True) if a["name"].startswith(prefix))


def kill_sampler_actor(name: str) -> bool:
    """``ray.kill`` the sampler actor ``name`` (no restart); False when it was already gone."""
    import ray

    for entry in ray.util.list_named_actors(all_namespaces=True):
        if entry["name"] == name:
            try:
                ray.kill(ray.get_actor(name, namespace=entry["namespace"]), no_restart=True)
            except ValueError:  # died in between
                return False
            return True
    return False


def rss_bytes(pid: int) -> int:
    """Resident set size of process ``pid`` (Linux ``/proc``), in bytes."""
    with open(f"/proc/{pid}/status", encoding="ascii") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"no VmRSS for pid {pid}")


# -- traffic ---------------------------------------------------------------------------------

_STRATEGIES: tuple[dict[str, Any], ...] = (
    {"top_p": 0.9},
    {"top_k": 40, "temperature": 0.8},
    {"min_p": 0.05},
    {"typical_p": 0.9},
    {"top_n_sigma": 1.0},
    {"n": 3, "top_logprobs": 5},
    {"temperature": 0.0},
    {"mirostat": 2, "mirostat_tau": 4.0},
)


@dataclass
class Case:
    """One prepared request: its bytes, what kind it is, and (seeded) the expected token ids."""

    kind: str  # seeded | unseeded | invalid | deadline
    request: Any
    expected: list[list[int]] | None = None


def build_cases(seed: int, count: int = 48) -> list[Case]:
    """The traffic mix; seeded cases carry ``sampling.sample``'s tokens for their input."""
    import torch

    from samplerd.sampling import SamplingParams, sample
    from samplerd.service.client import build_request

    rng = random.Random(seed)
    cases = []
    for i in range(count):
        rows, vocab = rng.randint(1, 3), rng.choice((1000, 8000, 32000))
        dtype = rng.choice((torch.float32, torch.float16, torch.bfloat16))
        generator = torch.Generator().manual_seed(seed * 1000 + i)
        logits = (torch.randn(rows, vocab, generator=generator) * 2.5).to(dtype)
        values = dict(rng.choice(_STRATEGIES))
        steps = [rng.randint(0, 100) for _ in range(rows)]
        kind = ("seeded", "seeded", "seeded", "unseeded", "invalid", "deadline")[i % 6]
        if kind == "invalid":
            logits[0, 1] = float("nan")
        if kind == "seeded":
            values["seed"] = rng.randrange(2**63)
        request = build_request(logits, steps=steps, request_id=f"soak-{i}", **values)
        expected = None
        if kind == "seeded":
            params = SamplingParams(**values)
            out = sample(logits, [params] * rows, steps=steps)
            expected = [out.token_ids[r, : params.n].tolist() for r in range(rows)]
        cases.append(Case(kind, request, expected))
    return cases


@dataclass
class SoakReport:
    """What a soak run counted."""

    seconds: float
    sent: int = 0
    answered: int = 0
    lost: int = 0
    wrong: int = 0
    unexpected: int = 0
    codes: dict[str, int] = field(default_factory=dict)
    actors_killed: int = 0
    rss_start_mb: float = 0.0
    rss_warm_mb: float = 0.0  # after the first quarter of the run (at most 10 s): warm-up allocations done
    rss_end_mb: float = 0.0
    health_at_end: str = ""

    def ok(self) -> bool:
        """No request lost, none answered wrongly, no unexpected error."""
        return self.lost == 0 and self.wrong == 0 and self.unexpected == 0

    def lines(self) -> list[str]:
        """The human-readable report."""
        codes = ", ".join(f"{code}={count}" for code, count in sorted(self.codes.items()))
        return [
            f"soak: {self.seconds:.0f}s  sent={self.sent} answered={self.answered} lost={self.lost} "
            f"wrong={self.wrong} unexpected={self.unexpected}",
            f"soak: answers by code: {codes}",
            f"soak: sampler actors killed={self.actors_killed}  health at end={self.health_at_end}",
            f"soak: front-end RSS start={self.rss_start_mb:.1f} MiB warm={self.rss_warm_mb:.1f} MiB "
            f"end={self.rss_end_mb:.1f} MiB",
        ]


async def _client_task(stub: Any, cases: list[Case], rng: random.Random, stop_at: float, timeout: float,
                       report: SoakReport, codes: collections.Counter) -> None:
    import grpc

    while time.monotonic() < stop_at:
        case = rng.choice(cases)
        deadline = 0.001 if case.kind == "deadline" else timeout
        report.sent += 1
        try:
            response = await stub.Sample(case.request, timeout=deadline)
        except grpc.RpcError as error:
            code = error.code().name
            if code == "DEADLINE_EXCEEDED" and case.kind != "deadline":
                report.lost += 1  # no answer within a generous timeout: the request hung
                continue
            report.answered += 1
            codes[code] += 1
            right = {"invalid": {"INVALID_ARGUMENT"}, "deadline": {"DEADLINE_EXCEEDED"}}.get(case.kind, set())
            if code not in right and code not in RETRYABLE:
                report.unexpected += 1
            continue
        except Exception:  # noqa: BLE001 - a call that ended without a gRPC status is lost
            report.lost += 1
            continue
        report.answered += 1
        codes["OK"] += 1
        if case.kind == "invalid":
            report.unexpected += 1  # a NaN request must never be served
        if case.expected is not None:
            got = [list(row.token_ids) for row in response.rows]
            if got != case.expected or response.request_id != case.request.request_id:
                report.wrong += 1


async def _killer(server_pid: int, every: float, stop_at: float, rng: random.Random, report: SoakReport) -> None:
    while True:
        await asyncio.sleep(min(every, max(0.0, stop_at - time.monotonic())))
        if time.monotonic() >= stop_at - 1.0:
            return
        names = await asyncio.to_thread(sampler_actor_names, server_pid)
        if names and await asyncio.to_thread(kill_sampler_actor, rng.choice(names)):
            report.actors_killed += 1


async def soak(target: str, server_pid: int, seconds: float, concurrency: int, kill_every: float,
               request_timeout: float, seed: int) -> SoakReport:
    """Run the traffic and the killer against a running server; the report (RSS filled in)."""
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    from samplerd.service.config import message_size_options
    from samplerd.service.generated.samplerd.v1 import sampler_pb2_grpc as pb_grpc

    cases = await asyncio.to_thread(build_cases, seed)
    report = SoakReport(seconds=seconds)
    codes: collections.Counter = collections.Counter()
    rng = random.Random(seed)
    async with grpc.aio.insecure_channel(target, options=message_size_options(64 * 1024 * 1024)) as channel:
        stub = pb_grpc.SamplerStub(channel)
        report.rss_start_mb = rss_bytes(server_pid) / 2**20
        stop_at = time.monotonic() + seconds
        tasks = [
            _client_task(stub, cases, random.Random(rng.random()), stop_at, request_timeout, report, codes)
            for _ in range(concurrency)
        ]

        async def warm_rss() -> None:
            await asyncio.sleep(min(10.0, seconds / 4))
            report.rss_warm_mb = rss_bytes(server_pid) / 2**20

        await asyncio.gather(*tasks, _killer(server_pid, kill_every, stop_at, rng, report), warm_rss())
        reply = await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=10)
        report.health_at_end = health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)
        report.rss_end_mb = rss_bytes(server_pid) / 2**20
    report.codes = dict(codes)
    return report


def run(args: argparse.Namespace) -> int:
    """``samplerd bench soak``: start Ray and a server, soak it, print the report."""
    import ray

    from samplerd.service.bench.process import start_server

    ray.init(address="local", include_dashboard=False, num_cpus=max(4, args.workers * 2), log_to_driver=False)
    server = None
    try:
        server = start_server(
            "--device", "cpu", "--workers", str(args.workers), "--max-queue", str(args.max_queue),
            "--ray-address", ray.get_runtime_context().gcs_address, "--grace-seconds", "30",
        )
        server.wait_serving()
        report = asyncio.run(soak(server.target, server.process.pid, args.seconds, args.concurrency,
                                  args.kill_every, args.request_timeout, args.seed))
    finally:
        if server is not None:
            server.terminate()
        ray.shutdown()
    for line in report.lines():
        print(line, flush=True)
    if args.json:
        with open(args.json, "w", encoding="utf-8") as out:
            json.dump(asdict(report), out, indent=2)
    return 0 if report.ok() else 1
