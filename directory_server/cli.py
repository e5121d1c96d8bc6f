"""counterpart-node: the operator's command line.

Exit codes: 0 success, 1 error (the message names what is wrong), 2 usage error.
"""

from __future__ import annotations

import functools
import json
import os
import sys
from collections.abc import Callable
from dataclasses import asdict
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar

import click
from google.protobuf import json_format
from rich.console import Console
from rich.table import Table

from directory_server import security
from directory_server.config import CONFIG_NAME, NodeConfig, load_config
from directory_server.domain import access, signing, tls
from directory_server.domain import federation as fed
from directory_server.domain.errors import (
    ConfigurationError,
    CounterpartError,
    InvalidArgumentError,
)
from directory_server.domain.names import check_member_code
from directory_server.domain.timeutil import from_timestamp, parse_duration, utcnow
from directory_server.node import Node, PublishPlan

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
            err.print(f"[bold red]error:[/] {e.message}", markup=True, highlight=False)
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
@fail_cleanly
def serve(
    data_dir: Path, listen: str | None, passphrase_file: Path | None, no_heartbeat: bool, log_level: str,
    restore_from_peers: bool,
) -> None:
    """Serve DirectoryService, health checking and reflection until SIGTERM or SIGINT."""
    from directory_server.service.server import NodeServer, setup_logging

    setup_logging(log_level.upper())
    node = _open(data_dir, listen=listen, restore_from_peers="true" if restore_from_peers else None)
    if node.config.restore_from_peers_enabled:
        err.print(
            f"[yellow]warning:[/] restoring {node.member}'s own log from peers: whatever they hold signed with "
            "this node's key is accepted. Restart without --restore-from-peers once it is restored.",
            highlight=False,
        )
    c = node.config
    passphrase = _passphrase(passphrase_file) if c.tls_enabled or not no_heartbeat else b""
    key = None if no_heartbeat else node.signing_key(passphrase)
    identity = security.load_tls_identity(c, passphrase) if c.tls_enabled else None
    if identity is not None:
        _warn_unlisted_certificate(node, identity)
    server = NodeServer(
        node, c.listen, max_workers=c.workers_count, peers=c.peer_list,
        sync_interval=c.sync_interval_seconds, sync_deadline=c.sync_deadline_seconds,
        tls_identity=identity, peer_address=c.peer_listen,
    )
    server.start(key)
    server.wait_for_signal()
    node.close()


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


def _print_plan(plan: PublishPlan, dry_run: bool, fmt: str) -> None:
    if fmt == "json":
        click.echo(json.dumps({
            "dry_run": dry_run,
            "added": [r.name for r in plan.added],
            "changed": [r.name for r in plan.changed],
            "deleted": plan.deleted,
            "unchanged": plan.unchanged,
            "appended": plan.appended,
            "checkpoint_size": plan.checkpoint_size,
        }, indent=2))
        return
    for r in plan.added:
        out.print(f"[green]+ {r.name}[/]  ({r.file})", highlight=False)
    for r in plan.changed:
        out.print(f"[yellow]~ {r.name}[/]  ({r.file})", highlight=False)
    for name in plan.deleted:
        out.print(f"[red]- {name}[/]", highlight=False)
    summary = f"{len(plan.added)} new, {len(plan.changed)} changed, {len(plan.deleted)} deleted, {plan.unchanged} unchanged"
    if dry_run:
        out.print(f"dry run: {summary}; nothing appended")
    elif plan.empty:
        out.print(f"nothing to publish: {summary}; log size {plan.checkpoint_size}")
    else:
        out.print(f"published: {summary}; appended {plan.appended} entries, checkpoint size {plan.checkpoint_size}")


@main.command()
@click.argument("path", type=click.Path(path_type=Path))
@data_dir_option
@click.option("--dry-run", is_flag=True, help="Validate and show the difference; append nothing.")
@passphrase_option
@format_option
@fail_cleanly
def publish(path: Path, data_dir: Path, dry_run: bool, passphrase_file: Path | None, fmt: str) -> None:
    """Publish the member's records from YAML or CSV files (a file or a folder)."""
    node = _open(data_dir)
    passphrase = None if dry_run else _passphrase(passphrase_file)
    plan = node.publish(path, passphrase, dry_run=dry_run)
    _print_plan(plan, dry_run, fmt)


@main.command()
@data_dir_option
@passphrase_option
@click.option("--force", is_flag=True, help="Sign a new checkpoint even if the current one is fresh.")
@fail_cleanly
def heartbeat(data_dir: Path, passphrase_file: Path | None, force: bool) -> None:
    """Re-sign the member's checkpoint so readers can see the origin is alive."""
    node = _open(data_dir)
    cp = node.heartbeat(node.signing_key(_passphrase(passphrase_file)), force=force)
    out.print("checkpoint still fresh; nothing signed" if cp is None else f"signed checkpoint size {cp.size}, expires {cp.expire_time.isoformat()}")


