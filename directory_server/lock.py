"""One node per data directory: a lock on ``<data-dir>/node.lock`` (DESIGN §9).

`counterpart-node serve` holds it exclusively for as long as it runs, so a second process of
the node (a second `serve`, a `rebuild`, a `heartbeat`) fails at once and names the process
that holds it, instead of two writers signing, syncing and re-deriving over one database.
Serving processes started with ``--allow-several`` (``processes = "several"``) share it:
they exclude the single-process commands, not each other.

The lock is ``flock(2)``: the kernel drops it when its process ends, however it ends, so a
node killed with SIGKILL leaves no stale lock behind. The file itself stays, and holds who
took the lock last (PID, host, command, since when), for the message a second process gives.
It is a lock of this machine: processes of one node on other machines over a shared
PostgreSQL database do not see it (that is what ``processes = "several"`` is for).
"""

from __future__ import annotations

import fcntl
import json
import os
import socket
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Self

from counterpart_core.errors import CounterpartError
from counterpart_core.timeutil import utcnow

LOCK_NAME = "node.lock"


class NodeLockedError(CounterpartError):
    """Another process holds the node's data directory."""

    default_reason = "NODE_LOCKED"


@dataclass(frozen=True)
class Holder:
    """Who took the lock last, as written in the lock file."""

    pid: int | None
    host: str
    command: str
    since: str
    shared: bool

    def describe(self) -> str:
        if self.pid is None:
            return "a process that has not said which yet"
        several = " --allow-several" if self.shared else ""
        return f"`counterpart-node {self.command}{several}`, PID {self.pid} on host {self.host}, since {self.since}"

    @staticmethod
    def parse(text: str) -> Holder:
        try:
            raw = json.loads(text)
            return Holder(int(raw["pid"]), str(raw["host"]), str(raw["command"]), str(raw["since"]), bool(raw["shared"]))
        except (ValueError, KeyError, TypeError):
            return Holder(None, "", "", "", False)


class NodeLock:
    """The lock of one data directory, taken by one command of this process."""

    def __init__(self, data_dir: Path, command: str) -> None:
        self.path = data_dir / LOCK_NAME
        self.command = command
        self._fd: int | None = None

    def acquire(self, *, shared: bool = False, hint: str = "") -> NodeLock:
        """Take the lock without waiting, or raise NodeLockedError naming its holder and
        ending with ``hint`` (what to do about it)."""
        if self._fd is not None:
            return self
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            fcntl.flock(fd, (fcntl.LOCK_SH if shared else fcntl.LOCK_EX) | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = Holder.parse(os.pread(fd, 4096, 0).decode("utf-8", "replace"))
            os.close(fd)
            raise NodeLockedError(
                f"another process holds the node in {self.path.parent}: {holder.describe()}"
                + (f". {hint}" if hint else ""),
                metadata={"pid": str(holder.pid or ""), "host": holder.host},
            ) from None
        except BaseException:
            os.close(fd)
            raise
        record = {
            "pid": os.getpid(), "host": socket.gethostname(), "command": self.command,
            "since": utcnow().strftime("%Y-%m-%dT%H:%M:%SZ"), "shared": shared,
        }
        os.ftruncate(fd, 0)
        os.pwrite(fd, (json.dumps(record) + "\n").encode(), 0)
        self._fd = fd
        return self

    def release(self) -> None:
        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None

    @property
    def held(self) -> bool:
        return self._fd is not None

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, _type: type[BaseException] | None, _value: BaseException | None, _tb: TracebackType | None
    ) -> None:
        self.release()
