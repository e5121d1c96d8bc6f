"""counterpart-node: the operator's command line.

Exit codes: 0 success, 1 error (the message names what is wrong), 2 usage error.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import sys
from collections.abc import Callable
from dataclasses import asdict
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar

import click
from google.protobuf import json_format
from rich.console import Console
from rich.markup import escape
from rich.progress import Progress, TaskID
from rich.table import Table

from counterpart.v1 import federation_pb2
from counterpart_core import access, signing, spreadsheets, tls
from counterpart_core import federation as fed
from counterpart_core.diff import FieldChange
from counterpart_core.errors import (
    ConfigurationError,
    CounterpartError,
    InvalidArgumentError,
)
from counterpart_core.names import check_member_code
from counterpart_core.records import collection_of
from counterpart_core.timeutil import from_timestamp, parse_duration, utcnow
from directory_server import security
from directory_server.config import CONFIG_NAME, NodeConfig, load_config
from directory_server.lock import NodeLock
from directory_server.node import Node, PublishPlan
from directory_server.progress import bar as progress_bar

F = TypeVar("F", bound=Callable[..., Any])
out = Console(soft_wrap=True)
err = Console(stderr=True, soft_wrap=True)


def fail_cleanly(fn: F) -> F:
    """Print a CounterpartError as one line and exit 1 (no traceback for expected failures)."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except CounterpartError as e:
            err.print(f"[bold red]error:[/] {escape(e.message)}", markup=True, highlight=False)
            sys.exit(1)

    return wrapper  # type: ignore[return-value]


def _passphrase(passphrase_file: Path | None) -> bytes:
    return signing.passphrase_from_env(passphrase_file)


def _open(data_dir: Path, **overrides: Any) -> Node:
    return Node(load_config(data_dir, overrides))


data_dir_option = click.option(
    "--data-dir", type=click.Path(path_type=Path, file_okay=False), envvar="COUNTERPART_DATA_DIR",
    default=Path("counterpart-data"), show_default=True, help="The node's data directory.",
)
passphrase_option = click.option(
    "--passphrase-file", type=click.Path(path_type=Path, dir_okay=False), default=None,
    help="File holding the key passphrase (default: $COUNTERPART_KEY_PASSPHRASE).",
)
format_option = click.option("--format", "fmt", type=click.Choice(["table", "json"]), default="table", show_default=True)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="counterpart")
def main() -> None:
    """Run and administer a Counterpart national node."""


# --- node set-up --------------------------------------------------------------------------


@main.command()
@click.option("--member", required=True, help="The member this node publishes for (e.g. GE).")
@data_dir_option
@click.option("--listen", default="127.0.0.1:7700", show_default=True, help="gRPC listen address.")
@click.option("--database-url", default="", help="SQLAlchemy URL (default: SQLite in the data directory).")
@click.option("--peer-listen", default="", help="Mutual-TLS listen address for other member nodes (e.g. 0.0.0.0:7701).")
@click.option(
    "--host", "hosts", multiple=True,
    help="Host name or address the node is reached at, written into its TLS certificate (repeat).",
)
@passphrase_option
@fail_cleanly
def init(
    member: str, data_dir: Path, listen: str, database_url: str, peer_listen: str, hosts: tuple[str, ...],
    passphrase_file: Path | None,
) -> None:
    """Create a node: configuration, database, an encrypted signing key and an encrypted TLS
    key with its self-signed certificate (both keys mode 600)."""
    check_member_code(member)
    if (data_dir / CONFIG_NAME).exists():
        raise ConfigurationError(f"{data_dir} already holds a node ({CONFIG_NAME} exists)", reason="ALREADY_INITIALIZED")
    passphrase = _passphrase(passphrase_file)
    data_dir.mkdir(parents=True, exist_ok=True)
    config = NodeConfig(
        data_dir=data_dir, member=member, listen=listen, database_url=database_url, tls="on", peer_listen=peer_listen,
    )
    key = signing.SigningKey.generate()
    signing.write_key_file(config.key_path, key, passphrase)
    public_path = config.key_path.with_suffix(".pub")
    signing.write_public_key_file(public_path, key.public_bytes)
    names = [security.host_of(a) for a in (listen, peer_listen) if a] + list(hosts)
    identity = security.create_tls_identity(config, passphrase, [n for n in names if n not in ("0.0.0.0", "::")], utcnow())
    (data_dir / CONFIG_NAME).write_text(config.to_toml(), encoding="utf-8")
    Node(config).close()  # creates the database schema
    out.print(f"initialized node for {member} in {data_dir}")
    out.print(f"signing key {key.key_id} (encrypted, mode 600): {config.key_path}")
    out.print(f"TLS key (encrypted, mode 600): {config.tls_key_path}")
    out.print("send these to the federation secretariat (public):")
    out.print(f"  signing key:     {public_path}")
    out.print(f"  TLS certificate: {config.tls_cert_path}")
    out.print(f"  fingerprint:     {identity.fingerprint}")


