"""The deployment files under deploy/, checked on a machine with no Docker engine and no
Kubernetes cluster: what can be checked offline is checked, by the tools their formats have.

- deploy/Dockerfile: hadolint (every warning fails; an ignored rule needs a comment saying
  why), and the image's contract: multi-stage, slim final stage without compilers, non-root
  numeric user, ENTRYPOINT counterpart-node, the data volume, the health probe, wheels
  installed by file name (no distribution name).
- deploy/compose.yaml: the compose-spec JSON schema vendored in check-jsonschema; and
  deploy/compose-init.sh: shellcheck, then run for real against the real `counterpart-node`
  with tests/deploy/fake_docker.py standing in for `docker compose run` (same volumes,
  secrets, ENTRYPOINT, ENV and WORKDIR as compose.yaml and the Dockerfile say).
- deploy/k8s: kubernetes-validate --strict against pinned Kubernetes versions (schemas bundled,
  offline), the three member files kept identical but for the member, the security context.
- deploy/counterpart-node.service: systemd-analyze verify, and its security rating.
- deploy/healthcheck.py: against a real node serving TLS on loopback.
- Everywhere: every option (node.toml keys, COUNTERPART_* variables) is a field of NodeConfig,
  every `counterpart-node` command line names a subcommand and options the CLI has, ports
  agree between files, secrets are placeholders and no private key is in deploy/.

Each tool is first shown a file it must reject, so that a tool that silently checks nothing
fails the test; a missing tool skips its test with the reason (pytest -ra prints it).
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import re
import shlex
import shutil
import stat
import subprocess
import sys
import time
import tomllib
from collections.abc import Iterator
from datetime import UTC, datetime
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any

import click
import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"
K8S = DEPLOY / "k8s"
HERE = Path(__file__).resolve().parent
BIN = Path(sys.executable).parent
# Kubernetes versions the manifests are validated against: the oldest and the newest that
# kubernetes-validate 1.37 bundles which the manifests are meant for.
K8S_VERSIONS = ("1.33.0", "1.37.0")
MEMBERS = {"GE": "Georgia", "AZ": "Azerbaijan", "AM": "Armenia"}
DATA = "/var/lib/counterpart"
PRIVATE_KEY = re.compile(r"-----BEGIN [A-Z0-9 ]*PRIVATE KEY-----")


def tool(name: str) -> str:
    """A tool from this venv (the dev extra) or the PATH; skip the test if it is missing."""
    here = BIN / name
    found = str(here) if here.exists() else shutil.which(name)
    if found is None:
        pytest.skip(f"{name} is not installed here (pip install -e '.[dev]' brings it)")
    return found


def run(args: list[str], **kwargs: Any) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, capture_output=True, text=True, timeout=180, check=False, **kwargs)


def report(name: str, version_args: list[str]) -> str:
    """The tool's version, printed (pytest -rP shows it) and returned."""
    result = run(version_args)
    lines = (result.stdout + result.stderr).strip().splitlines()
    version = next((line for line in lines if re.search(r"\d+\.\d+", line)), lines[0])
    print(f"{name}: {version}")
    return version


def yaml_docs(path: Path) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(path.read_text(encoding="utf-8")) if d]


# --- what the project offers: options, variables, commands ---------------------------------


@functools.cache
def node_options() -> frozenset[str]:
    from directory_server.config import NodeConfig

    return frozenset(f.name for f in dataclasses.fields(NodeConfig)) - {"data_dir"}


@functools.cache
def cli() -> dict[tuple[str, ...], frozenset[str]]:
    """Every command path of `counterpart-node` and its options, from the installed entry
    point (whatever the package that provides it is called)."""
    (entry,) = entry_points(group="console_scripts", name="counterpart-node")
    commands: dict[tuple[str, ...], frozenset[str]] = {}

    def walk(command: click.Command, path: tuple[str, ...]) -> None:
        options = {o for p in command.params for o in (*p.opts, *p.secondary_opts) if o.startswith("-")}
        commands[path] = frozenset(options | {"--help", "-h"})
        if isinstance(command, click.Group):
            for name, sub in command.commands.items():
                walk(sub, (*path, name))

    walk(entry.load(), ())
    return commands


