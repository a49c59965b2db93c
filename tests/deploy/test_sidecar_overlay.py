"""The sidecar overlay: samplerd in the engine's pod, sharing a memory-backed /dev/shm.

Rendered with `kubectl kustomize` and validated strictly offline, like the other overlays
(see test_kubernetes_manifests.py).
"""

from __future__ import annotations

import kubernetes_validate
from test_kubernetes_manifests import one, render

OVERLAY = "sidecar"


def pod_spec() -> dict:
    return one(OVERLAY, "Deployment")["spec"]["template"]["spec"]


def containers() -> dict[str, dict]:
    return {container["name"]: container for container in pod_spec()["containers"]}


def test_renders_the_engine_pod_and_its_configuration_only() -> None:
    assert sorted(doc["kind"] for doc in render(OVERLAY)) == ["ConfigMap", "Deployment"]


def test_passes_strict_kubernetes_validation() -> None:
    for doc in render(OVERLAY):
        kubernetes_validate.validate(doc, kubernetes_validate.latest_version(), strict=True)


def test_engine_and_samplerd_share_a_memory_backed_dev_shm() -> None:
    volumes = {volume["name"]: volume for volume in pod_spec()["volumes"]}
    assert set(containers()) == {"engine", "samplerd"}
    for container in containers().values():
        mounts = {mount["mountPath"]: mount["name"] for mount in container["volumeMounts"]}
        shared = volumes[mounts["/dev/shm"]]
        assert shared["emptyDir"]["medium"] == "Memory" and shared["emptyDir"]["sizeLimit"]


def test_both_containers_run_as_the_same_non_root_user() -> None:
    context = pod_spec()["securityContext"]
    assert context["runAsNonRoot"] is True and context["runAsUser"] != 0
    for container in containers().values():
        assert "runAsUser" not in container.get("securityContext", {})  # the pod's user: regions are 0600


def test_samplerd_runs_its_own_ray_with_settings_serve_accepts() -> None:
    from samplerd.service.cli.main import SERVE_OPTIONS, build_parser, env_name

    settings = one(OVERLAY, "ConfigMap")["data"]
    known = {"SAMPLERD_LOG_LEVEL"} | {env_name(flag) for flag, *_ in SERVE_OPTIONS}
    assert set(settings) <= known, f"unknown settings: {set(settings) - known}"
    args = build_parser(environ=settings).parse_args(["serve"])
    assert args.ray_address is None  # 'none': a local Ray instance in the container
    assert args.max_shm_regions >= 1 and args.max_shm_bytes >= 64 * 128256 * 4
    refs = [source["configMapRef"]["name"] for source in containers()["samplerd"]["envFrom"]]
    assert refs == [one(OVERLAY, "ConfigMap")["metadata"]["name"]]


def test_samplerd_has_grpc_probes_and_the_engine_finds_it_on_localhost() -> None:
    samplerd = containers()["samplerd"]
    port = {p["name"]: p["containerPort"] for p in samplerd["ports"]}["grpc"]
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert samplerd[probe]["grpc"]["port"] == port
    env = {item["name"]: item["value"] for item in containers()["engine"]["env"]}
    assert env["SAMPLERD_TARGET"] == f"localhost:{port}"
    assert samplerd["image"].startswith("ghcr.io/samplerd/samplerd:")