@main.command()
@data_dir_option
@click.option("--listen", default=None, help="Override the configured listen address.")
@passphrase_option
@click.option("--no-heartbeat", is_flag=True, help="Do not re-sign checkpoints (read-only node).")
@click.option("--log-level", default="INFO", show_default=True)
@click.option(
    "--restore-from-peers", is_flag=True,
    help="Accept this node's own member's log from peers, to rebuild it after losing the database "
    "(otherwise refused with an alarm). Restart without it once restored.",
)
@click.option(
    "--allow-several", is_flag=True,
    help="One of several serving processes of this node over one (PostgreSQL) database, on purpose: share the "
    "data directory's lock and the listen port (SO_REUSEPORT) with the others (config: processes = \"several\").",
)
@click.option("--metrics-listen", default=None, help="Serve Prometheus metrics over HTTP here (e.g. 127.0.0.1:9700).")
@fail_cleanly
def serve(
    data_dir: Path, listen: str | None, passphrase_file: Path | None, no_heartbeat: bool, log_level: str,
    restore_from_peers: bool, allow_several: bool, metrics_listen: str | None,
) -> None:
    """Serve DirectoryService, health checking and reflection until SIGTERM or SIGINT.

    One process serves a node: it locks the data directory and refuses a port in use, so a
    second one fails at once and says which process holds them."""
    from directory_server.progress import FirstSync
    from directory_server.service.server import NodeServer, setup_logging
    from directory_server.sync import peers_of

    setup_logging(log_level.upper())
    c = load_config(data_dir, {
        "listen": listen, "restore_from_peers": "true" if restore_from_peers else None,
        "processes": "several" if allow_several else None, "metrics_listen": metrics_listen,
    })
    several = c.several_processes
    if not c.tls_enabled:  # before anything else: a configuration that must not serve at all
        security.check_plaintext_allowed(c.listen, "listen")
    with NodeLock(data_dir, "serve").acquire(shared=several, hint=_SERVE_LOCKED if not several else _SEVERAL_LOCKED):
        node = Node(c)
        try:
            _check_federation_current(node)
            if c.restore_from_peers_enabled:
                err.print(
                    f"[yellow]warning:[/] restoring {node.member}'s own log from peers: whatever they hold signed "
                    "with this node's key is accepted. Restart without --restore-from-peers once it is restored.",
                    highlight=False,
                )
            if several and node.store.engine.dialect.name == "sqlite":
                err.print(
                    "[yellow]warning:[/] several processes over one SQLite file: their writes wait for each other; "
                    "PostgreSQL (database_url) is meant for this", highlight=False,
                )
            passphrase = _passphrase(passphrase_file) if c.tls_enabled or not no_heartbeat else b""
            key = None if no_heartbeat else node.signing_key(passphrase)
            identity = security.load_tls_identity(c, passphrase) if c.tls_enabled else None
            if identity is not None:
                _warn_unlisted_certificate(node, identity)
            server = NodeServer(
                node, c.listen, max_workers=c.workers_count, peers=c.peer_list,
                sync_interval=c.sync_interval_seconds, sync_deadline=c.sync_deadline_seconds,
                tls_identity=identity, peer_address=c.peer_listen, several_processes=several,
                metrics_address=c.metrics_address,
            )
            first_sync = FirstSync(peers_of(node, c.peer_list, server.address), err, logging.getLogger("counterpart.sync"))
            server.observe_sync(first_sync)
            server.start(key)
            server.wait_for_signal()
            first_sync.close()
        finally:
            node.close()


_SERVE_LOCKED = (
    "One process serves a node: stop that one first. Several serving processes of one node over one (PostgreSQL) "
    "database only on purpose: start each with --allow-several (processes = \"several\")"
)
_SEVERAL_LOCKED = "It serves the node alone: stop it, then start every process with --allow-several"


def _check_federation_current(node: Node) -> None:
    """Refuse to serve on an expired trust root: peers and clients refuse it too."""
    federation = node.federation()
    if federation.expired(node.clock()):
        doc = federation.document
        raise ConfigurationError(
            f"the federation document ({doc.federation_id} version {doc.version}) expired at "
            f"{from_timestamp(doc.expire_time).isoformat()}; the node does not serve on an expired trust root. "
            "Ask the federation secretariat for the next version and install it: "
            f"`counterpart-node federation install FILE --data-dir {node.config.data_dir}`",
            reason="DOCUMENT_EXPIRED",
        )


def _warn_unlisted_certificate(node: Node, identity: security.TlsIdentity) -> None:
    member = node.federation().member(node.member)
    listed = member is not None and any(bytes(c) == identity.certificate_der for c in member.tls_certificates)
    if not listed:
        err.print(
            f"[yellow]warning:[/] this node's TLS certificate ({identity.fingerprint[:16]}…) is not listed for "
            f"{node.member} in the federation document: clients and other member nodes will not accept it "
            "until the secretariat admits it (`counterpart-node federation tls-cert … --add`)",
            highlight=False,
        )


# --- publishing ---------------------------------------------------------------------------

DETAIL_LINES = 20  # lines of detail (records and fields) publish prints without --verbose
PROGRESS_AT = 50  # entries from which publish shows a progress bar (on a terminal)
VALUE_CHARS = 100  # characters of a value a field change shows without --verbose


def _cut(text: str, verbose: bool) -> str:
    return text if verbose or len(text) <= VALUE_CHARS else f"{text[:VALUE_CHARS]}…"


def _change_lines(change: FieldChange, verbose: bool) -> list[str]:
    path = escape(change.path)
    if change.added or change.removed:
        items = [f"[red]- {escape(_cut(x, verbose))}[/]" for x in change.removed]
        items += [f"[green]+ {escape(_cut(x, verbose))}[/]" for x in change.added]
        if len(items) == 1:
            return [f"    {path}: {items[0]}"]
        return [f"    {path}:"] + [f"      {x}" for x in items]
    old, new = escape(_cut(change.old or "", verbose)), escape(_cut(change.new or "", verbose))
    return [f"    {path}: {old} → {new}"]


def _per_kind(plan: PublishPlan) -> str:
    counts: dict[str, dict[str, int]] = {}
    for what, names in (("new", [r.name for r in plan.added]), ("changed", [r.name for r in plan.changed]),
                        ("deleted", plan.deleted)):
        for name in names:
            kind = counts.setdefault(collection_of(name), {})
            kind[what] = kind.get(what, 0) + 1
    return "; ".join(
        f"{kind} " + ", ".join(f"{n} {what}" for what, n in c.items()) for kind, c in sorted(counts.items())
    )