@functools.cache
def project_sources() -> str:
    """The project's Python code outside deploy/ and tests/ (where its variables are read),
    and the health probe (which reads its own)."""
    skip = {"deploy", "tests", ".venv", "node_modules", ".git", "bench"}
    return "\n".join(
        p.read_text(encoding="utf-8", errors="replace")
        for p in [*REPO.rglob("*.py"), DEPLOY / "healthcheck.py"]
        if p.parent == DEPLOY or not skip & set(p.relative_to(REPO).parts[:1])
    )


def check_command(args: list[str], where: str) -> tuple[str, ...]:
    """`counterpart-node ARGS` names a runnable subcommand and only options it has."""
    commands = cli()
    path: tuple[str, ...] = ()
    rest = list(args)
    while rest and (*path, rest[0]) in commands:
        path = (*path, rest.pop(0))
    subcommands = [k for k in commands if len(k) == len(path) + 1 and k[: len(path)] == path]
    assert path and not subcommands, f"{where}: `counterpart-node {shlex.join(args)}` names no subcommand"
    for arg in rest:
        if arg.startswith("-"):
            option = arg.split("=", 1)[0]
            assert option in commands[path], f"{where}: `counterpart-node {' '.join(path)}` has no option {option}"
    return path


def check_variable(name: str, where: str) -> None:
    """A COUNTERPART_* variable is a node option (COUNTERPART_<FIELD>) or read by the code."""
    key = name.removeprefix("COUNTERPART_").lower()
    if key in node_options():
        return
    assert re.search(rf"\b{name}\b", project_sources()), (
        f"{where}: {name} is neither COUNTERPART_<a NodeConfig field> nor read anywhere in the project"
    )


def check_options(toml_text: str, where: str) -> dict[str, Any]:
    config = tomllib.loads(toml_text)
    unknown = sorted(set(config) - node_options())
    assert not unknown, f"{where}: {unknown} are not NodeConfig fields"
    return config


def port(address: str) -> int:
    return int(address.rsplit(":", 1)[1])


# --- the Dockerfile -------------------------------------------------------------------------


@functools.cache
def dockerfile_stages() -> list[list[tuple[str, str]]]:
    """(instruction, arguments) per stage, continuation lines joined, comments dropped."""
    text = re.sub(r"\\\n", " ", (DEPLOY / "Dockerfile").read_text(encoding="utf-8"))
    stages: list[list[tuple[str, str]]] = []
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        word, _, rest = line.partition(" ")
        if word.upper() == "FROM":
            stages.append([])
        if stages:
            stages[-1].append((word.upper(), " ".join(rest.split())))
    return stages


def instruction(stage: list[tuple[str, str]], word: str) -> list[str]:
    return [rest for w, rest in stage if w == word]


def image_uid() -> int:
    (user,) = instruction(dockerfile_stages()[-1], "USER")
    return int(user.split(":")[0])


def test_hadolint_passes_the_dockerfile() -> None:
    hadolint = tool("hadolint")
    assert "2." in report("hadolint", [hadolint, "--version"])
    bad = run([hadolint, "--no-color", "-"], input="FROM python:latest\nRUN apt-get install gcc\n")
    assert bad.returncode != 0 and "DL3007" in bad.stdout, f"hadolint did not flag a bad Dockerfile: {bad}"
    result = run([hadolint, "--no-color", "--failure-threshold", "style", str(DEPLOY / "Dockerfile")])
    assert result.returncode == 0 and not result.stdout.strip(), result.stdout + result.stderr
    lines = (DEPLOY / "Dockerfile").read_text(encoding="utf-8").splitlines()
    for i, line in enumerate(lines):
        if "hadolint ignore" in line:
            assert i > 0 and lines[i - 1].startswith("#") and "hadolint" not in lines[i - 1], (
                f"Dockerfile line {i + 1}: an ignored hadolint rule needs a comment above it saying why"
            )


