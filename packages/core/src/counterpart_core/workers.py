"""Worker processes for CPU-bound work of a sync (signature checks, derived records) that
hold the GIL: each worker is a bare interpreter (``python -m counterpart_core.workers``)
that imports what its tasks need and nothing of the node, about 40 MiB where a
multiprocessing ``spawn`` worker re-imported the node's main module (about 130 MiB).

The protocol is a pipe each way, one task at a time per worker: a frame (8-byte length,
then a pickle) of (task name, arguments) in; (True, result) or (False, exception) out. A
worker reads its tasks from standard input, so it ends when the node does, killed or not
(end of file), and never outlives it.
"""

from __future__ import annotations

import os
import pickle
import queue
import signal
import struct
import subprocess
import sys
import threading
from collections.abc import Callable
from concurrent.futures import Future
from typing import IO, Any

_HEADER = struct.Struct(">Q")


def _tasks() -> dict[str, Callable[..., Any]]:
    from counterpart_core import index, replication  # in the worker only, on its first task

    return {"check_signatures": replication.check_signatures, "shape_entries": index.shape_entries}


def _write(out: IO[bytes], value: object) -> None:
    data = pickle.dumps(value, protocol=pickle.HIGHEST_PROTOCOL)
    out.write(_HEADER.pack(len(data)) + data)
    out.flush()


def _read(inp: IO[bytes]) -> Any:
    header = inp.read(_HEADER.size)
    if len(header) < _HEADER.size:
        raise EOFError
    (size,) = _HEADER.unpack(header)
    data = inp.read(size)
    if len(data) < size:
        raise EOFError
    return pickle.loads(data)  # frames come from the process that started this one, over its pipe


def main() -> int:
    """A worker's loop: tasks from standard input until it closes."""
    # Ctrl-C reaches the node's whole process group: the node decides, and the worker ends at
    # the end of file that follows
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    inp, out = sys.stdin.buffer, sys.stdout.buffer
    sys.stdout = sys.stderr  # standard output carries frames alone
    tasks: dict[str, Callable[..., Any]] | None = None
    while True:
        try:
            name, args = _read(inp)
        except EOFError:
            return 0
        tasks = tasks or _tasks()
        try:
            reply: tuple[bool, Any] = (True, tasks[name](*args))
        except Exception as e:  # noqa: BLE001 - handed back to the caller's future
            reply = (False, e)
        try:
            _write(out, reply)
        except (BrokenPipeError, OSError):
            return 0
        except Exception as e:  # noqa: BLE001 - an exception that does not pickle
            _write(out, (False, RuntimeError(f"{type(e).__name__}: {e}")))


class WorkerPool:
    """``workers`` worker processes, started on the first task and then kept; one thread per
    worker in this process feeds it tasks from a common queue (it waits on the pipe, without
    the GIL). A worker that dies fails its task (the caller's future gets the error) and is
    started again for the next."""

    def __init__(self, workers: int | None = None) -> None:
        self.workers = workers or os.cpu_count() or 1
        self._queue: queue.SimpleQueue[tuple[Future[Any], str, tuple[Any, ...]] | None] = queue.SimpleQueue()
        self._threads: list[threading.Thread] = []
        self._lock = threading.Lock()
        self._procs: set[subprocess.Popen[bytes]] = set()

    def submit(self, name: str, *args: Any) -> Future[Any]:
        future: Future[Any] = Future()
        with self._lock:
            if not self._threads:
                self._threads = [
                    threading.Thread(target=self._serve, args=(self._queue,), name=f"worker-feed-{i}", daemon=True)
                    for i in range(self.workers)
                ]
                for t in self._threads:
                    t.start()
            self._queue.put((future, name, args))
        return future

    def _serve(self, tasks: queue.SimpleQueue[tuple[Future[Any], str, tuple[Any, ...]] | None]) -> None:
        proc: subprocess.Popen[bytes] | None = None
        try:
            while (task := tasks.get()) is not None:
                future, name, args = task
                if not future.set_running_or_notify_cancel():
                    continue
                try:
                    if proc is None or proc.poll() is not None:
                        self._forget(proc)
                        proc = subprocess.Popen(
                            [sys.executable, "-m", "counterpart_core.workers"],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                        )
                        with self._lock:
                            self._procs.add(proc)
                    assert proc.stdin is not None and proc.stdout is not None
                    _write(proc.stdin, (name, args))
                    ok, value = _read(proc.stdout)
                except (OSError, EOFError) as e:
                    _stop(proc, kill=True)
                    self._forget(proc)
                    proc = None
                    future.set_exception(RuntimeError(f"a worker process failed: {e!r}"))
                    continue
                if ok:
                    future.set_result(value)
                else:
                    future.set_exception(value)
        finally:
            _stop(proc)
            self._forget(proc)

    def _forget(self, proc: subprocess.Popen[bytes] | None) -> None:
        if proc is not None:
            with self._lock:
                self._procs.discard(proc)

    def pids(self) -> list[int]:
        """The process ids of the workers running now (to measure them)."""
        with self._lock:
            return [p.pid for p in self._procs]

    def close(self, wait: bool = False) -> None:
        """Cancel the tasks not started, and end the workers once their task in hand is
        done (``wait``: wait for that, and for the workers to exit)."""
        with self._lock:
            threads, self._threads = self._threads, []
            tasks, self._queue = self._queue, queue.SimpleQueue()  # a later submit starts afresh
            while True:
                try:
                    task = tasks.get_nowait()
                except queue.Empty:
                    break
                if task is not None:
                    task[0].cancel()
            for _ in threads:
                tasks.put(None)
        if wait:
            for t in threads:
                t.join()


def _stop(proc: subprocess.Popen[bytes] | None, kill: bool = False) -> None:
    if proc is None:
        return
    if kill:
        proc.kill()
    if proc.stdin is not None:
        try:
            proc.stdin.close()
        except OSError:
            pass
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
    if proc.stdout is not None:
        proc.stdout.close()


if __name__ == "__main__":
    sys.exit(main())