def _print_plan(plan: PublishPlan, dry_run: bool, fmt: str, verbose: bool = False) -> None:
    if fmt == "json":
        click.echo(json.dumps({
            "dry_run": dry_run,
            "prune": plan.prune,
            "added": [r.name for r in plan.added],
            "changed": [r.name for r in plan.changed],
            "changes": {name: [c.as_dict() for c in changes] for name, changes in plan.changes.items()},
            "deleted": plan.deleted,
            "kept": plan.kept,
            "unchanged": plan.unchanged,
            "untouched": plan.untouched,
            "kinds": plan.collections,
            "notices": plan.notices,
            "appended": plan.appended,
            "checkpoint_size": plan.checkpoint_size,
        }, indent=2, ensure_ascii=False))
        return
    for notice in plan.notices:
        out.print(f"[dim]note: {escape(notice)}[/]", highlight=False)
    lines: list[str] = [f"[red]- {name}[/]  (not in these files; --prune)" for name in plan.deleted]
    for r in plan.changed:
        lines.append(f"[yellow]~ {r.name}[/]  ({escape(r.source)})")
        for change in plan.changes.get(r.name, []):
            lines.extend(_change_lines(change, verbose))
    lines += [f"[green]+ {r.name}[/]  ({escape(r.source)})" for r in plan.added]
    shown = lines if verbose else lines[:DETAIL_LINES]
    for line in shown:
        out.print(line, highlight=False)
    if len(shown) < len(lines):
        out.print(f"… {len(lines) - len(shown)} more lines (--verbose shows every record and field)", highlight=False)
    summary = f"{len(plan.added)} new, {len(plan.changed)} changed, {len(plan.deleted)} deleted, {plan.unchanged} unchanged"
    if dry_run:
        out.print(f"dry run: {summary}; nothing appended")
    elif plan.empty:
        out.print(f"nothing to publish: {summary}; log size {plan.checkpoint_size}")
    else:
        out.print(f"published: {summary}; appended {plan.appended} entries, checkpoint size {plan.checkpoint_size}")
    if len({collection_of(n) for n in [*(r.name for r in plan.added), *(r.name for r in plan.changed), *plan.deleted]}) > 1:
        out.print(f"by kind: {_per_kind(plan)}", highlight=False)
    if plan.kept:
        one = len(plan.kept) == 1
        kinds = "" if len(plan.collections) == len(spreadsheets.KINDS) else f" (of the kinds in these files: {', '.join(plan.collections)})"
        out.print(
            f"[yellow]{len(plan.kept)} record{'' if one else 's'} not in these files {'is' if one else 'are'} kept; "
            f"--prune deletes {'it' if one else 'them'}[/]{kinds}", highlight=False,
        )
        listed = plan.kept if verbose else plan.kept[:5]
        for name in listed:
            out.print(f"  kept: {name}", highlight=False)
        if len(listed) < len(plan.kept):
            out.print(f"  … and {len(plan.kept) - len(listed)} more (--verbose lists them)", highlight=False)
    if plan.untouched:
        out.print(f"{plan.untouched} published record{'' if plan.untouched == 1 else 's'} of other kinds "
                  f"{'is' if plan.untouched == 1 else 'are'} left as {'it is' if plan.untouched == 1 else 'they are'}",
                  highlight=False)


class _PublishProgress:
    """A progress bar on stderr while entries are signed and stored, only on a terminal and
    only for many entries."""

    def __init__(self, console: Console) -> None:
        self.bar: Progress | None = None
        if console.is_terminal:
            self.bar = progress_bar(console)
        self.tasks: dict[str, TaskID] = {}

    def __call__(self, phase: str, done: int, total: int) -> None:
        if self.bar is None or (phase == "signing" and total < PROGRESS_AT) or (phase != "signing" and not self.tasks):
            return
        if phase not in self.tasks:
            if not self.tasks:
                self.bar.start()
            label = "signing entries" if phase == "signing" else "storing and indexing"
            self.tasks[phase] = self.bar.add_task(label, total=total)
        self.bar.update(self.tasks[phase], completed=done, total=total)

    def close(self) -> None:
        if self.bar is not None and self.tasks:
            self.bar.stop()


@main.command()
@click.argument("path", type=click.Path(path_type=Path))
@data_dir_option
@click.option("--dry-run", is_flag=True, help="Validate and show the difference; append nothing.")
@click.option(
    "--prune", is_flag=True,
    help="Also delete the published records, of the kinds these files hold, that they do not hold "
    "(without it nothing is ever deleted).",
)
@click.option("--verbose", "-v", is_flag=True, help=f"Show every record and field (default: at most {DETAIL_LINES} lines).")
@passphrase_option
@format_option
@fail_cleanly
def publish(
    path: Path, data_dir: Path, dry_run: bool, prune: bool, verbose: bool, passphrase_file: Path | None, fmt: str,
) -> None:
    """Publish the member's records from YAML, CSV or XLSX files (a file, or a folder mixing them).

    New and changed records are signed and appended; records the files do not hold are kept
    unless --prune is given. Refused, with nothing appended, when the federation document has
    expired or does not list this node's member, or the node's key is not the member's."""
    node = _open(data_dir)
    passphrase = None if dry_run else _passphrase(passphrase_file)
    progress = _PublishProgress(err)
    try:
        plan = node.publish(path, passphrase, dry_run=dry_run, prune=prune, progress=progress)
    finally:
        progress.close()
    _print_plan(plan, dry_run, fmt, verbose)


@main.command("export")
@data_dir_option
@click.option("--format", "fmt", type=click.Choice(["csv", "xlsx"]), default="xlsx", show_default=True)
@click.option(
    "--out", "out_path", type=click.Path(path_type=Path), required=True,
    help="csv: a folder (one file per kind); xlsx: a workbook file, or a folder for <member>-records.xlsx.",
)
@click.option("--force", is_flag=True, help="Overwrite files that exist.")
@fail_cleanly
def export(data_dir: Path, fmt: str, out_path: Path, force: bool) -> None:
    """Write the member's current records to spreadsheets, one sheet (or CSV file) per kind, in
    the layout `publish` reads: publishing the export changes nothing."""
    node = _open(data_dir)
    records = node.current_records()
    if fmt == "csv":
        if out_path.suffix.lower() in (".csv", ".xlsx"):
            raise InvalidArgumentError(
                f"--format csv writes one file per kind of record into a folder; {out_path} names a file",
                reason="USAGE",
            )
        written = [str(p) for p in spreadsheets.write_csv(records, node.member, out_path, overwrite=force)]
    else:
        target = out_path / f"{node.member}-records.xlsx" if out_path.is_dir() or not out_path.suffix else out_path
        if target.suffix.lower() != ".xlsx":
            raise InvalidArgumentError(f"--format xlsx writes an .xlsx workbook; {out_path} is not one", reason="USAGE")
        written = [str(spreadsheets.write_xlsx(records, node.member, target, overwrite=force))]
    counts: dict[str, int] = {kind: 0 for kind in spreadsheets.KINDS}
    for record in records:
        counts[spreadsheets.kind_of_record(record)] += 1
    out.print(
        f"exported {len(records)} records of {node.member} ({', '.join(f'{n} {k}' for k, n in counts.items())}) "
        f"to {', '.join(written)}", highlight=False,
    )


@main.command()
@data_dir_option
@passphrase_option
@click.option("--force", is_flag=True, help="Sign a new checkpoint even if the current one is fresh.")
@fail_cleanly
def heartbeat(data_dir: Path, passphrase_file: Path | None, force: bool) -> None:
    """Re-sign the member's checkpoint so readers can see the origin is alive (a serving
    node does it by itself: refused while one serves)."""
    config = load_config(data_dir)
    with NodeLock(data_dir, "heartbeat").acquire(hint="A serving node re-signs its checkpoint by itself"):
        node = Node(config)
        try:
            cp = node.heartbeat(node.signing_key(_passphrase(passphrase_file)), force=force)
        finally:
            node.close()
    out.print("checkpoint still fresh; nothing signed" if cp is None else f"signed checkpoint size {cp.size}, expires {cp.expire_time.isoformat()}")