def test_the_image_is_multi_stage_slim_non_root_and_runs_the_node() -> None:
    stages = dockerfile_stages()
    assert len(stages) >= 2, "a build stage and a run stage"
    final = stages[-1]
    (base,) = instruction(final, "FROM")
    assert re.fullmatch(r"python:\$\{PYTHON_VERSION\}-slim-\w+", base), base
    assert 'ARG PYTHON_VERSION=3.11' in (DEPLOY / "Dockerfile").read_text(encoding="utf-8")
    runs = " ".join(instruction(final, "RUN"))
    for compiler in ("gcc", "build-essential", "apt-get install", "g++", "clang"):
        assert compiler not in runs, f"the final stage installs {compiler}"
    # the wheels of the build stage, by file name: no distribution name to keep in step
    assert "pip wheel" in " ".join(instruction(stages[0], "RUN"))
    assert re.search(r"pip install [^&]*--no-index [^&]*/wheels/\*\.whl", runs), runs
    assert "from=build" in runs, "wheels are bind-mounted from the build stage, not copied into a layer"
    assert 0 < image_uid() < 65536 and image_uid() != 0
    assert json.loads(instruction(final, "ENTRYPOINT")[0]) == ["counterpart-node"]
    cmd = json.loads(instruction(final, "CMD")[0])
    check_command(cmd, "Dockerfile CMD")
    assert cmd[cmd.index("--passphrase-file") + 1].startswith("/run/secrets/")
    assert json.loads(instruction(final, "VOLUME")[0]) == [DATA]
    env = dict(t.split("=", 1) for t in shlex.split(" ".join(instruction(final, "ENV"))))
    assert env["COUNTERPART_DATA_DIR"] == DATA
    for name in env:
        if name.startswith("COUNTERPART_"):
            check_variable(name, "Dockerfile ENV")
    (health,) = instruction(final, "HEALTHCHECK")
    assert health.endswith('CMD ["counterpart-healthcheck"]'), health
    assert any(c.endswith("deploy/healthcheck.py /usr/local/bin/counterpart-healthcheck")
               for c in instruction(final, "COPY"))
    exposed = {int(p) for p in " ".join(instruction(final, "EXPOSE")).split()}
    assert exposed == set(ports_of_k8s_node()), (exposed, ports_of_k8s_node())
    ignored = (DEPLOY / "Dockerfile.dockerignore").read_text(encoding="utf-8").split()
    assert {".git", ".venv", "deploy/secrets"} <= set(ignored)
    assert not {"pyproject.toml", "README.md", "deploy", "deploy/healthcheck.py", "*"} & set(ignored)


# --- compose --------------------------------------------------------------------------------


@functools.cache
def compose() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load((DEPLOY / "compose.yaml").read_text(encoding="utf-8"))
    return loaded


def test_compose_file_matches_the_compose_spec_schema(tmp_path: Path) -> None:
    checker = tool("check-jsonschema")
    report("check-jsonschema", [checker, "--version"])
    broken = dict(compose(), services={"ge": {"image": "x", "ports": 7700, "restart": "sometimes"}})
    (tmp_path / "broken.yaml").write_text(yaml.safe_dump(broken), encoding="utf-8")
    bad = run([checker, "--builtin-schema", "vendor.compose-spec", str(tmp_path / "broken.yaml")])
    assert bad.returncode == 1 and "ports" in bad.stdout + bad.stderr, f"the schema let a broken file pass: {bad}"
    result = run([checker, "--builtin-schema", "vendor.compose-spec", str(DEPLOY / "compose.yaml")])
    assert result.returncode == 0 and "ok -- validation done" in result.stdout, result.stdout + result.stderr


def test_compose_services_agree_with_the_node() -> None:
    c = compose()
    nodes = {code.lower() for code in MEMBERS}
    assert nodes <= set(c["services"])
    for name, service in c["services"].items():
        command = service["command"]
        check_command(command, f"compose service {name}")
        for variable in service.get("environment") or {}:
            check_variable(variable, f"compose service {name}")
        assert service["read_only"] is True and service["cap_drop"] == ["ALL"]
        assert "no-new-privileges:true" in service["security_opt"]
        (volume,) = service["volumes"]
        assert volume.split(":")[1] == DATA and volume.split(":")[0] in c["volumes"]
        (secret,) = service["secrets"]
        assert secret["target"] == "passphrase" and secret["source"] in c["secrets"]
        assert c["secrets"][secret["source"]]["file"].startswith("./secrets/")
        if name not in nodes:
            assert service.get("profiles"), f"{name} is not a node: keep it out of `docker compose up`"
            continue
        assert command[command.index("--passphrase-file") + 1] == "/run/secrets/passphrase"
        published = {int(p.split(":")[-1]): p for p in service["ports"]}
        metrics = service["environment"]["COUNTERPART_METRICS_LISTEN"]
        assert set(published) == {7700, port(metrics)}, published
        assert all(p.startswith("127.0.0.1:") for p in published.values()), "published on the host's loopback only"
        assert service["expose"] == ["7701"]
    assert (DEPLOY / ".gitignore").read_text(encoding="utf-8").split() == ["secrets/"]
    tracked = run(["git", "ls-files", "deploy/secrets"], cwd=REPO)
    assert tracked.returncode == 0 and not tracked.stdout.strip(), "a compose secret is tracked by git"


