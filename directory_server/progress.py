"""How far the operator's long commands have got: `verify`, `rebuild` and a node's first sync.

On a terminal (stderr), a rich progress bar; otherwise (a service manager, a pipe, a test) no
bar, but a plain status line now and then (`verify`, `rebuild`) or a log line per peer (the
first sync of `serve`), so that a log says where a long run was.

`verify` and `rebuild` count the entries as ``Node`` reads them from the store
(``CountingStore``): the node's code stays as it is, and the count is the work done.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterable, Iterator, Sequence
from types import TracebackType
from typing import Self

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from counterpart_core.log import LogEntry
from directory_server.storage.store import Store, StoredEntry
from directory_server.sync import PeerReport

STATUS_EVERY = 10.0  # seconds between two status lines when stderr is not a terminal
_TICK = 256  # entries counted at once (a progress update per entry would cost more than it shows)


def on_terminal(console: Console) -> bool:
    """The console writes to a terminal, really (FORCE_COLOR alone makes no bar in a log)."""
    isatty = getattr(console.file, "isatty", None)
    try:
        return console.is_terminal and isatty is not None and bool(isatty())
    except ValueError:  # closed
        return False


def bar(console: Console) -> Progress:
    """The one progress bar every long command shows (publish, verify, rebuild, first sync)."""
    return Progress(
        TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
        TimeRemainingColumn(), console=console, transient=True,
    )


class Meter:
    """The progress of one command over ``total`` entries, in phases."""

    def __init__(self, console: Console, command: str, description: str, total: int | None) -> None:
        self.console = console
        self.command = command
        self.description = description
        self.total = total
        self.done = 0
        self._bar: Progress | None = bar(console) if on_terminal(console) else None
        self._task: TaskID | None = None
        self._start = self._last_line = time.monotonic()

    def __enter__(self) -> Self:
        if self._bar is not None:
            self._bar.start()
            self._task = self._bar.add_task(self.description, total=self.total)
        return self

    def __exit__(
        self, _type: type[BaseException] | None, _value: BaseException | None, _tb: TracebackType | None
    ) -> None:
        if self._bar is not None:
            self._bar.stop()

    def advance(self, count: int) -> None:
        self.done += count
        if self._bar is not None and self._task is not None:
            self._bar.update(self._task, completed=self.done)
        elif time.monotonic() - self._last_line >= STATUS_EVERY:
            self._last_line = time.monotonic()
            of = f" of {self.total} ({100 * self.done // max(self.total, 1)}%)" if self.total else ""
            self.console.print(f"{self.command}: {self.description}: {self.done}{of} entries", highlight=False)

    def phase(self, description: str, total: int | None = None) -> None:
        """A next step of the command; ``total`` None: one whose progress is not counted."""
        self.description, self.total, self.done = description, total, 0
        if self._bar is not None and self._task is not None:
            self._bar.update(self._task, visible=False)  # a new task: rich cannot make one uncounted again
            self._task = self._bar.add_task(description, total=total)
        elif time.monotonic() - self._start >= STATUS_EVERY:  # a short run says nothing more than its result
            self.console.print(f"{self.command}: {description}", highlight=False)
            self._last_line = time.monotonic()


class _CountedRows(list[StoredEntry]):
    """A member's rows that count themselves as they are read."""

    def __init__(self, rows: Iterable[StoredEntry], meter: Meter) -> None:
        super().__init__(rows)
        self._meter = meter

    def __iter__(self) -> Iterator[StoredEntry]:
        read = 0
        for row in super().__iter__():
            yield row
            read += 1
            if read == _TICK:
                self._meter.advance(read)
                read = 0
        self._meter.advance(read)


class CountingStore(Store):
    """The node's store, counting the log entries read (``Node.verify_report`` and
    ``Node.rebuild`` read every entry once) and naming the step that writes the indexes."""

    meter: Meter | None = None

    def log_rows(self, member: str, start: int = 1, end: int | None = None) -> list[StoredEntry]:
        rows = super().log_rows(member, start, end)
        return _CountedRows(rows, self.meter) if self.meter is not None else rows

    def rebuild_derived(self, entries_by_member: dict[str, Sequence[LogEntry]]) -> int:
        if self.meter is not None:
            self.meter.phase("writing the lookup indexes")
        return super().rebuild_derived(entries_by_member)

    def entry_count(self) -> int:
        return sum(self.log_size(m) for m in self.members_with_logs())


class FirstSync:
    """The node's first pass against each peer it syncs from when it starts: a bar of the
    peers done on a terminal, a log line per peer otherwise, and a line when all are done.
    Later passes, and peers that appear later, are not followed."""

    def __init__(self, peers: Iterable[str], console: Console, logger: logging.Logger) -> None:
        self.waiting = set(peers)
        self.total = len(self.waiting)
        self.pulled = 0
        self.log = logger
        self.start = time.monotonic()
        self._lock = threading.Lock()
        self._bar: Progress | None = None
        self._task: TaskID | None = None
        if self.waiting and on_terminal(console):
            self._bar = bar(console)
            self._bar.start()
            self._task = self._bar.add_task(self._describe(), total=self.total)

    def _describe(self) -> str:
        return f"first sync from {self.total} peer(s): {self.pulled} entries pulled"

    def __call__(self, report: PeerReport) -> None:
        with self._lock:
            if report.peer not in self.waiting:
                return
            self.waiting.discard(report.peer)
            pulled = sum(report.pulled.values())
            self.pulled += pulled
            done = self.total - len(self.waiting)
            outcome = "error" if report.error else ("rejected" if report.rejected else "ok")
            if self._bar is not None and self._task is not None:
                self._bar.update(self._task, completed=done, description=self._describe())
            else:
                self.log.info("first sync: peer done", extra={
                    "peer": report.peer, "outcome": outcome, "entries": pulled, "peers_done": done,
                    "peers": self.total, **({"error": report.error} if report.error else {}),
                })
            if not self.waiting:
                self._close()
                self.log.info("first sync done", extra={
                    "peers": self.total, "entries": self.pulled, "seconds": round(time.monotonic() - self.start, 2),
                })

    def _close(self) -> None:
        if self._bar is not None:
            self._bar.stop()
            self._bar = None

    def close(self) -> None:
        with self._lock:
            self._close()
