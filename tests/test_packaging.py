"""The installed layout: one top-level package, samplerd, holding every subpackage of the repository.

The code keeps the repository's top-level folders (sampling/, service/, workers/) and setuptools
maps them under samplerd (pyproject.toml's package-dir and explicit package list). These tests
build the real wheel and import from it, so a folder missing from the list, or a module that
imports a bare ``sampling``/``service``/``workers``, fails here rather than on a user's machine.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
FOLDERS = {"sampling": "samplerd.sampling", "service": "samplerd.service", "workers": "samplerd.workers"}


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    # Built from a copy: setuptools leaves a build/ folder beside the sources it builds.
    source = tmp_path_factory.mktemp("source")
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, source / name)
    for folder in FOLDERS:
        shutil.copytree(REPO / folder, source / folder, ignore=shutil.ignore_patterns("__pycache__"))
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(out),
                    str(source)], check=True, capture_output=True, timeout=300)
    [built] = out.glob("samplerd-*.whl")
    return built


def repository_packages() -> set[str]:
    found = set()
    for folder, package in FOLDERS.items():
        for init in (REPO / folder).rglob("__init__.py"):
            relative = init.parent.relative_to(REPO / folder).parts
            found.add(".".join((package, *relative)))
    return found


def test_the_wheels_only_top_level_package_is_samplerd(wheel: Path) -> None:
    names = zipfile.ZipFile(wheel).namelist()
    top = {name.split("/")[0] for name in names if not name.split("/")[0].endswith((".dist-info", ".data"))}
    assert top == {"samplerd"}
    assert "samplerd/__init__.py" not in names  # a namespace: no folder of its own in the repository


def test_every_package_of_the_repository_is_in_the_wheel(wheel: Path) -> None:
    names = zipfile.ZipFile(wheel).namelist()
    in_wheel = {"samplerd." + ".".join(Path(n).parent.parts[1:]) for n in names if n.endswith("/__init__.py")}
    assert repository_packages() <= in_wheel, "add the missing packages to pyproject.toml's packages list"
    assert any(n.endswith("sampler_pb2.pyi") for n in names)  # the stubs' type information ships too


def test_the_installed_wheel_imports_from_itself(wheel: Path, tmp_path: Path) -> None:
    target = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(target), str(wheel)],
                   check=True, capture_output=True, timeout=300)
    script = ("import samplerd.sampling, samplerd.service.client, samplerd.service.cli.main, samplerd.workers.config\n"
              "print(samplerd.sampling.__file__)\nprint(samplerd.service.client.__file__)")
    run = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, env={"PYTHONPATH": str(target)},
                         capture_output=True, text=True, timeout=300, check=True)
    assert all(line.startswith(str(target)) for line in run.stdout.split()), run.stdout


def test_the_console_script_points_into_the_namespace() -> None:
    text = (REPO / "pyproject.toml").read_text()
    assert 'samplerd = "samplerd.service.cli.main:main"' in text
