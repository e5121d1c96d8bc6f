"""Waking a node's serving processes when a checkpoint is committed, without polling.

A serving process pushes every checkpoint its node accepts to the peers that watch it
(``WatchCheckpoints``). Commits made in that process reach its push thread through
``Store.watch_commits``; commits made by another process over the same data directory
(``counterpart-node publish``, a second serving process, a benchmark) reach it through a
Unix datagram socket: each serving process binds one in ``<data_dir>/wake/``, and every
``Node`` pokes every socket there after each commit that wrote a checkpoint or a federation
document. A poke carries nothing: the woken process reads the store again, so a stray or
forged datagram costs one read of the checkpoints, and a burst of them is drained into one.

Where serving processes share a PostgreSQL database but no data directory (several
machines) no socket of theirs is poked: PostgreSQL's LISTEN/NOTIFY carries those commits
(``directory_server.storage.pgnotify``), and the listener of each process pokes its own sockets.
"""

from __future__ import annotations

import contextlib
import logging
import os
import select
import socket
from pathlib import Path

logger = logging.getLogger("counterpart.wake")

WAKE_DIR = "wake"
_MAX_PATH = 100  # sun_path holds 108 bytes; longer paths go through /proc/self/fd


def wake_dir(data_dir: Path) -> Path:
    return data_dir / WAKE_DIR


def _short(path: Path, dir_fd: int) -> str:
    """A name for ``path`` (a file in the directory open as ``dir_fd``) that fits sun_path."""
    text = str(path)
    return text if len(text.encode()) < _MAX_PATH else f"/proc/self/fd/{dir_fd}/{path.name}"


def poke(data_dir: Path) -> int:
    """Wake every serving process of the data directory; the sockets of processes that are
    gone are removed. Returns how many were woken. Never raises: a missed poke only delays
    a push until the next one or the fallback poll."""
    directory = wake_dir(data_dir)
    try:
        names = os.listdir(directory)
    except OSError:
        return 0  # no process of this data directory serves
    woken = 0
    try:
        dir_fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return 0
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
            s.setblocking(False)
            for name in names:
                if not name.endswith(".sock"):
                    continue
                path = directory / name
                try:
                    s.sendto(b"!", _short(path, dir_fd))
                    woken += 1
                except BlockingIOError:
                    woken += 1  # its queue is full: it is awake already
                except (ConnectionRefusedError, FileNotFoundError):
                    with contextlib.suppress(OSError):
                        os.unlink(path)  # its process is gone
                except OSError as e:
                    logger.debug("cannot wake a serving process", extra={"socket": str(path), "error": str(e)})
    finally:
        os.close(dir_fd)
    return woken


class WakeSocket:
    """The socket one serving process is woken through; ``wait`` blocks until a poke (or the
    timeout) and drains every poke queued meanwhile."""

    def __init__(self, data_dir: Path) -> None:
        directory = wake_dir(data_dir)
        directory.mkdir(mode=0o700, exist_ok=True)
        self.path = directory / f"{os.getpid()}-{id(self):x}.sock"
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        dir_fd = os.open(directory, os.O_RDONLY)
        try:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.path)
            self._sock.bind(_short(self.path, dir_fd))
        except OSError:
            self._sock.close()
            raise
        finally:
            os.close(dir_fd)
        self._sock.setblocking(False)
        self._closed = False

    def wait(self, timeout: float | None) -> bool:
        """True when woken by a poke, False on timeout or once closed."""
        if self._closed:
            return False
        try:
            ready, _, _ = select.select([self._sock], [], [], timeout)
        except (OSError, ValueError):
            return False
        woken = False
        while ready:
            try:
                self._sock.recv(16)
                woken = True
            except BlockingIOError:
                break
            except OSError:
                return False
        return woken and not self._closed

    def wake(self) -> None:
        """Wake the waiting thread (used to stop it)."""
        with contextlib.suppress(OSError), socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
            s.setblocking(False)
            dir_fd = os.open(self.path.parent, os.O_RDONLY)
            try:
                s.sendto(b"!", _short(self.path, dir_fd))
            finally:
                os.close(dir_fd)

    def stop(self) -> None:
        """Make ``wait`` return False from now on, waking it if it waits."""
        self._closed = True
        self.wake()

    def close(self) -> None:
        """Remove the socket; by the thread that waits on it, once it no longer does."""
        self._closed = True
        with contextlib.suppress(OSError):
            os.unlink(self.path)
        self._sock.close()