def test_compose_init_passes_shellcheck() -> None:
    shellcheck = tool("shellcheck")
    report("shellcheck", [shellcheck, "--version"])
    bad = run([shellcheck, "-s", "sh", "-"], input="#!/bin/sh\nrm -rf $1/*\n")
    assert bad.returncode != 0 and "SC2086" in bad.stdout, f"shellcheck did not flag a bad script: {bad}"
    result = run([shellcheck, str(DEPLOY / "compose-init.sh")])
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.fixture(scope="module")
def compose_init(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """deploy/compose-init.sh --sample-data, run with the fake `docker` (a copy of deploy/ in a
    temporary directory, so that the secrets it creates stay out of the repository)."""
    root = tmp_path_factory.mktemp("compose")
    (root / "deploy").mkdir()
    for name in ("compose.yaml", "compose-init.sh", "Dockerfile"):
        shutil.copy2(DEPLOY / name, root / "deploy" / name)
    (root / "sample_data").symlink_to(REPO / "sample_data")
    bin_dir = root / "bin"
    bin_dir.mkdir()
    (bin_dir / "docker").write_text(
        f'#!/bin/sh\nexec {shlex.quote(sys.executable)} {shlex.quote(str(HERE / "fake_docker.py"))} "$@"\n',
        encoding="utf-8",
    )
    (bin_dir / "docker").chmod(0o755)
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("COUNTERPART_")},
        "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}",
        "FAKE_DOCKER_ROOT": str(root / "docker"),
        "FAKE_DOCKER_LOG": str(root / "docker.log"),
        "FAKE_DOCKER_PRELOAD": str(root / "preload.sock"),
    }
    with open(root / "preload.log", "wb") as log:
        preload = subprocess.Popen(
            [sys.executable, str(HERE / "fake_docker.py"), "--preload", env["FAKE_DOCKER_PRELOAD"]],
            env=env, stdin=subprocess.DEVNULL, stdout=log, stderr=log,
        )
    try:
        deadline = time.monotonic() + 60
        while not Path(env["FAKE_DOCKER_PRELOAD"]).exists():
            assert preload.poll() is None and time.monotonic() < deadline, (root / "preload.log").read_text()
            time.sleep(0.05)
        script = str(root / "deploy" / "compose-init.sh")
        first = run(["sh", script, "--sample-data"], env=env, cwd=root)
        again = run(["sh", script], env=env, cwd=root)
    finally:
        preload.terminate()
        preload.wait(timeout=10)
    calls = [json.loads(line) for line in (root / "docker.log").read_text(encoding="utf-8").splitlines()]
    yield {"root": root, "first": first, "again": again, "calls": calls,
           "volumes": root / "docker" / "volumes", "secrets": root / "deploy" / "secrets"}


def node_calls(calls: list[list[str]]) -> Iterator[tuple[str, list[str]]]:
    """(service, args) of each `docker compose run` of the image's entrypoint."""
    for argv in calls:
        if argv[3:4] != ["run"] or "--entrypoint" in argv:
            continue
        rest = argv[4:]
        while rest[0].startswith("-"):
            rest = rest[2:] if rest[0] == "-v" else rest[1:]
        yield rest[0], rest[1:]


