"""A stand-in for `docker compose run` on a machine with no Docker engine.

tests/deploy runs deploy/compose-init.sh with this program first on PATH as `docker`. It models
what `docker compose -f FILE run --rm --no-deps -T [--entrypoint E] [-v HOST:CTR[:ro]] SERVICE
ARGS...` does with the real compose file and the real Dockerfile, and runs the command on this
machine instead of in a container:

- the service's named volumes become directories under $FAKE_DOCKER_ROOT/volumes/<name> (a
  volume the compose file does not declare is an error), its secrets the files the compose file
  names (at /run/secrets/<target>), `-v` binds the host path;
- the image's ENTRYPOINT, WORKDIR and ENV come from deploy/Dockerfile, the service's
  `environment` from the compose file; the entrypoint `counterpart-node` is the one installed
  beside this Python;
- every argument and environment value that starts with a mounted container path is rewritten
  to the host path behind it.

Anything else (another subcommand, an option it does not model, a service the file lacks)
exits 125 with a message, so the script cannot rely on something this model does not check.
Every call is appended to $FAKE_DOCKER_LOG as one JSON line.

Speed: with $FAKE_DOCKER_PRELOAD naming the socket of `fake_docker.py --preload SOCKET` (a
process that has imported the `counterpart-node` entry point), each call of the node's program
is a fork of that process running the same entry point with this call's arguments, working
directory, environment and standard streams (passed over the socket), instead of a new
interpreter that imports everything again (0.6 s to 1 s a call on this machine).
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import traceback
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any

import yaml

BIN = Path(sys.executable).parent


def fail(message: str) -> None:
    sys.stderr.write(f"fake docker: {message}\n")
    raise SystemExit(125)


def image_contract(dockerfile: Path) -> tuple[list[str], str, dict[str, str]]:
    """ENTRYPOINT, WORKDIR and ENV of the final stage of the Dockerfile."""
    text = re.sub(r"\\\n", " ", dockerfile.read_text(encoding="utf-8"))
    final = re.split(r"(?m)^FROM\s", text)[-1]
    entrypoint: list[str] = []
    workdir = "/"
    env: dict[str, str] = {}
    for line in final.splitlines():
        word, _, rest = line.strip().partition(" ")
        if word == "ENTRYPOINT":
            entrypoint = json.loads(rest)
        elif word == "WORKDIR":
            workdir = rest.strip()
        elif word == "ENV":
            for token in shlex.split(rest):
                key, _, value = token.partition("=")
                env[key] = value
    return entrypoint, workdir, env


def parse_run(args: list[str]) -> tuple[str | None, list[str], str, list[str]]:
    entrypoint = None
    binds: list[str] = []
    i = 0
    while i < len(args):
        a = args[i]
        if a in ("--rm", "--no-deps", "-T"):
            i += 1
        elif a == "--entrypoint":
            entrypoint = args[i + 1]
            i += 2
        elif a == "-v":
            binds.append(args[i + 1])
            i += 2
        elif a.startswith("-"):
            fail(f"run option {a} is not modelled")
        else:
            return entrypoint, binds, a, args[i + 1 :]
    fail("run needs a service")
    raise AssertionError


def main(argv: list[str]) -> int:
    root = Path(os.environ["FAKE_DOCKER_ROOT"])
    with open(os.environ["FAKE_DOCKER_LOG"], "a", encoding="utf-8") as log:
        log.write(json.dumps(argv) + "\n")
    if argv[:2] == ["compose", "version"]:
        print("Docker Compose version v2 (fake, tests/deploy/fake_docker.py)")
        return 0
    if argv[:2] != ["compose", "-f"] or len(argv) < 4 or argv[3] != "run":
        fail(f"only `compose version` and `compose -f FILE run ...` are modelled, not {argv}")
    compose_file = Path(argv[2])
    compose: dict[str, Any] = yaml.safe_load(compose_file.read_text(encoding="utf-8"))
    entry_override, binds, service_name, command = parse_run(argv[4:])
    service = compose["services"].get(service_name)
    if service is None:
        fail(f"no service {service_name!r} in {compose_file}")
    build = service["build"]
    context = (compose_file.parent / build["context"]).resolve()
    image_entrypoint, workdir, env = image_contract(context / build["dockerfile"])

    mounts: dict[str, Path] = {}
    for spec in service.get("volumes", []):
        name, _, target = spec.partition(":")
        if name not in (compose.get("volumes") or {}):
            fail(f"volume {name!r} of {service_name} is not declared")
        mounts[target] = root / "volumes" / name
        mounts[target].mkdir(parents=True, exist_ok=True)
    for secret in service.get("secrets", []):
        source = secret["source"] if isinstance(secret, dict) else secret
        target = secret.get("target", source) if isinstance(secret, dict) else secret
        declared = (compose.get("secrets") or {}).get(source)
        if declared is None:
            fail(f"secret {source!r} of {service_name} is not declared")
        path = (compose_file.parent / declared["file"]).resolve()
        if not path.is_file():
            fail(f"secret file {path} does not exist")
        mounts[target if target.startswith("/") else f"/run/secrets/{target}"] = path
    for spec in binds:
        host, _, rest = spec.partition(":")
        target = rest.split(":")[0]
        if not Path(host).is_absolute() or not Path(host).exists():
            fail(f"bind source {host} must be an existing absolute path")
        mounts[target] = Path(host)

    def local(value: str) -> str:
        for target in sorted(mounts, key=len, reverse=True):
            if value == target or value.startswith(target.rstrip("/") + "/"):
                return str(mounts[target]) + value[len(target) :]
        return value

    env.update({k: str(v) for k, v in (service.get("environment") or {}).items()})
    entry = [entry_override] if entry_override else image_entrypoint
    if entry == ["counterpart-node"]:
        program = str(BIN / "counterpart-node")
    elif entry_override in ("cat", "tee", "test"):
        program = shutil.which(entry_override) or fail(f"no {entry_override} here")  # type: ignore[assignment]
    else:
        fail(f"entrypoint {entry} is not modelled")
    child_env = {**os.environ, **{k: local(v) for k, v in env.items()}}
    cwd = Path(local(workdir))
    cwd.mkdir(parents=True, exist_ok=True)
    args = [local(a) for a in command]
    preload = os.environ.get("FAKE_DOCKER_PRELOAD")
    if preload and program == str(BIN / "counterpart-node"):
        return run_preloaded(preload, args, str(cwd), child_env)
    return subprocess.run([program, *args], env=child_env, cwd=cwd, check=False).returncode


def run_preloaded(path: str, args: list[str], cwd: str, env: dict[str, str]) -> int:
    with socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET) as s:
        s.connect(path)
        request = json.dumps({"args": args, "cwd": cwd, "env": env}).encode()
        socket.send_fds(s, [request], [0, 1, 2])
        answer = s.recv(64)
    if not answer:
        fail("the preloaded counterpart-node died")
    return int(answer)


def serve_preloaded(path: str) -> None:
    """Import the node's entry point once, then fork per request and run it (see above)."""
    (entry,) = entry_points(group="console_scripts", name="counterpart-node")
    program = entry.load()
    signal.signal(signal.SIGCHLD, signal.SIG_IGN)  # children are reaped by the kernel
    with socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET) as server:
        server.bind(path)
        server.listen(8)
        while True:
            conn, _ = server.accept()
            message, fds, _, _ = socket.recv_fds(conn, 1 << 20, 3)
            if os.fork() == 0:
                server.close()
                signal.signal(signal.SIGCHLD, signal.SIG_DFL)
                request = json.loads(message)
                for target, fd in enumerate(fds):
                    os.dup2(fd, target)
                    os.close(fd)
                os.chdir(request["cwd"])
                os.environ.clear()
                os.environ.update(request["env"])
                code = 1
                try:
                    program.main(args=request["args"], prog_name="counterpart-node")
                    code = 0
                except SystemExit as e:
                    code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
                except BaseException:  # noqa: BLE001 - the forked child reports any failure as exit 1
                    traceback.print_exc()
                sys.stdout.flush()
                sys.stderr.flush()
                conn.send(str(code).encode())
                os._exit(code)
            for fd in fds:
                os.close(fd)
            conn.close()


if __name__ == "__main__":
    if sys.argv[1:2] == ["--preload"]:
        serve_preloaded(sys.argv[2])
    sys.exit(main(sys.argv[1:]))
