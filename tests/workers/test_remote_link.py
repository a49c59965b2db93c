"""A front end whose sampler actor runs on another Ray node: its batches go over a TCP link.

The topology of the Kubernetes deployment, where the actors live on the Ray worker pods: here
a real two-node Ray cluster on this machine (``ray.cluster_utils.Cluster``: a head node with no
CPUs and a worker node with two, where the actor must go), run in a child process of its own
(this session's Ray instance is another cluster). The front end joins it either as a driver on
the head node (by the GCS address) or, as in the Kubernetes deployment, through the Ray client
(``ray://``; Ray 2.60's client does not carry its token, so this cluster runs without token
authentication; when Ray's client proxy fails to start its per-client server, as it sometimes does
here after other tests used the session's Ray instance, that case is skipped, not failed: no link
is ever reached). Every job gets
the library's own answer over the TCP link; a link that breaks costs no job its answer (Ray
carries the batches) and the health monitor opens a new TCP link.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="batch links need Linux")

REPO = Path(__file__).resolve().parents[2]

SCRIPT = """
import asyncio, json, socket, sys
sys.path.insert(0, {tests!r})
import ray
import ray._private.utils
import ray.util.client
from ray.cluster_utils import Cluster
from test_batch_transport import mixed_jobs
from test_dispatcher import assert_same_output, direct
from samplerd.service.config import DispatcherConfig
from samplerd.service.dispatcher import Dispatcher
from samplerd.workers.config import PoolConfig

async def answered_right(d, jobs):
    for job, result in zip(jobs, await asyncio.gather(*(d.submit(job) for job in jobs)), strict=True):
        assert_same_output(result, direct(job))
    return len(jobs)

async def main(address):
    pool = PoolConfig(num_workers=1, device="cpu", num_gpus_per_worker=0.0, ray_address=address)
    d = Dispatcher(DispatcherConfig(pool=pool))
    try:
        await d.start()
    except ConnectionAbortedError as error:  # Ray's own client proxy failed to start its server
        print("RAY_CLIENT_FAILED " + str(error).strip().splitlines()[-1], flush=True)
        return
    report = {{}}
    try:
        [worker] = d.pool._workers
        if ray.util.client.ray.is_connected():
            report["through_the_ray_client"] = True
        else:
            actor_node = ray.get(worker.actor.open_link.remote()).node_id
            report["actor_on_another_node"] = actor_node != ray.get_runtime_context().get_node_id()
        report["over_tcp"] = worker.link is not None and worker.link.over_tcp
        report["answered"] = await answered_right(d, [job for seed in (1, 2, 3) for job in mixed_jobs(seed)])

        jobs = mixed_jobs(seed=4) * 2
        answers = asyncio.create_task(answered_right(d, jobs))
        while worker.inflight_batches == 0:
            await asyncio.sleep(0.001)
        broken = worker.link
        broken._sock.shutdown(socket.SHUT_RDWR)
        report["answered_while_broken"] = await answers

        for _ in range(200):  # the health monitor (every 2 s) opens a new link
            if worker.link is not None and worker.link is not broken:
                break
            await asyncio.sleep(0.1)
        report["relinked_over_tcp"] = worker.link is not broken and worker.link.over_tcp and worker.link.is_open
        report["answered_after"] = await answered_right(d, mixed_jobs(seed=5))
    finally:
        await d.stop()
    print("REPORT " + json.dumps(report), flush=True)

# Cluster would record its address in /tmp/ray as "the current cluster", where other processes'
# ray.init() on this machine would find it; it is this test's alone.
ray._private.utils.write_ray_address = lambda *args, **kwargs: None
client_port = {client_port}
head = {{"num_cpus": 0, "include_dashboard": False}}
if client_port:
    head["ray_client_server_port"] = client_port
cluster = Cluster(initialize_head=True, connect=False, head_node_args=head)
try:
    cluster.add_node(num_cpus=2)
    asyncio.run(main(f"ray://127.0.0.1:{{client_port}}" if client_port else cluster.address))
finally:
    ray.shutdown()
    cluster.shutdown()
"""


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.mark.parametrize("join", ["gcs", "ray-client"])
def test_batches_for_an_actor_on_another_node_go_over_tcp_and_survive_a_broken_link(join: str) -> None:
    client_port = free_port() if join == "ray-client" else 0
    script = SCRIPT.format(tests=str(REPO / "tests" / "workers"), client_port=client_port)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    if client_port:
        env["RAY_AUTH_MODE"] = "disabled"
    child = subprocess.run([sys.executable, "-c", script], cwd=REPO, env=env, capture_output=True, text=True,
                           timeout=300)

    failed = [line for line in child.stdout.splitlines() if line.startswith("RAY_CLIENT_FAILED ")]
    if client_port and failed:  # inside ray.init, before any samplerd code: Ray's proxy, not the link
        pytest.skip(f"Ray's client could not connect on this machine: {failed[0]}")
    reports = [line for line in child.stdout.splitlines() if line.startswith("REPORT ")]
    assert child.returncode == 0 and reports, child.stdout[-3000:] + child.stderr[-6000:]
    where = {"through_the_ray_client": True} if client_port else {"actor_on_another_node": True}
    assert json.loads(reports[0].removeprefix("REPORT ")) == {
        **where,
        "over_tcp": True,
        "answered": 12,
        "answered_while_broken": 8,
        "relinked_over_tcp": True,
        "answered_after": 4,
    }