# --- integrity and status -----------------------------------------------------------------


@main.command()
@data_dir_option
@format_option
@fail_cleanly
def verify(data_dir: Path, fmt: str) -> None:
    """Re-check every signature and root on disk; exit 1 and name what is wrong."""
    from directory_server.progress import CountingStore, Meter

    config = load_config(data_dir)
    store = CountingStore(config.db_url)
    node = Node(config, store)
    try:
        with Meter(err, "verify", "checking signatures and roots", store.entry_count()) as meter:
            store.meter = meter
            report = node.verify_report()
    finally:
        node.close()
    checked, problems = report.checked, report.problems
    withheld = sum(report.withheld.values())
    if fmt == "json":
        click.echo(json.dumps(
            {"checked": checked, "withheld": report.withheld, "problems": [p.__dict__ for p in problems]}, indent=2
        ))
    else:
        for p in problems:
            where = f"{p.member} seq {p.seq}" if p.seq else p.member or "node"
            err.print(f"[bold red]{where}[/]: {p.reason}: {p.message}", highlight=False)
        held = f" ({withheld} withheld: members-only, held as their leaf hash, covered by the signed roots)" if withheld else ""
        out.print(f"checked {checked} entries{held}: {'OK' if not problems else f'{len(problems)} problem(s)'}")
    if problems:
        sys.exit(1)


@main.command()
@data_dir_option
@fail_cleanly
def rebuild(data_dir: Path) -> None:
    """Re-derive the lookup indexes from the verified envelopes (refused while the node serves)."""
    from directory_server.progress import CountingStore, Meter

    config = load_config(data_dir)
    with NodeLock(data_dir, "rebuild").acquire(hint="Stop it first: rebuild rewrites what a serving node reads"):
        store = CountingStore(config.db_url)
        node = Node(config, store)
        try:
            with Meter(err, "rebuild", "verifying the signed entries", store.entry_count()) as meter:
                store.meter = meter
                n = node.rebuild()
        finally:
            node.close()
    out.print(f"rebuilt indexes of {n} current records")


@main.command()
@data_dir_option
@format_option
@fail_cleanly
def status(data_dir: Path, fmt: str) -> None:
    """Show the federation document and, per member, log size and checkpoint age."""
    node = _open(data_dir)
    federation = node.federation()
    now = utcnow()
    rows = [asdict(s) for s in node.member_statuses()]
    doc = federation.document
    alarms = [asdict(a) for a in node.alarms()]
    t = _tls_status(node)
    head: dict[str, Any] = {
        "member": node.member, "federation_id": doc.federation_id, "federation_version": doc.version,
        "federation_expired": federation.expired(now), "tls": t, "alarms": alarms,
        "members_only_records_served": node.store.audit_count(), "members": rows,
    }
    if fmt == "json":
        click.echo(json.dumps(head, indent=2))
        return
    out.print(f"node of {node.member}; federation {doc.federation_id} version {doc.version}"
              + (" [red](expired)[/]" if head["federation_expired"] else ""))
    if not t["enabled"]:
        out.print("TLS: off (plaintext, loopback only)")
    elif "error" in t:
        out.print(f"[red]TLS: {t['error']}[/]", highlight=False)
    else:
        listed = "[green]listed[/]" if t["listed"] else "[red]NOT listed[/] (peers and clients refuse it)"
        out.print(f"TLS: certificate {t['fingerprint']}, {listed} for {node.member} in the federation document; "
                  f"expires {t['not_after']}", highlight=False)
    out.print(f"members-only records served: {head['members_only_records_served']} (counterpart-node access audit)")
    for a in alarms:
        out.print(
            f"[bold red]ALARM {a['reason']}[/]: {a['count']}x from {a['peer']} (last {a['last_time']}): {a['message']}",
            highlight=False,
        )
    table = Table("member", "log size", "checkpoint", "age", "state", "synced from", "rejected")
    for r in rows:
        age = r["checkpoint_age_seconds"]
        state = "stale" if r["stale"] else ("ok" if r["checkpoint_size"] is not None else "no data")
        if r["equivocations"]:
            state = f"[red]EQUIVOCATION ({len(r['equivocations'])})[/]"
        successes = [p["last_success"] for p in r["peers"] if p["last_success"]]
        table.add_row(
            r["member"] or "(federation)", str(r["log_size"]),
            str(r["checkpoint_size"] if r["checkpoint_size"] is not None else "-"),
            str(timedelta(seconds=age)) if age is not None else "-",
            state,
            f"{len(successes)} peer(s), last {_ago(max(successes), now)}" if successes else "-",
            str(sum(x["count"] for x in r["rejections"])) if r["rejections"] else "-",
        )
    out.print(table)
    peers = Table("member", "peer", "largest size shown", "last successful sync", title="sync per peer")
    for r in rows:
        for p in r["peers"]:
            peers.add_row(r["member"], p["peer"], str(p["last_size"]), _ago(p["last_success"], now))
    if peers.row_count:
        out.print(peers)
    for r in rows:
        for x in r["rejections"]:
            out.print(
                f"[yellow]rejected[/] {x['count']}x from {x['peer']} about {r['member'] or 'the federation document'}: "
                f"{x['reason']} (last {x['last_time']}: {x['last_message']})", highlight=False,
            )
        for e in r["equivocations"]:
            out.print(
                f"[red]{r['member']} signed two inconsistent checkpoints[/] (sizes {e['held_size']} held, "
                f"{e['offered_size']} from {e['peer']}, detected {e['detected_time']}); this node keeps "
                "serving the history it verified first. Both signed checkpoints are in `status --format json`.",
                highlight=False,
            )


def _tls_status(node: Node) -> dict[str, Any]:
    """The node's certificate (public, no passphrase needed) and whether the document lists it."""
    c = node.config
    if not c.tls_enabled:
        return {"enabled": False}
    try:
        der = security.read_certificate(c.tls_cert_path)
    except CounterpartError as e:
        return {"enabled": True, "error": e.message}
    member = node.federation().member(node.member)
    return {
        "enabled": True, "fingerprint": tls.fingerprint(der),
        "listed": member is not None and any(bytes(x) == der for x in member.tls_certificates),
        "not_after": tls.validity(der).not_after.isoformat(), "peer_listen": c.peer_listen,
    }


