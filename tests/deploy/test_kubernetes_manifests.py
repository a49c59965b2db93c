"""The Kubernetes manifests: each overlay renders, validates strictly offline, and its parts fit.

Rendering: `kubectl kustomize` (kustomize v5 built into kubectl). Core kinds: the
kubernetes-validate package, strict (unknown fields are errors). Custom resources: the
upstream CRD schemas in ../shared/schemas/ with unknown fields forbidden, as the API server's
strict field validation would.
"""

from __future__ import annotations

import copy
import functools
import re
import subprocess
from pathlib import Path

import jsonschema
import kubernetes_validate
import pytest
import yaml
from deploy_helpers import DEPLOY, SHARED_SCHEMAS, require_tool
from external_tools import missing_outside_ci

OVERLAYS = ("cpu", "gpu")
CRD_FILES = {
    ("ray.io", "RayCluster"): SHARED_SCHEMAS / "kuberay" / "ray.io_rayclusters.yaml",
    ("monitoring.coreos.com", "ServiceMonitor"):
        SHARED_SCHEMAS / "prometheus-operator" / "monitoring.coreos.com_servicemonitors.yaml",
    ("monitoring.coreos.com", "PrometheusRule"):
        SHARED_SCHEMAS / "prometheus-operator" / "monitoring.coreos.com_prometheusrules.yaml",
}
EXPECTED_KINDS = {"Namespace", "ConfigMap", "Service", "Deployment", "RayCluster", "ServiceMonitor",
                  "PrometheusRule"}
RAY_CLIENT_PORT = 10001


@functools.cache
def render(overlay: str) -> tuple[dict, ...]:
    """The documents `kubectl kustomize` renders for an overlay."""
    result = subprocess.run([require_tool("kubectl"), "kustomize", str(DEPLOY / "k8s" / "overlays" / overlay)],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    return tuple(doc for doc in yaml.safe_load_all(result.stdout) if doc)


def one(overlay: str, kind: str) -> dict:
    found = [doc for doc in render(overlay) if doc["kind"] == kind]
    assert len(found) == 1, f"{overlay}: expected one {kind}, found {len(found)}"
    return found[0]


def forbid_unknown_fields(schema: object) -> object:
    """A copy of an OpenAPI schema where every object that declares ``properties`` (and does not
    preserve unknown fields) rejects any other property."""
    if isinstance(schema, list):
        return [forbid_unknown_fields(item) for item in schema]
    if not isinstance(schema, dict):
        return schema
    strict = {key: forbid_unknown_fields(value) for key, value in schema.items()}
    if "properties" in schema and not schema.get("x-kubernetes-preserve-unknown-fields"):
        strict.setdefault("additionalProperties", False)
    return strict


@functools.cache
def crd_validator(group: str, kind: str, version: str) -> jsonschema.Draft7Validator:
    """A strict validator for one version of a custom resource, from its upstream CRD."""
    path = CRD_FILES[(group, kind)]
    if not path.exists():
        missing_outside_ci(f"{path} is missing: the CRD schemas live in shared/schemas beside the repository")
    crd = yaml.load(path.read_text(), Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))
    assert crd["spec"]["group"] == group and crd["spec"]["names"]["kind"] == kind
    versions = {v["name"]: v for v in crd["spec"]["versions"]}
    assert version in versions, f"{kind} has no version {version} (has {sorted(versions)})"
    assert versions[version]["served"], f"{kind} {version} is not served"
    return jsonschema.Draft7Validator(forbid_unknown_fields(versions[version]["schema"]["openAPIV3Schema"]))


def crd_errors(doc: dict) -> list[str]:
    group, version = doc["apiVersion"].split("/")
    validator = crd_validator(group, doc["kind"], version)
    return [f"{'/'.join(map(str, error.absolute_path))}: {error.message}" for error in validator.iter_errors(doc)]


def config(overlay: str) -> dict[str, str]:
    return one(overlay, "ConfigMap")["data"]


def frontend_container(overlay: str) -> dict:
    (container,) = one(overlay, "Deployment")["spec"]["template"]["spec"]["containers"]
    return container


def ray_pod_specs(overlay: str) -> list[dict]:
    spec = one(overlay, "RayCluster")["spec"]
    return [spec["headGroupSpec"]["template"]["spec"]] + [g["template"]["spec"] for g in spec["workerGroupSpecs"]]


