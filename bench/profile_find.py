"""Profile FindCounterpart in-process (no gRPC) over a dataset made by gen_dataset.py.

Opens the node's store read-only in this process, builds the same request mix as
bench_find.py, warms up, then runs ``--calls`` lookups under cProfile and prints:
  - wall time per call;
  - SQL statements per call (counted with a SQLAlchemy ``before_cursor_execute`` hook)
    and the time spent inside the SQLite driver's execute;
  - the time of FindCounterpart's steps (lookup.Directory methods, cumulative);
  - the top functions by own time and by cumulative time.

Nothing outside bench/ is changed: the hooks are attached to this process's objects only.

Usage: python bench/profile_find.py --data-dir DIR [--calls 300] [--out FILE.pstats]
"""

from __future__ import annotations

import argparse
import cProfile
import io
import json
import pstats
import re
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import bench_find  # sibling scripts: python puts bench/ first on sys.path
import gen_dataset
from sqlalchemy import event

from directory_server.config import load_config
from directory_server.lookup import Directory
from directory_server.node import Node


def _shape(statement: str) -> str:
    """A statement without its parameter lists, on one line: what it selects from where."""
    text = " ".join(statement.split())
    text = re.sub(r"\((?:\s*\?\s*,?)+\)", "(?...)", text)
    text = re.sub(r"VALUES (?:\(\?\.\.\.\),? ?)+", "VALUES (?...)...", text)
    select, _, rest = text.partition(" FROM ")
    return (select[:40] + "... FROM " + rest)[:150] if rest else text[:150]


STEPS = [
    "find_counterpart",
    "_resolve_place",
    "_load_name",
    "_candidates",
    "_legal_bases",
    "_contacts",
    "_uncertainty_warnings",
    "provenance",
    "_load_rows",
    "_tree",
]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="Profile FindCounterpart in-process.")
    p.add_argument("--data-dir", type=Path, required=True)
    p.add_argument("--calls", type=int, default=300)
    p.add_argument("--warmup", type=int, default=400, help="unprofiled calls first (fills caches)")
    p.add_argument("--top", type=int, default=25)
    p.add_argument(
        "--repeat", action="store_true",
        help="measure calls the warm-up already asked (answers kept) instead of new ones",
    )
    p.add_argument("--out", type=Path, default=None, help="also dump the raw pstats here")
    a = p.parse_args(argv)
    if not 1 <= a.calls <= 100_000:
        raise SystemExit("--calls must be between 1 and 100000")

    manifest: dict[str, Any] = json.loads(
        (a.data_dir / gen_dataset.MANIFEST_NAME).read_text(encoding="utf-8")
    )
    node = Node(load_config(a.data_dir))
    directory = Directory(node.store, node.federation, node.clock)
    # cold (default): the profiled and the timed calls are two sets of new questions, so
    # neither finds an answer kept; --repeat: both ask what the warm-up asked
    total = max(a.warmup, a.calls) if a.repeat else a.warmup + 2 * a.calls
    requests = bench_find.make_requests(manifest, total, seed=2)

    statements: Counter[str] = Counter()
    shape_time: Counter[str] = Counter()
    sql_time = [0.0]

    @event.listens_for(node.store.engine, "before_cursor_execute")
    def _before(
        conn: Any, cursor: Any, statement: str, params: Any, context: Any, many: bool
    ) -> None:
        conn.info["bench_t0"] = time.perf_counter()
        conn.info["bench_shape"] = _shape(statement)
        statements[conn.info["bench_shape"]] += 1

    @event.listens_for(node.store.engine, "after_cursor_execute")
    def _after(
        conn: Any, cursor: Any, statement: str, params: Any, context: Any, many: bool
    ) -> None:
        spent = time.perf_counter() - conn.info.pop("bench_t0", time.perf_counter())
        sql_time[0] += spent
        shape_time[conn.info.pop("bench_shape", "?")] += spent

    try:
        for req in requests[: a.warmup]:
            directory.find_counterpart(req)
        statements.clear()
        sql_time[0] = 0.0
        measured = requests[: a.calls] if a.repeat else requests[a.warmup : a.warmup + a.calls]
        timed = requests[: a.calls] if a.repeat else requests[a.warmup + a.calls :]
        prof = cProfile.Profile()
        t0 = time.perf_counter()
        prof.enable()
        for req in measured:
            directory.find_counterpart(req)
        prof.disable()
        profiled_wall = time.perf_counter() - t0
        statements_profiled = sum(statements.values())
        sql_profiled = sql_time[0]

        statements.clear()
        shape_time.clear()
        sql_time[0] = 0.0
        reads = node.store.generation_reader.reads
        t0 = time.perf_counter()
        for req in timed:
            directory.find_counterpart(req)
        wall = time.perf_counter() - t0
        reads = node.store.generation_reader.reads - reads
    finally:
        node.close()

    n = len(measured)
    print(
        f"{n} FindCounterpart calls in-process: {wall / n * 1000:.2f} ms per call without the "
        f"profiler ({profiled_wall / n * 1000:.2f} ms with it)"
    )
    print(
        f"SQL statements per call: {sum(statements.values()) / n:.1f}; time inside cursor.execute: "
        f"{sql_time[0] / n * 1000:.2f} ms per call ({sql_time[0] / wall:.0%} of wall time)"
    )
    print(
        f"generation reads on the reader's own connection (not counted above): {reads / n:.1f} per call, "
        "each after a PRAGMA data_version"
    )
    print(
        f"(profiled run: {statements_profiled / n:.1f} statements, "
        f"{sql_profiled / n * 1000:.2f} ms SQL per call)"
    )
    print("\nstatements per call by shape (count, ms inside cursor.execute per call):")
    for stmt, count in statements.most_common(12):
        print(f"  {count / n:6.1f}  {shape_time[stmt] / n * 1000:7.2f} ms  {stmt}")

    stats = pstats.Stats(prof)
    if a.out is not None:
        stats.dump_stats(str(a.out))
    print("\nFindCounterpart steps (lookup.py, cumulative ms per call, with profiler overhead):")
    raw: dict[Any, Any] = stats.stats  # type: ignore[attr-defined]
    for (filename, line, func), (_cc, nc, _tt, ct, _callers) in sorted(
        raw.items(), key=lambda kv: -kv[1][3]
    ):
        if filename.endswith("directory_server/lookup.py") and func in STEPS:
            print(f"  {ct / n * 1000:8.2f} ms  {nc / n:7.1f} calls  {func} (lookup.py:{line})")

    for order in ("tottime", "cumulative"):
        buf = io.StringIO()
        pstats.Stats(prof, stream=buf).strip_dirs().sort_stats(order).print_stats(a.top)
        print(f"\n--- top {a.top} by {order} ---")
        print("\n".join(buf.getvalue().splitlines()[4:]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
