"""The committed code in packages/core/src/counterpart/v1 must be what protos/ generates with
the pinned tools."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def test_generated_code_is_fresh(tmp_path: Path) -> None:
    subprocess.run([sys.executable, str(REPO / "scripts" / "gen_protos.py"), str(tmp_path)], check=True, capture_output=True)
    fresh = {p.relative_to(tmp_path): p.read_bytes() for p in (tmp_path / "counterpart").rglob("*") if p.is_file()}
    core = REPO / "packages" / "core" / "src"
    committed = {
        p.relative_to(core): p.read_bytes()
        for p in (core / "counterpart").rglob("*")
        if p.is_file() and "__pycache__" not in p.parts
    }
    assert fresh, "generation produced no files"
    stale = sorted(str(k) for k in fresh.keys() | committed.keys() if fresh.get(k) != committed.get(k))
    assert not stale, f"generated code is stale; run `make generate`: {stale}"