# --- rendering and validation ---------------------------------------------------------------


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_overlay_renders_every_kind(overlay):
    assert {doc["kind"] for doc in render(overlay)} == EXPECTED_KINDS


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_core_kinds_pass_strict_kubernetes_validation(overlay):
    core = [doc for doc in render(overlay) if (doc["apiVersion"].split("/")[0], doc["kind"]) not in CRD_FILES]
    assert core
    for doc in core:
        kubernetes_validate.validate(doc, kubernetes_validate.latest_version(), strict=True)


def test_strict_kubernetes_validation_rejects_an_unknown_field():
    deployment = copy.deepcopy(one("cpu", "Deployment"))
    deployment["spec"]["template"]["spec"]["containers"][0]["readinessProbe"]["grpcc"] = {"port": 1}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, kubernetes_validate.latest_version(), strict=True)


@pytest.mark.parametrize("overlay", OVERLAYS)
@pytest.mark.parametrize("kind", sorted(kind for _, kind in CRD_FILES))
def test_custom_resource_matches_its_upstream_crd_with_unknown_fields_forbidden(overlay, kind):
    assert crd_errors(one(overlay, kind)) == []


def test_crd_validation_rejects_an_unknown_field():
    cluster = copy.deepcopy(one("gpu", "RayCluster"))
    cluster["spec"]["workerGroupSpecs"][0]["gpusPerWorker"] = 1
    cluster["spec"]["headGroupSpec"]["template"]["spec"]["containers"][0]["resource"] = {}
    errors = crd_errors(cluster)
    assert any("gpusPerWorker" in error for error in errors)
    assert any("'resource'" in error for error in errors)