# --- integrity and status -----------------------------------------------------------------


@main.command()
@data_dir_option
@format_option
@fail_cleanly
def verify(data_dir: Path, fmt: str) -> None:
    """Re-check every signature and root on disk; exit 1 and name what is wrong."""
    node = _open(data_dir)
    report = node.verify_report()
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
    """Re-derive the lookup indexes from the verified envelopes."""
    node = _open(data_dir)
    n = node.rebuild()
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


def _edit(path: Path, valid_for: str) -> Any:
    doc, bumped = fed.open_for_edit(fed.read_file(path), utcnow(), _duration(valid_for))
    if bumped:
        out.print(f"{path} was signed version {doc.version - 1}; editing it as draft version {doc.version}")
    return doc


@federation.command("add-member")
@click.argument("path", type=click.Path(path_type=Path, dir_okay=False))
@click.option("--code", required=True)
@click.option("--display-name", required=True)
@click.option("--key", "keys", multiple=True, required=True, type=click.Path(path_type=Path, dir_okay=False), help="Member's public key file (repeat).")
@click.option("--endpoint", "endpoints", multiple=True, help="host:port of the member's node (repeat).")
@click.option("--peer-endpoint", "peer_endpoints", multiple=True, help="host:port of its mutual-TLS peer listener (repeat).")
@click.option(
    "--tls-cert", "tls_certs", multiple=True, type=click.Path(path_type=Path, dir_okay=False),
    help="The node's TLS certificate (keys/tls-cert.pem of its data directory; repeat).",
)
@click.option("--valid-for", default="365d", show_default=True)
@fail_cleanly
def fed_add_member(
    path: Path, code: str, display_name: str, keys: tuple[Path, ...], endpoints: tuple[str, ...],
    peer_endpoints: tuple[str, ...], tls_certs: tuple[Path, ...], valid_for: str,
) -> None:
    """Admit a member with its keys, node certificate and endpoints (clears signatures: sign again)."""
    doc = _edit(path, valid_for)
    fed.add_member(
        doc, code, display_name, [signing.read_public_key_file(k) for k in keys], endpoints,
        [security.read_certificate(c) for c in tls_certs], peer_endpoints,
    )
    fed.write_file(path, fed.unsigned_envelope(doc))
    out.print(f"added {code} to version {doc.version} in {path}; it needs {doc.root_threshold} root signature(s)")


@federation.command("tls-cert")
@click.argument("path", type=click.Path(path_type=Path, dir_okay=False))
@click.option("--code", required=True, help="The member whose node certificate changes.")
@click.option("--add", "add", type=click.Path(path_type=Path, dir_okay=False), default=None, help="Admit this certificate.")
@click.option("--remove", "remove", default=None, help="Withdraw the certificate with this SHA-256 fingerprint (8+ hex digits).")
@click.option("--valid-for", default="365d", show_default=True)
@fail_cleanly
def fed_tls_cert(path: Path, code: str, add: Path | None, remove: str | None, valid_for: str) -> None:
    """Admit or withdraw a member node's TLS certificate (rotation: add the new one, let the
    version spread, restart the node with the new key, then remove the old one). Running
    nodes apply the new version on the next handshake and call, without a restart."""
    if (add is None) == (remove is None):
        raise InvalidArgumentError("give exactly one of --add FILE and --remove FINGERPRINT", reason="USAGE")
    doc = _edit(path, valid_for)
    if add is not None:
        done = f"admitted certificate {fed.add_tls_certificate(doc, code, security.read_certificate(add))}"
    else:
        assert remove is not None
        done = f"withdrew certificate {fed.remove_tls_certificate(doc, code, remove)}"
    fed.write_file(path, fed.unsigned_envelope(doc))
    out.print(f"{done} for {code} in version {doc.version} ({path}); it needs {doc.root_threshold} root signature(s)")


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
    out.print(f"signed version {doc.version} with {key.key_id}: {good} of {threshold} required signature(s)")


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
    table = Table("member", "name", "endpoints", "peer endpoints", "keys", "TLS certificates")
    for m in sorted(doc.members, key=lambda m: m.code):
        table.add_row(
            m.code, m.display_name, ", ".join(m.endpoints), ", ".join(m.peer_endpoints),
            ", ".join(k.key_id for k in m.keys), ", ".join(tls.fingerprint(bytes(c))[:16] for c in m.tls_certificates),
        )
    out.print(table)


@federation.command("install")
@click.argument("path", type=click.Path(path_type=Path, dir_okay=False))
@data_dir_option
@fail_cleanly
def fed_install(path: Path, data_dir: Path) -> None:
    """Give the node its first document, or the next version of the current one."""
    node = _open(data_dir)
    accepted = node.install_federation(fed.read_file(path))
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