def test_compose_init_creates_the_federation_with_the_demo_commands(compose_init: dict[str, Any]) -> None:
    first = compose_init["first"]
    assert first.returncode == 0, f"compose-init.sh failed:\n{first.stdout}\n{first.stderr}"
    assert "Done." in first.stdout
    again = compose_init["again"]
    assert again.returncode == 1 and "already exists" in again.stderr, "a second run must refuse, not re-create keys"

    used: dict[tuple[str, ...], int] = {}
    for service, args in node_calls(compose_init["calls"]):
        assert service in compose()["services"]
        path = check_command(args, f"compose-init.sh ({service})")
        used[path] = used.get(path, 0) + 1
    # the demo's sequence (scripts/demo.py), three members, two root keys
    assert used == {
        ("federation", "keygen"): 2, ("federation", "init"): 1, ("init",): 3, ("federation", "add-member"): 3,
        ("federation", "sign"): 2, ("federation", "verify"): 1, ("federation", "install"): 3, ("publish",): 3,
    }, used

    uid = image_uid()
    for name in ("secretariat", "ge", "az", "am"):
        secret = compose_init["secrets"] / f"{name}.passphrase"
        mode = stat.S_IMODE(secret.stat().st_mode)
        if os.getuid() == 0:
            assert secret.stat().st_uid == uid and mode == 0o400
        else:
            assert mode == 0o444
        assert len(secret.read_text(encoding="utf-8")) >= 32
    assert stat.S_IMODE(compose_init["secrets"].stat().st_mode) == 0o700

    from counterpart_core import federation as fed
    from directory_server.config import load_config

    volumes: Path = compose_init["volumes"]
    c = compose()
    envelope = (volumes / "secretariat-data" / "federation.json").read_bytes()
    doc, good, threshold = fed.signature_status(fed.read_file(volumes / "secretariat-data" / "federation.json"))
    assert (doc.version, threshold, good, len(doc.root_keys)) == (1, 2, 2, 2)
    assert sorted(m.code for m in doc.members) == sorted(MEMBERS)
    for m in doc.members:
        service = c["services"][m.code.lower()]
        data = volumes / service["volumes"][0].split(":")[0]
        public = {int(p.split(":")[-1]) for p in service["ports"]}
        assert list(m.endpoints) == [f"{m.code.lower()}:7700"] and 7700 in public
        assert list(m.peer_endpoints) == [f"{m.code.lower()}:{service['expose'][0]}"]
        assert m.display_name == MEMBERS[m.code]
        config = load_config(data)
        assert (config.member, config.tls, port(config.listen), port(config.peer_listen)) == (m.code, "on", 7700, 7701)
        assert (data / "federation.json").read_bytes() == envelope
        for key in ("node-key.pem", "tls-key.pem"):
            assert stat.S_IMODE((data / "keys" / key).stat().st_mode) == 0o600

    status = run([str(BIN / "counterpart-node"), "status", "--format", "json",
                  "--data-dir", str(volumes / "ge-data")])
    assert status.returncode == 0, status.stderr
    state = json.loads(status.stdout)
    assert state["federation_version"] == 1 and state["tls"]["listed"] is True
    assert {r["member"]: r["log_size"] for r in state["members"]}["GE"] > 0, "GE's sample data was published"


# --- Kubernetes -----------------------------------------------------------------------------


def k8s_files() -> list[Path]:
    return sorted(K8S.glob("*.yaml")) + sorted((K8S / "examples").glob("*.yaml"))


def member_variant(text: str, code: str) -> str:
    """node-ge.yaml as it reads for another member."""
    low = code.lower()
    return (text.replace("counterpart-ge", f"counterpart-{low}").replace('"GE"', f'"{code}"')
            .replace("GE's", f"{code}'s").replace("node of GE:", f"node of {code}:"))


def statefulset(code: str) -> dict[str, Any]:
    (sts,) = [d for d in yaml_docs(K8S / f"node-{code.lower()}.yaml") if d["kind"] == "StatefulSet"]
    return sts


def ports_of_k8s_node() -> dict[int, str]:
    (container,) = statefulset("GE")["spec"]["template"]["spec"]["containers"]
    return {p["containerPort"]: p["name"] for p in container["ports"]}


@pytest.mark.parametrize("version", K8S_VERSIONS)
def test_kubernetes_manifests_validate_strictly(version: str, tmp_path: Path) -> None:
    validate = tool("kubernetes-validate")
    report("kubernetes-validate", [validate, "--version"])
    broken = statefulset("GE")
    broken["spec"]["template"]["spec"]["containers"][0]["livenessProbe"]["grpcc"] = {"port": 7700}
    (tmp_path / "broken.yaml").write_text(yaml.safe_dump(broken), encoding="utf-8")
    bad = run([validate, "--strict", "-k", version, str(tmp_path / "broken.yaml")])
    assert bad.returncode != 0 and "grpcc" in bad.stdout + bad.stderr, f"a broken manifest passed: {bad}"
    files = k8s_files()
    result = run([validate, "--strict", "-k", version, *map(str, files)])
    assert result.returncode == 0, result.stdout + result.stderr
    resources = sum(len(yaml_docs(f)) for f in files)
    passed = re.findall(r"passed for resource", result.stdout + result.stderr)
    assert len(passed) == resources >= 13, result.stdout + result.stderr