def _ago(iso: str | None, now: datetime) -> str:
    if iso is None:
        return "never"
    return f"{int((now - datetime.fromisoformat(iso)).total_seconds())} s ago"


# --- the federation document --------------------------------------------------------------


@main.group()
def federation() -> None:
    """Create, sign, verify and install federation documents."""


@federation.command("keygen")
@click.option("--out", "out_path", type=click.Path(path_type=Path, dir_okay=False), required=True)
@passphrase_option
@fail_cleanly
def fed_keygen(out_path: Path, passphrase_file: Path | None) -> None:
    """Generate an encrypted root key (and OUT.pub with its public key)."""
    key = signing.SigningKey.generate()
    signing.write_key_file(out_path, key, _passphrase(passphrase_file))
    signing.write_public_key_file(out_path.with_suffix(".pub"), key.public_bytes)
    out.print(f"root key {key.key_id}: {out_path} (public: {out_path.with_suffix('.pub')})")


@federation.command("init")
@click.option("--id", "federation_id", required=True, help="Identifier of the federation, e.g. casc.")
@click.option("--root-key", "root_keys", multiple=True, required=True, type=click.Path(path_type=Path, dir_okay=False), help="Public root key file (repeat).")
@click.option("--threshold", type=int, default=1, show_default=True)
@click.option("--valid-for", default="365d", show_default=True)
@click.option("--out", "out_path", type=click.Path(path_type=Path, dir_okay=False), required=True)
@fail_cleanly
def fed_init(federation_id: str, root_keys: tuple[Path, ...], threshold: int, valid_for: str, out_path: Path) -> None:
    """Create version 1 (unsigned) with root keys, threshold and the default vocabularies."""
    doc = fed.new_document(
        federation_id, [signing.read_public_key_file(p) for p in root_keys], threshold, utcnow(), _duration(valid_for)
    )
    fed.write_file(out_path, fed.unsigned_envelope(doc))
    out.print(f"wrote unsigned version 1 of {federation_id} to {out_path}; sign it with `federation sign`")


def _duration(text: str) -> timedelta:
    try:
        return parse_duration(text)
    except ValueError as e:
        raise InvalidArgumentError(str(e), reason="INVALID_DURATION") from e


def _instant(text: str, what: str) -> datetime:
    """An ISO 8601 instant (UTC when it names no zone); a bare date is its midnight UTC."""
    try:
        parsed = datetime.fromisoformat(text.strip())
    except ValueError as e:
        raise InvalidArgumentError(
            f"{what} {text[:60]!r} is not an ISO 8601 instant such as 2026-11-22T12:00:00Z", reason="INVALID_INSTANT"
        ) from e
    return (parsed if parsed.tzinfo is not None else parsed.replace(tzinfo=UTC)).astimezone(UTC)


valid_for_option = click.option(
    "--valid-for", default=None,
    help="How long the new version is valid from now, e.g. 90d (default: as long as the current one).",
)
code_option = click.option("--code", required=True, help="The member, e.g. GE.")
document_argument = click.argument("path", type=click.Path(path_type=Path, dir_okay=False))

Change = Callable[[federation_pb2.FederationDocument, datetime], str]


def _edit(path: Path, valid_for: str | None, change: Change, *, renew: bool = False) -> None:
    """Apply one change to the document at ``path`` as the next draft version (a fully
    signed document becomes the draft of version N+1; an under-signed draft is changed in
    place), write it unsigned, and print what changed and who must sign. Any error leaves
    the file as it was: everything is checked before it is written."""
    envelope = fed.read_file(path)
    before = fed.signature_status(envelope)[0]
    now = utcnow()
    issued = now.replace(microsecond=0)  # the document's dates in whole seconds; key instants exact
    doc, bumped = fed.open_for_edit(envelope, issued, _duration(valid_for) if valid_for is not None else None)
    done = change(doc, now)
    fed.check_keys(doc)
    if not renew and not fed.content_changed(before, doc):
        raise InvalidArgumentError(f"nothing changes in {path}; it is left as it was", reason="NO_CHANGE")
    fed.write_file(path, fed.unsigned_envelope(doc))
    if bumped:
        click.echo(f"{path} was signed version {before.version}; editing it as draft version {doc.version}")
    else:
        click.echo(f"{path} is a draft of version {doc.version} (not fully signed); changing it in place")
    click.echo(done)
    click.echo("changes:")
    for line in fed.describe_changes(before, doc):
        click.echo(f"  {line}")
    click.echo(_signers_needed(path, before, doc, bumped))


def _signers_needed(
    path: Path, before: federation_pb2.FederationDocument, doc: federation_pb2.FederationDocument, bumped: bool,
) -> str:
    def ids(d: federation_pb2.FederationDocument) -> str:
        return ", ".join(k.key_id for k in d.root_keys)

    own = f"{doc.root_threshold} of its own root keys ({ids(doc)})"
    sign = f"; each holder runs `counterpart-node federation sign {path} --key ROOT.key`"
    if doc.version == 1:
        return f"written unsigned: version 1 needs {own}{sign}"
    if bumped and ids(before) == ids(doc) and before.root_threshold == doc.root_threshold:
        return (f"written unsigned: version {doc.version} needs {doc.root_threshold} signature(s) by its root keys, "
                f"the same as version {before.version}'s ({ids(doc)}){sign}")
    if bumped:
        return (f"written unsigned: version {doc.version} must be signed by {before.root_threshold} of version "
                f"{before.version}'s root keys ({ids(before)}) AND by {own}: every node checks both, so the old "
                f"keys sign before they are retired{sign}")
    changed = ids(before) != ids(doc) or before.root_threshold != doc.root_threshold
    return (f"written unsigned: version {doc.version} must be signed by a threshold of version {doc.version - 1}'s "
            f"root keys AND by {own}" + (": every node checks both, so the old keys sign before they are retired"
                                          if changed else " (the same keys unless this draft changed them)") + sign)


