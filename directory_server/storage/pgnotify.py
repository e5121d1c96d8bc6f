"""Commits by other machines over one PostgreSQL database, told without polling.

Serving processes of one node on one machine wake each other through the sockets of
``directory_server.wake``; processes on several machines over one PostgreSQL database share no
directory. Every transaction of a ``Store`` on PostgreSQL that writes a checkpoint or a
federation document also sends ``NOTIFY counterpart_commit`` (PostgreSQL delivers it when, and
only if, the transaction commits); a serving process listens on that channel on a connection of
its own and calls the Store's commit watchers, as for a commit of its own. The payload is the
schema and the sending Store's token: a Store ignores its own commits (its watchers have run
already) and those of other schemas of the same database.

A notification carries nothing but "look again": the woken process reads the store, so a forged
or stray one costs one read. One that is lost while the listening connection is down is made
up for by calling the watchers once each time it connects again."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Any

from sqlalchemy import Connection, Engine

log = logging.getLogger("counterpart.storage")

CHANNEL = "counterpart_commit"
RETRY = 5.0  # seconds before listening again after the connection failed
_SEND = f"SELECT pg_notify('{CHANNEL}', current_schema() || ' ' || %s)"


def announce(connection: Connection, token: str) -> None:
    """Notify the listeners of this database, when the transaction of ``connection`` commits."""
    connection.exec_driver_sql(_SEND, (token,))


def _payload_is_others(payload: str, schema: str, token: str) -> bool:
    sent_schema, _, sender = payload.partition(" ")
    return sent_schema == schema and sender != token


class Listener:
    """A thread that calls ``callback`` after every commit another Store announces on this
    database and schema; ``stop`` ends it within a second."""

    def __init__(self, engine: Engine, token: str, callback: Callable[[], None]) -> None:
        self._engine = engine
        self._token = token
        self._callback = callback
        self._stop = threading.Event()
        self.listening = threading.Event()  # set while LISTEN is in effect
        self._thread = threading.Thread(target=self._run, name="pg-listen", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self._listen()
            except Exception as e:  # noqa: BLE001 - the database may be restarting; listen again soon
                log.warning("cannot listen for commits of other processes; listening again soon",
                            extra={"error": str(e).splitlines()[0] if str(e) else type(e).__name__, "seconds": RETRY})
            finally:
                self.listening.clear()
            self._stop.wait(RETRY)

    def _listen(self) -> None:
        pooled = self._engine.raw_connection()  # with the engine's connect arguments (search_path)
        conn: Any = pooled.driver_connection
        pooled.detach()  # a connection of its own, never handed back to the pool
        try:
            conn.autocommit = True
            conn.execute(f"LISTEN {CHANNEL}")
            schema = conn.execute("SELECT current_schema()").fetchone()[0]
            self.listening.set()
            self._callback()  # whatever was committed while nobody listened
            while not self._stop.is_set():
                for note in conn.notifies(timeout=1.0):  # at most a second, then look at stop again
                    if _payload_is_others(note.payload, schema, self._token):
                        self._callback()
        finally:
            conn.close()
