"""Regenerate the Python code for protos/ (messages, gRPC stubs, mypy stubs).

Usage: python scripts/gen_protos.py [OUT_DIR]   (default: packages/core/src)

Tool versions are pinned in pyproject.toml (grpcio-tools, mypy-protobuf), so the
output is reproducible; tests/unit/test_generated_fresh.py regenerates into a
temporary folder and fails when the committed code differs.
"""

from __future__ import annotations

import sys
from importlib import resources
from pathlib import Path

from grpc_tools import protoc

ROOT = Path(__file__).resolve().parent.parent
PROTOS = ROOT / "protos"
CORE_SRC = ROOT / "packages" / "core" / "src"  # the generated code ships with the verification core


def generate(out: Path) -> list[Path]:
    """Generate into out/counterpart/v1 and return the files written."""
    sources = sorted(str(p.relative_to(PROTOS)) for p in (PROTOS / "counterpart" / "v1").glob("*.proto"))
    pkg = out / "counterpart" / "v1"
    pkg.mkdir(parents=True, exist_ok=True)
    well_known = str(resources.files("grpc_tools") / "_proto")
    bindir = Path(sys.executable).parent  # the venv's scripts, where mypy-protobuf's plugins are
    args = [
        "protoc",
        f"--plugin=protoc-gen-mypy={bindir / 'protoc-gen-mypy'}",
        f"--plugin=protoc-gen-mypy_grpc={bindir / 'protoc-gen-mypy_grpc'}",
        f"-I{PROTOS}",
        f"-I{well_known}",
        f"--python_out={out}",
        f"--grpc_python_out={out}",
        f"--mypy_out={out}",
        f"--mypy_grpc_out={out}",
        *sources,
    ]
    if protoc.main(args) != 0:
        raise SystemExit("protoc failed")
    for init in (out / "counterpart" / "__init__.py", pkg / "__init__.py"):
        init.write_text('"""Generated from protos/ by scripts/gen_protos.py; do not edit."""\n')
    (out / "counterpart" / "py.typed").write_text("")
    return sorted(p for p in (out / "counterpart").rglob("*") if p.is_file())


if __name__ == "__main__":
    target = Path(sys.argv[1]) if len(sys.argv) > 1 else CORE_SRC
    for path in generate(target):
        print(path.relative_to(target))