@federation.command("add-member")
@document_argument
@code_option
@click.option("--display-name", required=True)
@click.option("--key", "keys", multiple=True, required=True, type=click.Path(path_type=Path, dir_okay=False), help="Member's public key file (repeat).")
@click.option("--endpoint", "endpoints", multiple=True, help="host:port of the member's node (repeat).")
@click.option("--peer-endpoint", "peer_endpoints", multiple=True, help="host:port of its mutual-TLS peer listener (repeat).")
@click.option(
    "--tls-cert", "tls_certs", multiple=True, type=click.Path(path_type=Path, dir_okay=False),
    help="The node's TLS certificate (keys/tls-cert.pem of its data directory; repeat).",
)
@valid_for_option
@fail_cleanly
def fed_add_member(
    path: Path, code: str, display_name: str, keys: tuple[Path, ...], endpoints: tuple[str, ...],
    peer_endpoints: tuple[str, ...], tls_certs: tuple[Path, ...], valid_for: str | None,
) -> None:
    """Admit a member with its keys, node certificate and endpoints (clears signatures: sign again)."""
    raw_keys = [signing.read_public_key_file(k) for k in keys]
    certificates = [security.read_certificate(c) for c in tls_certs]

    def change(doc: federation_pb2.FederationDocument, now: datetime) -> str:
        fed.add_member(doc, code, display_name, raw_keys, endpoints, certificates, peer_endpoints)
        return f"added {code} ({display_name}) to version {doc.version}"

    _edit(path, valid_for, change)


@federation.command("add-key")
@document_argument
@code_option
@click.option("--key", "key_file", required=True, type=click.Path(path_type=Path, dir_okay=False),
              help="The member's new public key file (the .pub of its new signing key).")
@click.option("--not-before", default=None, help="ISO 8601 instant from which it may sign (default: at once).")
@valid_for_option
@fail_cleanly
def fed_add_key(path: Path, code: str, key_file: Path, not_before: str | None, valid_for: str | None) -> None:
    """Publish a member's next signing key, before the member uses it. Once the version has
    spread, the member points key_file at the new key; then retire the old one."""
    raw = signing.read_public_key_file(key_file)
    start = _instant(not_before, "--not-before") if not_before is not None else None

    def change(doc: federation_pb2.FederationDocument, now: datetime) -> str:
        key = fed.add_member_key(doc, code, raw, start)
        return (f"published {code}'s new key {key.key_id} ({fed.key_window(key)}); once this version has spread, "
                f"{code} points key_file at it, then retire the old key (federation retire-key)")

    _edit(path, valid_for, change)


@federation.command("retire-key")
@document_argument
@code_option
@click.option("--key-id", required=True, help="The key's id (ed25519:…) or 8+ hex digits of it.")
@click.option("--not-after", default=None, help="ISO 8601 instant after which it may not sign (default: now).")
@valid_for_option
@fail_cleanly
def fed_retire_key(path: Path, code: str, key_id: str, not_after: str | None, valid_for: str | None) -> None:
    """End a member's key at the close of a rotation (from now, or a later instant); what
    it signed before stays valid. The member must have another valid key."""
    end = _instant(not_after, "--not-after") if not_after is not None else None

    def change(doc: federation_pb2.FederationDocument, now: datetime) -> str:
        key = fed.retire_member_key(doc, code, key_id, end or now, now)
        return f"retired {code}'s key {key.key_id}: {fed.key_window(key)}"

    _edit(path, valid_for, change)


@federation.command("withdraw-key")
@document_argument
@code_option
@click.option("--key-id", required=True, help="The key's id (ed25519:…) or 8+ hex digits of it.")
@click.option("--as-of", required=True, help="ISO 8601 instant, in the past, from which nothing it signs is accepted.")
@valid_for_option
@fail_cleanly
def fed_withdraw_key(path: Path, code: str, key_id: str, as_of: str, valid_for: str | None) -> None:
    """Withdraw a compromised key: entries, checkpoints and access tokens it signed after
    --as-of are refused everywhere; what it signed before still verifies. The member
    republishes with another key (publish one first with add-key)."""
    instant = _instant(as_of, "--as-of")

    def change(doc: federation_pb2.FederationDocument, now: datetime) -> str:
        key = fed.withdraw_member_key(doc, code, key_id, instant, now)
        return (f"withdrew {code}'s key {key.key_id} as of {fed.when(instant)}: whatever it signed after that "
                "is refused everywhere once this version has spread")

    _edit(path, valid_for, change)


@federation.command("set-endpoints")
@document_argument
@code_option
@click.option("--endpoint", "endpoints", multiple=True, help="host:port of the member's public listener (repeat; replaces the list).")
@click.option("--peer-endpoint", "peer_endpoints", multiple=True, help="host:port of its mutual-TLS peer listener (repeat; replaces the list).")
@click.option("--no-endpoints", is_flag=True, help="Empty the public endpoints.")
@click.option("--no-peer-endpoints", is_flag=True, help="Empty the peer endpoints (the node has no peer listener).")
@valid_for_option
@fail_cleanly
def fed_set_endpoints(
    path: Path, code: str, endpoints: tuple[str, ...], peer_endpoints: tuple[str, ...], no_endpoints: bool,
    no_peer_endpoints: bool, valid_for: str | None,
) -> None:
    """Replace a member's endpoints and/or peer endpoints (a list not given is kept)."""
    if (endpoints and no_endpoints) or (peer_endpoints and no_peer_endpoints):
        raise InvalidArgumentError("give either endpoints or --no-endpoints (--no-peer-endpoints), not both", reason="USAGE")
    public = list(endpoints) if endpoints or no_endpoints else None
    peer = list(peer_endpoints) if peer_endpoints or no_peer_endpoints else None
    if public is None and peer is None:
        raise InvalidArgumentError(
            "give --endpoint and/or --peer-endpoint (or --no-endpoints / --no-peer-endpoints)", reason="USAGE"
        )

    def change(doc: federation_pb2.FederationDocument, now: datetime) -> str:
        fed.set_member_endpoints(doc, code, public, peer)
        return f"set {code}'s endpoints"

    _edit(path, valid_for, change)


@federation.command("suspend")
@document_argument
@code_option
@valid_for_option
@fail_cleanly
def fed_suspend(path: Path, code: str, valid_for: str | None) -> None:
    """Suspend a member: each of its keys still valid ends now, so its new entries,
    checkpoints and access tokens are refused everywhere; what it signed stays valid, and
    its endpoints and node certificates are kept. `resume` undoes it."""

    def change(doc: federation_pb2.FederationDocument, now: datetime) -> str:
        ended = fed.suspend_member(doc, code, now)
        return f"suspended {code}: its key(s) {', '.join(ended)} may not sign after {fed.when(now)}"

    _edit(path, valid_for, change)


@federation.command("resume")
@document_argument
@code_option
@valid_for_option
@fail_cleanly
def fed_resume(path: Path, code: str, valid_for: str | None) -> None:
    """Lift a suspension: the keys it ended are valid again (keys retired or withdrawn
    before stay ended). To resume with a fresh key instead, use add-key."""

    def change(doc: federation_pb2.FederationDocument, now: datetime) -> str:
        restored = fed.resume_member(doc, code, now)
        return f"resumed {code}: its key(s) {', '.join(restored)} are valid again"

    _edit(path, valid_for, change)


