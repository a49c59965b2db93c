"""Regenerate the Python protobuf/gRPC code of ``proto/`` into ``service/generated/``.

``python proto/generate.py`` rewrites the generated package; ``python proto/generate.py
--check`` exits 1 when the committed code is stale. The generated modules are the only home
of the protobuf code: everything imports them as ``samplerd.service.generated.samplerd.v1`` (and the
Open Inference Protocol copy as ``samplerd.service.generated.inference``).

protoc writes imports relative to the proto root (``from samplerd.v1 import ...``, ``from
inference import ...``); they are rewritten to the package path so the code works without
touching ``sys.path``.
"""

from __future__ import annotations

import argparse
import re
import sys
import tempfile
from importlib import resources
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
PROTO_ROOT = REPO_ROOT / "proto"
GENERATED_ROOT = REPO_ROOT / "service" / "generated"
PACKAGE = "samplerd.service.generated"

# The top-level proto packages (directories under proto/) whose generated imports are rewritten.
_PROTO_PACKAGES = ("samplerd", "inference")
_IMPORT_RE = re.compile(rf"^(from|import) ({'|'.join(_PROTO_PACKAGES)})\b", flags=re.MULTILINE)
# Lines naming the generator's version: left out of the staleness comparison, so the check is
# about the .proto content rather than which grpcio-tools release happens to be installed.
_VERSION_RE = re.compile(
    r"^# Protobuf Python Version:[^\n]*$|^GRPC_GENERATED_VERSION = [^\n]*$"
    r"|^_runtime_version\.ValidateProtobufRuntimeVersion\([^)]*\)$",
    flags=re.MULTILINE,
)


def proto_files() -> list[Path]:
    """Every ``.proto`` under ``proto/``, relative to it, sorted."""
    return sorted(p.relative_to(PROTO_ROOT) for p in PROTO_ROOT.rglob("*.proto"))


def generate(out_dir: Path) -> dict[Path, str]:
    """Run protoc on every proto file into ``out_dir``; return ``{relative path: text}``.

    The result includes an ``__init__.py`` for every package directory and has its imports
    rewritten to live under :data:`PACKAGE`.
    """
    from grpc_tools import protoc

    include = resources.files("grpc_tools") / "_proto"
    args = [
        "grpc_tools.protoc",
        f"-I{PROTO_ROOT}",
        f"-I{include}",
        f"--python_out={out_dir}",
        f"--pyi_out={out_dir}",
        f"--grpc_python_out={out_dir}",
        *[str(p) for p in proto_files()],
    ]
    if protoc.main(args) != 0:
        raise RuntimeError("protoc failed: " + " ".join(args))
    files: dict[Path, str] = {Path("__init__.py"): '"""Generated protobuf code; see proto/generate.py."""\n'}
    for path in sorted(out_dir.rglob("*.py*")):
        rel = path.relative_to(out_dir)
        files[rel] = _IMPORT_RE.sub(rf"\1 {PACKAGE}.\2", path.read_text())
        for parent in rel.parents:
            if parent != Path("."):
                files.setdefault(parent / "__init__.py", "")
    return files


def stale_files(generated: dict[Path, str], root: Path = GENERATED_ROOT) -> list[Path]:
    """The generated files whose committed copy under ``root`` is missing or different."""
    stale = []
    for rel, text in generated.items():
        target = root / rel
        if not target.exists() or _normalise(target.read_text()) != _normalise(text):
            stale.append(rel)
    return stale


def _normalise(text: str) -> str:
    return _VERSION_RE.sub("", text)


def write(generated: dict[Path, str], root: Path = GENERATED_ROOT) -> None:
    """Write the generated files under ``root``."""
    for rel, text in generated.items():
        target = root / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(text)


def main(argv: list[str] | None = None) -> int:
    """Command line: regenerate, or with ``--check`` report stale generated code."""
    parser = argparse.ArgumentParser(prog="python proto/generate.py", description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="exit 1 if service/generated is stale")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        generated = generate(Path(tmp))
    if args.check:
        stale = stale_files(generated)
        for rel in stale:
            print(f"stale: service/generated/{rel} (run: python proto/generate.py)", file=sys.stderr)
        return 1 if stale else 0
    write(generated)
    return 0


if __name__ == "__main__":
    sys.exit(main())