# --- the front end --------------------------------------------------------------------------


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_configmap_holds_only_settings_samplerd_serve_accepts(overlay):
    from samplerd.service.cli.main import SERVE_OPTIONS, build_parser, env_name

    settings = config(overlay)
    assert settings and all(key.startswith("SAMPLERD_") for key in settings)
    known = {"SAMPLERD_LOG_LEVEL"} | {env_name(flag) for flag, *_ in SERVE_OPTIONS}
    assert set(settings) <= known, f"unknown settings: {set(settings) - known}"
    # The CLI parses every value (a bad one is a start-up error, not a silent default).
    args = build_parser(environ=settings).parse_args(["serve"])
    assert args.ray_address == settings["SAMPLERD_RAY_ADDRESS"]


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_frontend_reads_its_settings_from_the_configmap(overlay):
    refs = [source["configMapRef"]["name"] for source in frontend_container(overlay)["envFrom"]]
    assert refs == [one(overlay, "ConfigMap")["metadata"]["name"]]


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_probes_are_native_grpc_on_the_configured_grpc_port(overlay):
    container = frontend_container(overlay)
    ports = {port["name"]: port["containerPort"] for port in container["ports"]}
    assert ports["grpc"] == int(config(overlay)["SAMPLERD_PORT"])
    assert ports["metrics"] == int(config(overlay)["SAMPLERD_METRICS_PORT"])
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert container[probe]["grpc"]["port"] == ports["grpc"], probe
        # The overall server health ("") of grpc.health.v1.
        assert container[probe]["grpc"].get("service", "") == ""


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_frontend_has_resource_requests_and_limits(overlay):
    resources = frontend_container(overlay)["resources"]
    assert {"cpu", "memory"} <= set(resources["requests"])
    assert "memory" in resources["limits"]


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_termination_grace_period_covers_the_servers_drain(overlay):
    drain = float(config(overlay)["SAMPLERD_GRACE_SECONDS"])
    period = one(overlay, "Deployment")["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
    assert drain < period <= drain + 15


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_frontend_runs_as_non_root(overlay):
    pod = one(overlay, "Deployment")["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] != 0
    assert frontend_container(overlay)["securityContext"]["allowPrivilegeEscalation"] is False


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_service_is_headless_and_exposes_grpc_and_metrics(overlay):
    service = one(overlay, "Service")
    assert service["spec"]["clusterIP"] == "None"
    pod_labels = one(overlay, "Deployment")["spec"]["template"]["metadata"]["labels"]
    assert service["spec"]["selector"].items() <= pod_labels.items()
    container_ports = {port["name"] for port in frontend_container(overlay)["ports"]}
    assert {port["name"] for port in service["spec"]["ports"]} == {"grpc", "metrics"}
    assert {port["targetPort"] for port in service["spec"]["ports"]} <= container_ports


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_servicemonitor_scrapes_the_metrics_port_of_the_service(overlay):
    monitor, service = one(overlay, "ServiceMonitor"), one(overlay, "Service")
    assert monitor["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    assert [e["port"] for e in monitor["spec"]["endpoints"]] == ["metrics"]


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_prometheusrule_wraps_exactly_the_rules_of_alerts_yml(overlay):
    rules = yaml.safe_load((DEPLOY / "prometheus" / "alerts.yml").read_text())
    assert one(overlay, "PrometheusRule")["spec"]["groups"] == rules["groups"]


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_queue_alert_fires_before_the_queue_bound_refuses_requests(overlay):
    rules = yaml.safe_load((DEPLOY / "prometheus" / "alerts.yml").read_text())
    (expr,) = [r["expr"] for g in rules["groups"] for r in g["rules"] if r.get("alert") == "SamplerdQueueSaturated"]
    threshold = float(re.fullmatch(r"samplerd_queue_depth > (\d+)", expr.strip()).group(1))
    bound = int(config(overlay)["SAMPLERD_MAX_QUEUE"])
    assert 0.5 * bound <= threshold < bound


# --- the Ray cluster ------------------------------------------------------------------------


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_frontend_joins_the_ray_head_through_the_ray_client_port(overlay):
    cluster = one(overlay, "RayCluster")
    assert config(overlay)["SAMPLERD_RAY_ADDRESS"] == (
        f"ray://{cluster['metadata']['name']}-head-svc:{RAY_CLIENT_PORT}")
    head = cluster["spec"]["headGroupSpec"]["template"]["spec"]["containers"][0]
    assert RAY_CLIENT_PORT in {port["containerPort"] for port in head["ports"]}


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_pod_runs_the_same_image(overlay):
    # The Ray client needs the same Ray and Python versions on both ends.
    images = {frontend_container(overlay)["image"]}
    images |= {c["image"] for spec in ray_pod_specs(overlay) for c in spec["containers"]}
    assert len(images) == 1, images
    assert images.pop().endswith("-" + {"cpu": "cpu", "gpu": "cuda"}[overlay])


def test_ray_version_matches_the_image():
    dockerfile = (DEPLOY / "Dockerfile").read_text()
    (pinned,) = re.findall(r"^ARG RAY_VERSION=(\S+)$", dockerfile, flags=re.MULTILINE)
    for overlay in OVERLAYS:
        assert one(overlay, "RayCluster")["spec"]["rayVersion"] == pinned


def test_gpu_overlay_has_gpu_workers_and_samples_on_cuda():
    (group,) = one("gpu", "RayCluster")["spec"]["workerGroupSpecs"]
    (container,) = group["template"]["spec"]["containers"]
    gpus_per_pod = int(container["resources"]["limits"]["nvidia.com/gpu"])
    assert gpus_per_pod >= 1
    settings = config("gpu")
    assert settings["SAMPLERD_DEVICE"] == "cuda"
    # Enough GPUs in the group's minimum for every sampler actor.
    actors_gpus = int(settings["SAMPLERD_WORKERS"]) * float(settings["SAMPLERD_NUM_GPUS_PER_WORKER"])
    assert actors_gpus <= group["minReplicas"] * gpus_per_pod


def test_cpu_overlay_has_cpu_workers_and_no_gpu():
    (group,) = one("cpu", "RayCluster")["spec"]["workerGroupSpecs"]
    assert group["replicas"] >= 1
    assert "nvidia.com/gpu" not in yaml.safe_dump(list(render("cpu")))
    assert config("cpu")["SAMPLERD_DEVICE"] == "cpu"


def test_ray_head_runs_no_sampler_actors():
    for overlay in OVERLAYS:
        assert one(overlay, "RayCluster")["spec"]["headGroupSpec"]["rayStartParams"]["num-cpus"] == "0"


def test_schemas_are_found_relative_to_the_repository():
    assert SHARED_SCHEMAS == Path(DEPLOY).parent.parent / "shared" / "schemas"
    if not SHARED_SCHEMAS.is_dir():
        missing_outside_ci(f"{SHARED_SCHEMAS} is missing: the CRD schemas live in shared/schemas beside the repository")
    assert all(path.exists() for path in CRD_FILES.values())
