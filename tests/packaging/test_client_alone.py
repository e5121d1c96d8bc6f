"""The three distributions build as wheels, and the client installs and runs alone: a fresh
virtual environment with only the core and the client (and what they depend on from the
package index) runs `counterpart --help` and a verified `find` against a real node, without
the node's storage stack (SQLAlchemy, Alembic) or its code."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import venv
import zipfile
from pathlib import Path

import grpc

from counterpart_core import federation as fed
from directory_server.service.server import NodeServer

REPO = Path(__file__).resolve().parents[2]
Served = tuple[NodeServer, grpc.Channel]


def build_wheels(out: Path) -> dict[str, Path]:
    """Wheels of the three distributions, built from a copy of the tracked sources (a build in
    the working tree would leave egg-info and build/ behind)."""
    src = out.parent / "src"
    tracked = subprocess.run(["git", "ls-files", "-z"], cwd=REPO, check=True, capture_output=True).stdout
    for name in tracked.decode().split("\0"):
        if name and (REPO / name).is_file():
            (src / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / name, src / name)
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--wheel-dir", str(out),
         str(src / "packages" / "core"), str(src / "packages" / "client"), str(src)],
        check=True, capture_output=True, text=True,
    )
    wheels = {p.name.split("-")[0]: p for p in out.glob("*.whl")}
    assert set(wheels) == {"counterpart_directory_core", "counterpart_directory_client", "counterpart_directory"}, wheels
    return wheels


def test_wheels_hold_what_each_distribution_is(tmp_path: Path) -> None:
    wheels = build_wheels(tmp_path)
    tops = {
        name: {n.split("/")[0] for n in zipfile.ZipFile(path).namelist() if not n.split("/")[0].endswith(".dist-info")}
        for name, path in wheels.items()
    }
    assert tops == {
        "counterpart_directory_core": {"counterpart", "counterpart_core"},
        "counterpart_directory_client": {"directory_client"},
        "counterpart_directory": {"directory_server"},
    }
    core = zipfile.ZipFile(wheels["counterpart_directory_core"]).namelist()
    assert "counterpart_core/data/vocabularies.yaml" in core
    for name, path in wheels.items():
        meta = zipfile.ZipFile(path).read(f"{path.name.split('-')[0]}-{path.name.split('-')[1]}.dist-info/METADATA").decode()
        assert "License-Expression: Apache-2.0" in meta, name
    client_meta = zipfile.ZipFile(wheels["counterpart_directory_client"]).read(
        "counterpart_directory_client-0.2.0.dist-info/METADATA"
    ).decode()
    requires = [line for line in client_meta.splitlines() if line.startswith("Requires-Dist:")]
    assert not any(dep in line.lower() for line in requires for dep in ("sqlalchemy", "alembic", "psycopg"))
    # the offline copy is an extra that brings the node
    assert 'Requires-Dist: counterpart-directory==0.2.0; extra == "offline"' in requires, requires


def test_the_client_installs_and_answers_alone(tmp_path: Path, served: Served) -> None:
    wheels = build_wheels(tmp_path / "wheels")
    env_dir = tmp_path / "client-only"
    venv.EnvBuilder(with_pip=True).create(env_dir)
    py, cli = env_dir / "bin" / "python", env_dir / "bin" / "counterpart"
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("COUNTERPART_", "PYTHON", "VIRTUAL_ENV"))}
    install = subprocess.run(
        [str(py), "-m", "pip", "install", "--quiet", str(wheels["counterpart_directory_core"]),
         str(wheels["counterpart_directory_client"])],
        capture_output=True, text=True, env=clean, timeout=600, check=False,
    )
    assert install.returncode == 0, install.stderr[-3000:]
    # none of the node: neither its code nor its storage stack
    for module in ("directory_server", "sqlalchemy", "alembic"):
        # from outside the repository: `python -c` imports from the working directory
        probe = subprocess.run(
            [str(py), "-c", f"import {module}"], capture_output=True, text=True, env=clean, cwd=tmp_path, check=False,
        )
        assert probe.returncode != 0, f"{module} is importable in the client-only environment"

    home = tmp_path / "home"
    env = {**clean, "COUNTERPART_HOME": str(home), "COLUMNS": "80"}
    helped = subprocess.run([str(cli), "--help"], capture_output=True, text=True, env=env, timeout=60, check=False)
    assert helped.returncode == 0 and "Exit codes" in helped.stdout

    envelope = served[0].node.store.federation_envelope()
    assert envelope is not None
    fed.write_file(tmp_path / "federation.json", envelope)
    trusted = subprocess.run([str(cli), "trust", str(tmp_path / "federation.json")], capture_output=True, text=True,
                             env=env, timeout=60, check=False)
    assert trusted.returncode == 0, trusted.stderr
    found = subprocess.run(
        [str(cli), "find", "--in", "GE", "--type", "mla.hearing.witness", "--place", "Batumi", "--format", "json",
         "--server", served[0].address],
        capture_output=True, text=True, env=env, timeout=60, check=False,
    )
    assert found.returncode == 0, found.stderr
    doc = json.loads(found.stdout)
    assert doc["verification"]["verified"] and doc["verification"]["records_checked"] > 0
    assert doc["answer"]["candidates"]
    # the offline copy needs the node: a usage error saying what to install
    for args in (["mirror", "--server", served[0].address], ["--offline", "find", "--in", "GE", "--type", "mla.general"]):
        offline = subprocess.run([str(cli), *args], capture_output=True, text=True, env=env, timeout=60, check=False)
        assert offline.returncode == 2, offline.stderr
        assert "pip install 'counterpart-directory-client[offline]'" in offline.stderr, offline.stderr