@federation.command("remove-member")
@document_argument
@code_option
@valid_for_option
@fail_cleanly
def fed_remove_member(path: Path, code: str, valid_for: str | None) -> None:
    """Take a member out of the federation: its keys, endpoints and node certificates go,
    so nothing it signs is accepted any more."""

    def change(doc: federation_pb2.FederationDocument, now: datetime) -> str:
        removed = fed.remove_member(doc, code)
        return f"removed {code} ({removed.display_name})"

    _edit(path, valid_for, change)


@federation.command("root-keys")
@document_argument
@click.option("--add", "add", multiple=True, type=click.Path(path_type=Path, dir_okay=False), help="Public root key file to add (repeat).")
@click.option("--remove", "remove", multiple=True, help="Id of a root key to remove, or 8+ hex digits of it (repeat).")
@click.option("--threshold", type=int, default=None, help="The new threshold (default: kept).")
@valid_for_option
@fail_cleanly
def fed_root_keys(path: Path, add: tuple[Path, ...], remove: tuple[str, ...], threshold: int | None, valid_for: str | None) -> None:
    """Add or remove root keys and/or set the threshold. The new version must be signed by a
    threshold of the previous version's root keys and by a threshold of its own."""
    if not add and not remove and threshold is None:
        raise InvalidArgumentError("give --add, --remove and/or --threshold", reason="USAGE")
    raw = [signing.read_public_key_file(p) for p in add]

    def change(doc: federation_pb2.FederationDocument, now: datetime) -> str:
        fed.change_root_keys(doc, raw, remove, threshold)
        return f"root keys of version {doc.version}: {len(doc.root_keys)}, threshold {doc.root_threshold}"

    _edit(path, valid_for, change)


@federation.command("threshold")
@document_argument
@click.argument("threshold", type=int)
@valid_for_option
@fail_cleanly
def fed_threshold(path: Path, threshold: int, valid_for: str | None) -> None:
    """Set how many root keys must sign (the new version still needs the previous threshold too)."""

    def change(doc: federation_pb2.FederationDocument, now: datetime) -> str:
        fed.change_root_keys(doc, threshold=threshold)
        return f"threshold of version {doc.version}: {doc.root_threshold} of {len(doc.root_keys)} root keys"

    _edit(path, valid_for, change)


@federation.command("renew")
@document_argument
@valid_for_option
@fail_cleanly
def fed_renew(path: Path, valid_for: str | None) -> None:
    """Issue the next version with nothing changed but its dates, before the current one expires."""

    def change(doc: federation_pb2.FederationDocument, now: datetime) -> str:
        return f"renewed version {doc.version}: expires {fed.when(from_timestamp(doc.expire_time))}"

    _edit(path, valid_for, change, renew=True)


@federation.command("tls-cert")
@document_argument
@click.option("--code", required=True, help="The member whose node certificate changes.")
@click.option("--add", "add", type=click.Path(path_type=Path, dir_okay=False), default=None, help="Admit this certificate.")
@click.option("--remove", "remove", default=None, help="Withdraw the certificate with this SHA-256 fingerprint (8+ hex digits).")
@valid_for_option
@fail_cleanly
def fed_tls_cert(path: Path, code: str, add: Path | None, remove: str | None, valid_for: str | None) -> None:
    """Admit or withdraw a member node's TLS certificate (rotation: add the new one, let the
    version spread, restart the node with the new key, then remove the old one). Running
    nodes apply the new version on the next handshake and call, without a restart."""
    if (add is None) == (remove is None):
        raise InvalidArgumentError("give exactly one of --add FILE and --remove FINGERPRINT", reason="USAGE")
    certificate = security.read_certificate(add) if add is not None else None

    def change(doc: federation_pb2.FederationDocument, now: datetime) -> str:
        if certificate is not None:
            return f"admitted certificate {fed.add_tls_certificate(doc, code, certificate)} for {code}"
        assert remove is not None
        return f"withdrew certificate {fed.remove_tls_certificate(doc, code, remove)} for {code}"

    _edit(path, valid_for, change)


@federation.command("sign")
@click.argument("path", type=click.Path(path_type=Path, dir_okay=False))
@click.option("--key", "key_file", required=True, type=click.Path(path_type=Path, dir_okay=False), help="Encrypted root key file.")
@passphrase_option
@fail_cleanly
def fed_sign(path: Path, key_file: Path, passphrase_file: Path | None) -> None:
    """Add a root key's signature to the document."""
    key = signing.read_key_file(key_file, _passphrase(passphrase_file))
    envelope = signing.add_signature(fed.read_file(path), key)
    fed.write_file(path, envelope)
    doc, good, threshold = fed.signature_status(envelope)
    out.print(f"signed version {doc.version} with {key.key_id}: {good} of {threshold} required signature(s)", highlight=False)
    if doc.version > 1 and good >= threshold:
        click.echo(f"nodes also require a threshold of version {doc.version - 1}'s root keys: check with "
                   f"`counterpart-node federation verify {path} --previous VERSION-{doc.version - 1}.json`")


@federation.command("verify")
@click.argument("path", type=click.Path(path_type=Path, dir_okay=False))
@click.option("--previous", type=click.Path(path_type=Path, dir_okay=False), default=None, help="The version this one must follow.")
@fail_cleanly
def fed_verify(path: Path, previous: Path | None) -> None:
    """Check the document's signatures and expiry (and that it follows --previous); exit 1 if not acceptable."""
    now = utcnow()
    envelope = fed.read_file(path)
    if previous is not None:
        accepted = fed.verify_next(fed.verify_initial(fed.read_file(previous), now), envelope, now)
    else:
        accepted = fed.verify_initial(envelope, now)
    doc = accepted.document
    out.print(
        f"OK: {doc.federation_id} version {doc.version}, {len(doc.members)} member(s), "
        f"expires {from_timestamp(doc.expire_time).isoformat()}"
    )