def test_member_manifests_differ_only_in_the_member() -> None:
    ge = (K8S / "node-ge.yaml").read_text(encoding="utf-8")
    for code in ("AZ", "AM"):
        assert (K8S / f"node-{code.lower()}.yaml").read_text(encoding="utf-8") == member_variant(ge, code), (
            f"node-{code.lower()}.yaml drifted from node-ge.yaml: regenerate it (member_variant in this test)"
        )


@pytest.mark.parametrize("code", list(MEMBERS))
def test_kubernetes_node_agrees_with_the_node_and_the_image(code: str) -> None:
    docs = {(d["kind"], d["metadata"]["name"]): d for d in yaml_docs(K8S / f"node-{code.lower()}.yaml")}
    name = f"counterpart-{code.lower()}"
    config_map = docs[("ConfigMap", f"{name}-config")]
    config = check_options(config_map["data"]["node.toml"], f"{name}-config node.toml")
    assert (config["member"], config["tls"]) == (code, "on")
    sts = docs[("StatefulSet", name)]
    assert sts["spec"]["replicas"] == 1 and sts["spec"]["serviceName"] == f"{name}-headless"
    pod = sts["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] == pod["securityContext"]["fsGroup"] == image_uid()
    assert pod["securityContext"]["seccompProfile"]["type"] == "RuntimeDefault"
    assert pod["automountServiceAccountToken"] is False and pod["enableServiceLinks"] is False
    (node,) = pod["containers"]
    (bootstrap,) = pod["initContainers"]
    for container in (node, bootstrap):
        sc = container["securityContext"]
        assert sc["readOnlyRootFilesystem"] is True and sc["allowPrivilegeEscalation"] is False
        assert sc["capabilities"]["drop"] == ["ALL"]
        assert container["resources"]["requests"] and container["resources"]["limits"]["memory"]
    check_command(node["args"], f"{name} StatefulSet")
    env = {e["name"]: e.get("value") for e in node.get("env", [])}
    for variable in env:
        check_variable(variable, f"{name} StatefulSet")
    ports = {p["name"]: p["containerPort"] for p in node["ports"]}
    assert ports == {"public": port(config["listen"]), "peer": port(config["peer_listen"]),
                     "metrics": port(env["COUNTERPART_METRICS_LISTEN"])}
    for kind in ("startupProbe", "readinessProbe", "livenessProbe"):
        probe = node[kind]
        assert probe["exec"]["command"] == ["counterpart-healthcheck"] and "grpc" not in probe
    mounts = {m["mountPath"]: m["name"] for m in node["volumeMounts"]}
    assert mounts[DATA] == "data"
    passphrase = node["args"][node["args"].index("--passphrase-file") + 1]
    assert mounts[str(Path(passphrase).parent)] == "passphrase"
    keys_dir = {str(Path(config[k]).parent) for k in ("key_file", "tls_key_file", "tls_cert_file")}
    assert len(keys_dir) == 1 and mounts[keys_dir.pop()] == "keys"
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert volumes["keys"]["emptyDir"]["medium"] == "Memory"
    assert volumes["config"]["configMap"]["name"] == f"{name}-config"
    assert sts["spec"]["volumeClaimTemplates"][0]["metadata"]["name"] == "data"
    script = bootstrap["args"][0]
    for line in script.splitlines():
        words = shlex.split(line)
        if "counterpart-node" in words:
            args = words[words.index("counterpart-node") + 1 :]
            check_command([a for a in args if not a.startswith(">")][:4], f"{name} bootstrap")
        if words[:1] == ["install"]:
            for source in words[3:-1]:
                mount = str(Path(source).parent)
                assert mount in {m["mountPath"] for m in bootstrap["volumeMounts"]}, source
    for service_name in (name, f"{name}-headless"):
        service = docs[("Service", service_name)]
        assert service["spec"]["selector"] == sts["spec"]["selector"]["matchLabels"]
        assert {p["targetPort"] for p in service["spec"]["ports"]} <= set(ports)
        assert {"public", "peer"} <= {p["name"] for p in service["spec"]["ports"]}
    assert docs[("Service", f"{name}-headless")]["spec"]["clusterIP"] == "None"


def test_kubernetes_bootstrap_script_passes_shellcheck() -> None:
    shellcheck = tool("shellcheck")
    (bootstrap,) = statefulset("GE")["spec"]["template"]["spec"]["initContainers"]
    assert bootstrap["command"] == ["/bin/sh", "-ec"]
    result = run([shellcheck, "-s", "sh", "-"], input=bootstrap["args"][0])
    assert result.returncode == 0, result.stdout


def test_secrets_are_placeholders_and_only_in_examples() -> None:
    secrets = 0
    for path in k8s_files():
        for doc in yaml_docs(path):
            if doc["kind"] != "Secret":
                continue
            secrets += 1
            assert path.parent.name == "examples", f"{path}: a Secret outside examples/ would be applied with the rest"
            assert "data" not in doc, f"{path}: example values go in stringData, readable as placeholders"
            for key, value in doc["stringData"].items():
                assert value.startswith("PLACEHOLDER"), f"{path}: {doc['metadata']['name']}.{key} is not a placeholder"
    assert secrets >= 3
    for path in DEPLOY.rglob("*"):
        if path.is_file() and "secrets" not in path.relative_to(DEPLOY).parts:
            text = path.read_text(encoding="utf-8", errors="replace")
            assert not PRIVATE_KEY.search(text), f"{path} holds a private key"


# --- systemd --------------------------------------------------------------------------------


def unit() -> dict[str, list[str]]:
    values: dict[str, list[str]] = {}
    for line in (DEPLOY / "counterpart-node.service").read_text(encoding="utf-8").splitlines():
        if "=" in line and not line.startswith(("#", ";", "[")):
            key, _, value = line.partition("=")
            values.setdefault(key.strip(), []).append(value.strip())
    return values


def test_systemd_unit_verifies(tmp_path: Path) -> None:
    analyze = tool("systemd-analyze")
    report("systemd-analyze", [analyze, "--version"])
    (tmp_path / "bad.service").write_text("[Service]\nExecStart=/bin/true\nProtectSystem=sideways\n", encoding="utf-8")
    bad = run([analyze, "verify", str(tmp_path / "bad.service")])
    assert "sideways" in bad.stderr, f"systemd-analyze did not flag a bad unit: {bad}"
    # verify checks that ExecStart's program exists: point it at this venv's counterpart-node,
    # since /opt/counterpart is not installed on this machine
    text = (DEPLOY / "counterpart-node.service").read_text(encoding="utf-8")
    assert "ExecStart=/opt/counterpart/bin/counterpart-node " in text
    copy = tmp_path / "counterpart-node.service"
    copy.write_text(text.replace("/opt/counterpart/bin/counterpart-node", str(BIN / "counterpart-node")), encoding="utf-8")
    result = run([analyze, "verify", str(copy)])
    assert result.returncode == 0 and not (result.stdout + result.stderr).strip(), result.stdout + result.stderr
    security = run([analyze, "security", "--offline=yes", str(copy)])
    if security.returncode != 0 and "offline" in security.stderr:
        pytest.skip(f"systemd-analyze security --offline is not supported here: {security.stderr.strip()}")
    match = re.search(r"Overall exposure level for \S+: ([\d.]+) (\w+)", security.stdout)
    assert match and float(match.group(1)) <= 2.0, security.stdout[-400:]
    print(f"systemd-analyze security: exposure {match.group(1)} {match.group(2)}")


def test_systemd_unit_passes_the_passphrase_as_a_credential() -> None:
    u = unit()
    (exec_start,) = u["ExecStart"]
    args = shlex.split(exec_start)
    assert args[0].endswith("/counterpart-node")
    check_command(args[1:], "counterpart-node.service ExecStart")
    assert args[args.index("--passphrase-file") + 1] == "${CREDENTIALS_DIRECTORY}/passphrase"
    assert any(v.startswith("passphrase:/") for v in u["LoadCredential"])
    for value in u.get("Environment", []):
        check_variable(value.split("=", 1)[0], "counterpart-node.service Environment")
    for key, want in {"NoNewPrivileges": "yes", "ProtectSystem": "strict", "ProtectHome": "yes",
                      "PrivateTmp": "yes", "User": "counterpart", "StateDirectory": "counterpart"}.items():
        assert u[key] == [want], (key, u.get(key))


# --- every file: variables, options, documented commands -----------------------------------


def deploy_texts() -> dict[str, str]:
    return {
        str(p.relative_to(REPO)): p.read_text(encoding="utf-8")
        for p in sorted(DEPLOY.rglob("*"))
        if p.is_file() and "secrets" not in p.relative_to(DEPLOY).parts
    }


def test_every_counterpart_variable_in_deploy_is_one_the_node_reads() -> None:
    compose_variables = set(re.findall(r"\$\{(\w+)", (DEPLOY / "compose.yaml").read_text(encoding="utf-8")))
    seen = set()
    for where, text in deploy_texts().items():
        for name in re.findall(r"\bCOUNTERPART_[A-Z][A-Z0-9_]*[A-Z0-9]\b", text):
            if name in compose_variables:  # the compose file's own interpolation, not the node's
                continue
            check_variable(name, where)
            seen.add(name)
    assert {"COUNTERPART_DATA_DIR", "COUNTERPART_METRICS_LISTEN"} <= seen
    check_options((DEPLOY / "node.toml.example").read_text(encoding="utf-8"), "node.toml.example")


def readme_node_commands() -> list[list[str]]:
    """The arguments of every `counterpart-node ...` (or `counterpart-node:TAG ...`, the image)
    in deploy/README.md's code, up to a redirection, pipe or comment; "…" elisions dropped."""
    text = (DEPLOY / "README.md").read_text(encoding="utf-8")
    snippets: list[str] = []
    for block in re.findall(r"```\w*\n(.*?)```", text, flags=re.DOTALL):
        snippets += re.sub(r"\\\n\s*", " ", block).splitlines()
    prose = re.sub(r"```\w*\n.*?```", "", text, flags=re.DOTALL)
    snippets += [span.replace("\n", " ") for span in re.findall(r"`([^`]+)`", prose)]
    commands = []
    for snippet in snippets:
        for match in re.finditer(r"(?<![\w-])counterpart-node(?::\S+)?[ \t]+([^|;#<>&]*)", snippet):
            words = [w for w in shlex.split(match.group(1)) if w != "…"]
            if words and re.fullmatch(r"[a-z][\w-]*", words[0]) and "--entrypoint" not in snippet[: match.start()]:
                commands.append(words)
    return commands


def test_documented_node_commands_exist() -> None:
    """Every `counterpart-node` command line of deploy/README.md names a subcommand the CLI
    has, with options it has (placeholders such as FILE are arguments, not checked)."""
    commands = readme_node_commands()
    for words in commands:
        check_command(words, f"deploy/README.md: counterpart-node {' '.join(words)}")
    assert len(commands) >= 15, commands


# --- the health probe -----------------------------------------------------------------------


def test_healthcheck_answers_serving_over_tls_and_fails_otherwise(tmp_path: Path) -> None:
    from tests_support_tls import (  # type: ignore[import-not-found, unused-ignore]
        TlsFederation,
        make_tls_node,
        new_member,
        serve,
    )

    from counterpart_core import signing, tls

    now = datetime.now(UTC)
    federation = TlsFederation([signing.SigningKey.generate()])
    federation.members = {c: new_member(c, now) for c in ("GE", "AZ")}
    node = make_tls_node(tmp_path, federation.members["GE"], federation.document(["GE", "AZ"], now))
    server = serve(node, federation.members["GE"])
    data_dir = node.config.data_dir
    toml_path = data_dir / "node.toml"
    # as in a container: a wildcard listen address, probed on loopback
    toml_path.write_text(re.sub(r'(?m)^listen = .*$', f'listen = "0.0.0.0:{port(server.address)}"',
                                toml_path.read_text(encoding="utf-8")), encoding="utf-8")
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("COUNTERPART_")},
           "COUNTERPART_DATA_DIR": str(data_dir)}
    probe = [sys.executable, str(DEPLOY / "healthcheck.py")]
    try:
        ok = run(probe, env=env)
        assert ok.returncode == 0 and "SERVING (TLS)" in ok.stdout, ok.stdout + ok.stderr
        other = tmp_path / "other-cert.pem"
        other.write_bytes(tls.pem(federation.members["AZ"].certificate))
        impostor = run(probe, env={**env, "COUNTERPART_TLS_CERT_FILE": str(other)})
        assert impostor.returncode == 1 and "unhealthy" in impostor.stderr, "the probe must check the certificate"
    finally:
        server.stop(grace=0)
        node.close()
    down = run(probe, env=env)
    assert down.returncode == 1 and "UNAVAILABLE" in down.stderr, down.stdout + down.stderr