@federation.command("show")
@click.argument("path", type=click.Path(path_type=Path, dir_okay=False))
@format_option
@fail_cleanly
def fed_show(path: Path, fmt: str) -> None:
    """Print the document's content and signature count."""
    doc, good, threshold = fed.signature_status(fed.read_file(path))
    if fmt == "json":
        body = json_format.MessageToDict(doc, preserving_proto_field_name=True)
        body.pop("vocabularies", None)
        click.echo(json.dumps({"document": body, "valid_signatures": good, "threshold": threshold}, indent=2, ensure_ascii=False))
        return
    out.print(f"{doc.federation_id} version {doc.version}: {good} of {threshold} required signature(s); "
              f"expires {from_timestamp(doc.expire_time).isoformat()}")
    out.print(f"root keys ({threshold} must sign): {', '.join(k.key_id for k in doc.root_keys)}", highlight=False)
    table = Table("member", "name", "endpoints", "peer endpoints", "TLS certificates")
    now = utcnow()
    members = sorted(doc.members, key=lambda m: m.code)
    for m in members:
        table.add_row(
            m.code, m.display_name + (" (suspended)" if m.keys and fed.suspended(m, now) else ""),
            ", ".join(m.endpoints), ", ".join(m.peer_endpoints),
            ", ".join(tls.fingerprint(bytes(c))[:16] for c in m.tls_certificates),
        )
    out.print(table)
    click.echo("member keys:")
    for m in members:
        for k in m.keys:
            click.echo(f"  {m.code} {k.key_id} ({fed.key_window(k)})")


@federation.command("install")
@click.argument("path", type=click.Path(path_type=Path, dir_okay=False))
@data_dir_option
@fail_cleanly
def fed_install(path: Path, data_dir: Path) -> None:
    """Give the node its first document, or the next version of the current one."""
    node = _open(data_dir)
    accepted = node.install_federation(fed.read_file(path), require_member=True)
    out.print(f"node of {node.member} now follows {accepted.document.federation_id} version {accepted.version}")


# --- access: signed-in users ---------------------------------------------------------------


@main.group()
def access_group() -> None:
    """Issue, list and revoke the access tokens of this member's prosecutors and systems."""


main.add_command(access_group, "access")


@access_group.command("grant")
@click.option("--subject", required=True, help="Who the token is for: a login or a system's name (no personal data needed).")
@click.option("--role", type=click.Choice(access.ROLES), default="prosecutor", show_default=True)
@click.option("--valid-for", default="30d", show_default=True, help="Lifetime (at most 90d), e.g. 8h, 30d.")
@click.option("--out", "out_path", type=click.Path(path_type=Path, dir_okay=False), default=None,
              help="Write the token to this file (mode 600) instead of printing it.")
@data_dir_option
@passphrase_option
@format_option
@fail_cleanly
def access_grant(
    subject: str, role: str, valid_for: str, out_path: Path | None, data_dir: Path, passphrase_file: Path | None, fmt: str,
) -> None:
    """Issue an access token signed with the member's key: every node of the federation
    accepts it (over TLS) until it expires; this node also until it is revoked."""
    node = _open(data_dir)
    key = node.signing_key(_passphrase(passphrase_file))
    issued = access.issue_token(key, node.federation(), node.member, subject, role, node.clock(), _duration(valid_for))
    node.store.add_grant(issued.token_id, issued.subject, issued.role, issued.issue_time, issued.expire_time)
    if out_path is not None:
        _write_secret(out_path, issued.token + "\n")
    summary = {
        "token_id": issued.token_id, "subject": issued.subject, "role": issued.role, "member": issued.member,
        "expire_time": issued.expire_time.isoformat(), "token_file": str(out_path) if out_path else None,
    }
    if fmt == "json":
        click.echo(json.dumps({**summary, **({} if out_path else {"token": issued.token})}, indent=2))
        return
    err.print(f"granted {role} access to {subject} of {node.member} until {issued.expire_time.isoformat()} "
              f"(token id {issued.token_id})", highlight=False)
    if out_path is not None:
        err.print(f"token written to {out_path} (mode 600); hand it over as a secret: "
                  "`counterpart login --token-file FILE`", highlight=False)
    else:
        click.echo(issued.token)


def _write_secret(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError as e:
        raise InvalidArgumentError(f"{path} exists; refusing to overwrite it", reason="FILE_EXISTS") from e
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(text)


@access_group.command("list")
@data_dir_option
@format_option
@fail_cleanly
def access_list(data_dir: Path, fmt: str) -> None:
    """The tokens this node issued: subject, role, expiry, and whether revoked."""
    node = _open(data_dir)
    now = node.clock()
    rows = [
        {
            "token_id": g.token_id, "subject": g.subject, "role": g.role, "issue_time": g.issue_time.isoformat(),
            "expire_time": g.expire_time.isoformat(),
            "state": "revoked" if g.revoke_time else ("expired" if now > g.expire_time else "valid"),
            "revoke_time": g.revoke_time.isoformat() if g.revoke_time else None,
        }
        for g in node.store.grants()
    ]
    if fmt == "json":
        click.echo(json.dumps({"member": node.member, "grants": rows}, indent=2))
        return
    table = Table("token id", "subject", "role", "expires", "state")
    for r in rows:
        table.add_row(str(r["token_id"]), str(r["subject"]), str(r["role"]), str(r["expire_time"])[:19], str(r["state"]))
    out.print(table)


@access_group.command("revoke")
@click.argument("selector")
@data_dir_option
@fail_cleanly
def access_revoke(selector: str, data_dir: Path) -> None:
    """Revoke tokens by token id (or its first 8+ characters) or by subject. This node refuses
    them at once; other nodes accept them until they expire, so keep lifetimes short."""
    node = _open(data_dir)
    revoked = node.store.revoke_grants(selector, node.clock())
    if not revoked:
        raise InvalidArgumentError(f"no valid token matches {selector[:64]!r}", reason="GRANT_NOT_FOUND")
    for token_id in revoked:
        out.print(f"revoked {token_id}")


@access_group.command("audit")
@data_dir_option
@click.option("--limit", type=click.IntRange(1, 10_000), default=50, show_default=True)
@format_option
@fail_cleanly
def access_audit(data_dir: Path, limit: int, fmt: str) -> None:
    """Who was served which members-only record, and when (newest first)."""
    node = _open(data_dir)
    rows = [
        {"time": r.time.isoformat(), "caller": r.caller, "method": r.method, "record": r.record}
        for r in node.store.audit_rows(limit)
    ]
    if fmt == "json":
        click.echo(json.dumps({"total": node.store.audit_count(), "entries": rows}, indent=2))
        return
    table = Table("time", "caller", "method", "record")
    for r in rows:
        table.add_row(r["time"][:19], r["caller"], r["method"], r["record"])
    out.print(table)
    out.print(f"{node.store.audit_count()} members-only record(s) served in all")


if __name__ == "__main__":
    main()
