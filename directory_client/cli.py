"""counterpart: ask a Counterpart node whom to send a request to, and check the answer.

The command line a prosecutor or a case-management script uses. Every answer is
verified against the pinned federation document (``counterpart trust FILE``) unless
``--no-verify`` is given, and the output always says which of the two happened.
"""

from __future__ import annotations

import functools
import json
import sys
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, timedelta
from pathlib import Path
from typing import Any, NoReturn, TypeVar

import click
from google.protobuf import json_format
from google.protobuf.message import Message
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from counterpart.v1 import directory_service_pb2 as ds
from counterpart.v1 import federation_pb2, records_pb2
from directory_client.client import (
    DEFAULT_TARGET,
    NOT_TRUSTED_HINT,
    DirectoryClient,
    load_pinned,
    load_token,
    pin,
    save_token,
    token_path,
    update_trust,
)
from directory_client.errors import ClientError, InvalidName, NotTrusted, ServerError
from directory_client.verify import Record, Verification
from directory_server.domain import access
from directory_server.domain import federation as fed
from directory_server.domain.errors import CounterpartError
from directory_server.domain.timeutil import from_timestamp, utcnow

F = TypeVar("F", bound=Callable[..., Any])

EXIT_OK = 0
EXIT_ERROR = 1
EXIT_USAGE = 2
EXIT_NOT_FOUND = 3

_STAGES = {
    "pre-trial": records_pb2.PROCEEDING_STAGE_PRE_TRIAL,
    "trial": records_pb2.PROCEEDING_STAGE_TRIAL,
    "enforcement": records_pb2.PROCEEDING_STAGE_ENFORCEMENT,
}
_ROUTES = {
    records_pb2.TRANSMISSION_ROUTE_DIRECT: "directly between judicial authorities",
    records_pb2.TRANSMISSION_ROUTE_CENTRAL_AUTHORITY: "through the central authority",
    records_pb2.TRANSMISSION_ROUTE_DIPLOMATIC: "through diplomatic channels",
    records_pb2.TRANSMISSION_ROUTE_INTERPOL: "through Interpol",
}
_POSSIBILITY = {
    records_pb2.POSSIBILITY_YES: "yes",
    records_pb2.POSSIBILITY_NO: "no",
    records_pb2.POSSIBILITY_PARTLY: "partly (see notes)",
}


# --- settings and error handling -----------------------------------------------------------


@dataclass(frozen=True)
class Settings:
    """The global options, shared by every command."""

    server: str
    fmt: str
    verify: bool
    timeout: float
    tls: bool | None = None
    server_member: str | None = None
    token_file: Path | None = None

    def token(self) -> str | None:
        if self.token_file is not None:
            try:
                return self.token_file.read_text(encoding="utf-8").strip() or None
            except OSError as e:
                raise ClientError(f"cannot read token file {self.token_file}: {e.strerror}") from e
        return load_token()

    def client(self) -> DirectoryClient:
        """A client for --server; loads the pinned trust root (needed for TLS, and to verify
        unless --no-verify) and the access token, if any."""
        federation = load_pinned()
        if federation is None and self.verify:
            raise NotTrusted(NOT_TRUSTED_HINT)
        return DirectoryClient(
            self.server, federation=federation, verify=self.verify, timeout=self.timeout,
            token=self.token(), tls=self.tls, server_member=self.server_member,
        )


def _fail(message: str, code: int) -> NoReturn:
    click.echo(f"error: {message}", err=True)
    sys.exit(code)


def handle_errors(fn: F) -> F:
    """Print a ClientError as one line "error: ..." on stderr and exit with its code."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except ServerError as e:
            _fail(str(e), EXIT_NOT_FOUND if e.not_found else EXIT_ERROR)
        except InvalidName as e:
            _fail(str(e), EXIT_USAGE)
        except ClientError as e:
            _fail(str(e), EXIT_ERROR)

    return wrapper  # type: ignore[return-value]


def _console() -> Console:
    """Console on stdout; plain text (no colour codes) when stdout is not a terminal."""
    return Console(highlight=False, soft_wrap=False)


# --- the group ---------------------------------------------------------------------------

_HELP = """Find the competent authority for a request for international cooperation in
criminal matters, with answers checked against the federation's signatures.

\b
Start by pinning the federation document you received from the secretariat:
    counterpart trust federation.json
then ask, e.g.:
    counterpart find --in GE --type mla.hearing.witness --place Batumi

\b
Exit codes:
  0  success
  1  error: the server answered with an error, cannot be reached, the answer
     failed verification, or no federation document is pinned
  2  usage error (bad option or argument)
  3  not found: the server has no such record or member
"""


@click.group(help=_HELP, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="counterpart")
@click.option(
    "--server", envvar="COUNTERPART_SERVER", default=DEFAULT_TARGET, show_default=True,
    help="The node to ask, host:port (env COUNTERPART_SERVER).",
)
@click.option(
    "--format", "fmt", type=click.Choice(["table", "json"]), default="table", show_default=True,
    help="table for people; json (one document on stdout) for scripts.",
)
@click.option(
    "--no-verify", is_flag=True,
    help="Do not check signatures and proofs (development only; output says NOT VERIFIED).",
)
@click.option(
    "--timeout", type=click.FloatRange(min=0.1), default=10.0, show_default=True,
    help="Seconds to wait for the node.",
)
@click.option(
    "--tls/--plaintext", "tls", default=None,
    help="Force TLS, or plaintext (loopback only). Default: TLS unless the server is on loopback "
         "and not a member endpoint of the pinned document.",
)
@click.option(
    "--server-member", default=None, metavar="MEMBER",
    help="The member whose node --server is, when the pinned document does not list that address.",
)
@click.option(
    "--token-file", type=click.Path(path_type=Path, dir_okay=False), default=None,
    help="Access token file (default: $COUNTERPART_TOKEN, else the one `counterpart login` saved).",
)
@click.pass_context
def main(
    ctx: click.Context, server: str, fmt: str, no_verify: bool, timeout: float, tls: bool | None,
    server_member: str | None, token_file: Path | None,
) -> None:
    ctx.obj = Settings(
        server=server, fmt=fmt, verify=not no_verify, timeout=timeout, tls=tls,
        server_member=server_member.upper() if server_member else None, token_file=token_file,
    )


pass_settings = click.make_pass_decorator(Settings)


# --- trust -------------------------------------------------------------------------------


@main.command()
@click.argument("file", type=click.Path(path_type=Path, dir_okay=False), required=False)
@click.option(
    "--replace", is_flag=True,
    help="Pin FILE even if it does not follow the pinned document (another federation, "
         "an older version, a gap).",
)
@click.option(
    "--update", is_flag=True,
    help="Instead of FILE: follow the newer versions the --server node serves, each checked "
         "against the one before (after a member's key rotation, say).",
)
@pass_settings
@handle_errors
def trust(settings: Settings, file: Path | None, replace: bool, update: bool) -> None:
    """Verify a federation document and pin it as the trust root.

    FILE must be signed by a threshold of its own root keys and not be expired. A newer
    version of the pinned federation must be exactly the next one, signed by the
    pinned version's root keys. With --update, those versions come from the node.
    """
    if update == (file is not None):
        _fail("give either FILE or --update", 2)
    if file is None:
        versions = update_trust(settings.server, timeout=settings.timeout)
        if settings.fmt == "json":
            _print_json({"pinned_versions": versions})
        elif versions:
            click.echo(f"pinned version {versions[-1]} (checked each step: {', '.join(map(str, versions))})")
        else:
            click.echo("the pinned version is the newest the node has")
        return
    result = pin(file, replace=replace)
    doc = result.federation.document
    if settings.fmt == "json":
        _print_json({
            "federation_id": doc.federation_id,
            "version": result.federation.version,
            "members": [m.code for m in result.federation.members()],
            "expire_time": _iso(from_timestamp(doc.expire_time)),
            "path": str(result.path),
            "previous_version": result.previous_version,
            "unchanged": result.unchanged,
        })
        return
    members = ", ".join(m.code for m in result.federation.members()) or "none"
    what = "already pinned" if result.unchanged else "pinned"
    since = (
        f" (was version {result.previous_version})"
        if result.previous_version is not None and not result.unchanged else ""
    )
    click.echo(
        f"{what}: federation {doc.federation_id!r} version {result.federation.version}{since}, "
        f"members {members}, expires {_iso(from_timestamp(doc.expire_time))}\n"
        f"trust root: {result.path}"
    )


# --- signing in --------------------------------------------------------------------------


@main.command()
@click.option(
    "--token-file", "source", type=click.Path(path_type=Path, dir_okay=False), default=None,
    help="Read the token from this file (default: ask for it on the terminal).",
)
@pass_settings
@handle_errors
def login(settings: Settings, source: Path | None) -> None:
    """Keep the access token your national node's administrator issued you (checked against
    the pinned federation document first), so later commands sign in with it. The token is a
    secret: it is stored readable by you only."""
    federation = load_pinned()
    if federation is None:
        raise NotTrusted(NOT_TRUSTED_HINT)
    if source is not None:
        try:
            token = source.read_text(encoding="utf-8").strip()
        except OSError as e:
            raise ClientError(f"cannot read {source}: {e.strerror}") from e
    else:
        token = click.prompt("access token", hide_input=True).strip()
    try:
        caller = access.verify_token(token, federation, utcnow())
    except CounterpartError as e:
        raise ClientError(f"this token cannot be used: {e.message} [{e.reason}]") from e
    path = save_token(token)
    if settings.fmt == "json":
        _print_json({"subject": caller.subject, "role": caller.role, "member": caller.member, "token_file": str(path)})
        return
    click.echo(f"signed in as {caller.describe()}; the token is kept, readable by you only, in:\n  {path}")


@main.command()
@handle_errors
def logout() -> None:
    """Forget the token `counterpart login` kept."""
    path = token_path()
    if path.exists():
        path.unlink()
        click.echo(f"signed out: removed {path}")
    else:
        click.echo("not signed in")


# --- find --------------------------------------------------------------------------------


@main.command()
@click.option("--in", "member", required=True, metavar="MEMBER",
              help="The requested member, where the measure is to be taken (e.g. GE).")
@click.option("--type", "request_type", required=True, metavar="CODE",
              help="Request type code, e.g. mla.hearing.witness.")
@click.option("--place", default="", help="Subdivision code, municipality (any script) or postal code.")
@click.option("--offence", default="", metavar="CODE", help="Offence category code.")
@click.option("--stage", type=click.Choice(sorted(_STAGES)), default=None,
              help="Stage of the proceedings.")
@click.option("--from", "requesting", default="", metavar="MEMBER",
              help="The requesting member (e.g. AZ), to find legal bases between both.")
@click.option("--urgent", is_flag=True, help="The request is urgent.")
@click.option("--lang", "languages", multiple=True, metavar="TAG",
              help="A language you can write in (BCP 47); repeat, preferred first.")
@pass_settings
@handle_errors
def find(
    settings: Settings, member: str, request_type: str, place: str, offence: str,
    stage: str | None, requesting: str, urgent: bool, languages: tuple[str, ...],
) -> None:
    """Whom to send a request to: ranked authorities, route, languages, legal bases."""
    request = ds.FindCounterpartRequest(
        requested_member=member.upper(), request_type=request_type, place=place,
        offence_category=offence,
        stage=_STAGES.get(stage or "", records_pb2.PROCEEDING_STAGE_UNSPECIFIED),
        requesting_member=requesting.upper(), urgent=urgent, preferred_languages=languages,
    )
    with settings.client() as client:
        response, verification = client.find_counterpart(request)
        titles = _request_type_titles(client.federation)
    if settings.fmt == "json":
        _print_json(_document(response, verification, client))
        return
    _render_find(_console(), request, response, verification, titles, client)


def _request_type_titles(federation: fed.Federation | None) -> dict[str, str]:
    if federation is None:
        return {}
    return {t.code: t.title for t in federation.document.vocabularies.request_types}


def _render_find(
    out: Console, request: ds.FindCounterpartRequest, response: ds.FindCounterpartResponse,
    verification: Verification | None, titles: dict[str, str], client: DirectoryClient,
) -> None:
    """The answer laid out for a prosecutor: who, how, in which language, on what basis."""
    title = titles.get(request.request_type, request.request_type)
    heading = f"{title} ({request.request_type}) in {request.requested_member}"
    if request.requesting_member:
        heading += f", requested by {request.requesting_member}"
    if request.urgent:
        heading += ", URGENT"
    out.print(f"[bold]{escape(heading)}[/]")
    out.print(f"Place: {escape(_place(response.place))}")

    out.print()
    if response.candidates:
        table = Table(title="Candidates, best first", title_justify="left", show_lines=True)
        for col in ("#", "Authority", "Roles", "Coverage", "Why"):
            table.add_column(col)
        for i, cand in enumerate(response.candidates, 1):
            table.add_row(
                str(i), _authority_cell(cand.authority), _roles(cand.roles),
                _enum_word(ds.CoverageLevel, cand.coverage_level, "COVERAGE_LEVEL_"),
                escape("\n".join(cand.reasons)),
            )
        out.print(table)
    else:
        out.print("[bold]No competent authority found.[/]")

    out.print(f"Route: {_ROUTES.get(response.route, 'not stated')}")
    out.print(f"Languages: {escape(', '.join(response.languages) or 'not stated')}")

    if response.legal_bases:
        table = Table(title="Legal bases, strongest first", title_justify="left")
        for col in ("Instrument", "Title", "Scope", "Direct transmission", "Declared languages", "Only for"):
            table.add_column(col)
        for b in response.legal_bases:
            table.add_row(
                escape(b.instrument), escape(b.title),
                _enum_word(federation_pb2.InstrumentScope, b.scope, "INSTRUMENT_SCOPE_"),
                "yes" if b.direct_transmission else "no",
                escape(", ".join(b.declared_languages) or "-"),
                escape(", ".join(b.offence_categories) or "any offence"),
            )
        out.print(table)
    else:
        out.print("Legal bases: none found")

    if response.urgent_contacts:
        out.print("[bold]Urgent contacts[/]")
        for uc in response.urgent_contacts:
            out.print(f"  {escape(_urgent(uc))}")

    if response.contacts:
        # one contact a few lines, never a table: e-mail addresses and phone numbers are what the
        # reader copies, so they stand whole on their own line, whatever the terminal's width
        out.print("[bold]Contact points[/]")
        for c in response.contacts:
            out.print(f"  {escape(_english(c.display_names) or c.name)} ({escape(c.role)})")
            reach = [f"e-mail {c.email}" if c.email else "", f"phone {c.phone}" if c.phone else ""]
            for line in filter(None, reach):
                out.print(f"    {escape(line)}", overflow="ignore", crop=False)
            details = ", ".join(x for x in (", ".join(c.languages), c.availability) if x)
            if details:
                out.print(f"    {escape(details)}")

    if response.HasField("rule"):
        _render_rule(out, response.rule, response.candidates, response.contacts)
    else:
        out.print(f"Rule: {request.requested_member} has published none for {request.request_type}")

    if response.warnings:
        out.print("[bold yellow]Warnings[/]")
        for w in response.warnings:
            out.print(f"[yellow]  ! {escape(w)}[/]")

    out.print()
    _print_verification(out, verification, client)


def _render_rule(
    out: Console, rule: records_pb2.Rule, candidates: Sequence[ds.Candidate],
    contacts: Sequence[records_pb2.Contact],
) -> None:
    """The rule's key facts, with authorities and contacts named as people read them."""
    names = {c.authority.name: _english(c.authority.display_names) for c in candidates}
    for c in contacts:
        reach = ", ".join(x for x in (c.phone, c.email) if x)
        names[c.name] = _english(c.display_names) + (f" ({reach})" if reach else "")
    facts = [
        ("possible", _POSSIBILITY.get(rule.possible, "not stated")),
        ("dual criminality", _POSSIBILITY.get(rule.dual_criminality, "not stated")),
        ("electronic transmission", _electronic(rule)),
        ("informal consultation", _consultation(rule, names)),
    ]
    if rule.receiving_authority:
        facts.append(("receives", names.get(rule.receiving_authority) or rule.receiving_authority))
    if rule.executing_authority:
        facts.append(("executes", names.get(rule.executing_authority) or rule.executing_authority))
    for label, texts in (
        ("execution time", rule.execution_deadline), ("urgent procedure", rule.urgent_procedure),
        ("form and documents", rule.form_and_documents), ("alternatives", rule.alternatives),
    ):
        text = _english(texts)
        if text:
            facts.append((label, text))
    table = Table(title=f"Rule {rule.name}", title_justify="left", show_header=False)
    table.add_column("fact", style="bold")
    table.add_column("value")
    for label, value in facts:
        table.add_row(escape(label), escape(value))
    out.print(table)


def _electronic(rule: records_pb2.Rule) -> str:
    if not rule.HasField("electronic_transmission"):
        return "not stated"
    et = rule.electronic_transmission
    if not et.accepted:
        return "not accepted"
    extra = [w for w, on in (("signature required", et.signature_required),
                             ("encryption required", et.encryption_required)) if on]
    return "accepted" + (f" ({', '.join(extra)})" if extra else "")


def _consultation(rule: records_pb2.Rule, names: dict[str, str]) -> str:
    if not rule.informal_consultation_recommended:
        return "not required"
    who = names.get(rule.consultation_contact) or rule.consultation_contact
    return "recommended before sending" + (f": {who}" if who else "")


def _place(place: ds.ResolvedPlace) -> str:
    given = place.query or "(none: national)"
    if place.level == ds.COVERAGE_LEVEL_UNSPECIFIED:
        return f"{given} -> not recognized; only national authorities are shown"
    if place.level == ds.COVERAGE_LEVEL_NATIONAL:
        return f"{given} -> the whole territory"
    parts = []
    if place.municipality:
        parts.append(f"municipality {place.municipality}")
    if place.postal_code:
        parts.append(f"postal code {place.postal_code}")
    if place.subdivision:
        parts.append(f"subdivision {place.subdivision}")
    return f"{given} -> " + ", ".join(parts)


def _urgent(uc: records_pb2.UrgentContact) -> str:
    reach = [x for x in (uc.phone, uc.email) if x]
    text = uc.description or "urgent contact"
    if reach:
        text += ": " + ", ".join(reach)
    if uc.always_available:
        text += " (24/7)"
    return text


# --- show --------------------------------------------------------------------------------


@main.command()
@click.argument("name")
@pass_settings
@handle_errors
def show(settings: Settings, name: str) -> None:
    """Show one record (members/GE/authorities/pgo, ...) or a member (members/GE or GE)."""
    if "/" not in name:
        name = name.upper()  # a bare member code: ge -> GE
    is_member = name.count("/") <= 1
    with settings.client() as client:
        response: Message
        if is_member:
            response, verification = client.member(name)
        else:
            response, verification = client.get(name)
    if settings.fmt == "json":
        _print_json(_document(response, verification, client))
        return
    out = _console()
    if isinstance(response, ds.GetMemberResponse):
        subject: Message = response.member
        header = f"{response.member.name}: {response.member.display_name}"
    else:
        field, subject = next(
            (fd.name, value) for fd, value in response.ListFields()
            if fd.name not in ("proof", "provenance")
        )
        header = f"{subject.name if isinstance(subject, Record) else ''} ({field})"
    out.print(f"[bold]{escape(header)}[/]")
    table = Table(show_header=False, box=None, pad_edge=False)
    table.add_column("field", style="bold", no_wrap=True)
    table.add_column("value")
    for label, value in _describe(subject):
        table.add_row(escape(label), escape(value))
    out.print(table)
    proof = getattr(response, "proof", None)
    if isinstance(proof, ds.RecordProof) and proof.name:
        out.print(f"signed entry: seq {proof.leaf_index + 1} of {proof.tree_size}")
    out.print()
    _print_verification(out, verification, client)


def _describe(message: Message, prefix: str = "") -> list[tuple[str, str]]:
    """Flatten a message into (field, readable value) rows, skipping signed bytes."""
    rows: list[tuple[str, str]] = []
    for fd, value in message.ListFields():
        label = prefix + fd.name.replace("_", " ")
        if fd.message_type is not None:
            kind = fd.message_type.full_name
            if kind == "counterpart.v1.LocalizedText":
                texts = value if fd.is_repeated else [value]
                rows.append((label, "\n".join(f"{t.text} ({t.language})" for t in texts)))
            elif kind == "google.protobuf.Timestamp":
                rows.append((label, _iso(from_timestamp(value))))
            elif kind == "google.protobuf.Duration":
                rows.append((label, _age(value.ToTimedelta())))
            elif fd.is_repeated:
                for i, item in enumerate(value, 1):
                    rows.extend(_describe(item, f"{label} {i}: "))
            else:
                rows.extend(_describe(value, f"{label}: "))
        elif fd.enum_type is not None:
            values = value if fd.is_repeated else [value]
            rows.append((label, ", ".join(_enum_label(fd.enum_type.values_by_number[v].name)
                                          for v in values)))
        elif fd.type == fd.TYPE_BYTES:
            continue  # signed envelopes: evidence, not something to read
        elif fd.is_repeated:
            rows.append((label, ", ".join(str(v) for v in value)))
        elif isinstance(value, bool):
            rows.append((label, "yes" if value else "no"))
        else:
            rows.append((label, str(value)))
    return rows


# --- search ------------------------------------------------------------------------------


@main.command()
@click.argument("query")
@click.option("--member", default="", metavar="MEMBER", help="Only this member (e.g. GE).")
@click.option("--page-size", type=click.IntRange(min=0, max=100), default=0,
              help="At most this many results (default 20).")
@click.option("--page-token", default="", help="Continue from a previous page.")
@pass_settings
@handle_errors
def search(settings: Settings, query: str, member: str, page_size: int, page_token: str) -> None:
    """Find authorities by name or place, in any script (Batumi finds ბათუმი)."""
    with settings.client() as client:
        response, verification = client.search(query, member.upper(), page_size, page_token)
    if settings.fmt == "json":
        _print_json(_document(response, verification, client))
        return
    out = _console()
    if response.authorities:
        table = Table(title=f"Authorities matching {query!r}", title_justify="left")
        for col in ("#", "Authority", "Kind", "Place", "Name"):
            table.add_column(col)
        for i, a in enumerate(response.authorities, 1):
            place = ", ".join(x for x in (a.address.locality, a.address.subdivision) if x)
            table.add_row(str(i), _authority_cell(a, with_name=False), escape(a.kind),
                          escape(place or "-"), escape(a.name))
        out.print(table)
    else:
        out.print(f"No authority matches {escape(repr(query))}.")
    if response.next_page_token:
        out.print(f"more: --page-token {escape(response.next_page_token)}")
    out.print()
    _print_verification(out, verification, client)


# --- members -----------------------------------------------------------------------------


@main.command()
@pass_settings
@handle_errors
def members(settings: Settings) -> None:
    """The federation's members and how fresh this node's copy of their data is."""
    with settings.client() as client:
        response, verification = client.members()
    if settings.fmt == "json":
        _print_json(_document(response, verification, client))
        return
    out = _console()
    verified = {m.member: m for m in verification.members} if verification else {}
    table = Table(
        title=f"Federation {response.federation_id!r} version {response.federation_version}",
        title_justify="left",
    )
    for col in ("Code", "Name", "Log size", "Authorities", "Contacts", "Rules", "Treaties",
                "Checkpoint", "Age", "Stale"):
        table.add_column(col)
    now = utcnow()
    for m in response.members:
        status = verified.get(m.code)
        if status is not None:
            checkpoint, age, stale = str(status.checkpoint_size), _age(status.age), status.stale
        elif m.HasField("provenance"):  # --no-verify: the node's word, recomputed locally
            p = m.provenance
            checkpoint = str(p.checkpoint_size)
            age = _age(max(now - from_timestamp(p.checkpoint_issue_time), timedelta(0)))
            stale = now > from_timestamp(p.checkpoint_expire_time)
        else:
            checkpoint, age, stale = "-", "-", False
        table.add_row(
            escape(m.code), escape(m.display_name), str(m.log_size), str(m.authority_count),
            str(m.contact_count), str(m.rule_count), str(m.treaty_count), checkpoint, age,
            "[bold red]STALE[/]" if stale else "no",
        )
    out.print(table)
    if response.next_page_token:
        out.print("(more members on the node than shown)")
    out.print()
    _print_verification(out, verification, client)


# --- shared output -----------------------------------------------------------------------


def _print_json(document: object) -> None:
    click.echo(json.dumps(document, ensure_ascii=False, indent=2, sort_keys=False))


def _document(response: Message, verification: Verification | None, client: DirectoryClient) -> dict[str, Any]:
    """The stable JSON form: the answer without signed bytes, what was verified, and who the
    node took the caller for."""
    answer = json_format.MessageToDict(
        response, preserving_proto_field_name=True, always_print_fields_with_no_presence=True
    )
    answer.pop("proofs", None)
    answer.pop("proof", None)
    _drop_key(answer, "signed_checkpoint")
    return {
        "answer": answer, "verification": _verification_json(verification),
        "session": {
            "server": client.target, "tls": client.tls, "server_member": client.server_member,
            "signed_in": client.signed_in, "caller": client.caller or None,
        },
    }


def _drop_key(value: Any, key: str) -> None:
    if isinstance(value, dict):
        value.pop(key, None)
        for v in value.values():
            _drop_key(v, key)
    elif isinstance(value, list):
        for v in value:
            _drop_key(v, key)


def _verification_json(verification: Verification | None) -> dict[str, Any] | None:
    if verification is None:
        return None
    return {
        "verified": True,
        "records_checked": verification.records_checked,
        "stale": verification.stale,
        "members": [
            {
                "member": m.member,
                "checkpoint_size": m.checkpoint_size,
                "issue_time": _iso(m.issue_time),
                "age_seconds": int(m.age.total_seconds()),
                "stale": m.stale,
            }
            for m in verification.members
        ],
    }


def _print_verification(out: Console, verification: Verification | None, client: DirectoryClient) -> None:
    """The last lines of every answer: who the node took the caller for, over which
    transport, and what was checked against whose signatures."""
    node = f"{client.server_member}'s node" if client.server_member else "a member node" if client.tls else "node"
    transport = f"TLS, {node} authenticated" if client.tls else "plaintext (loopback)"
    if client.caller and client.caller != "anonymous":
        out.print(f"signed in as {escape(client.caller)}; {transport}")
    else:
        hint = "" if client.signed_in else " (counterpart login to see members-only contact points)"
        out.print(f"not signed in{hint}; {transport}")
    if verification is None:
        out.print("[bold red]NOT VERIFIED (--no-verify):[/] [red]signatures and proofs were "
                  "not checked; do not rely on this answer[/]")
        return
    if not verification.members:
        out.print("verified: nothing signed in this answer")
        return
    parts = []
    for m in verification.members:
        text = f"{m.member} (checkpoint {m.checkpoint_size}, {_age(m.age)} old)"
        if m.stale:
            text = f"[bold red]{escape(text)}: STALE, the checkpoint has expired[/]"
        else:
            text = escape(text)
        parts.append(text)
    n = verification.records_checked
    style = "bold red" if verification.stale else "green"
    what = f"{n} record{'s' if n != 1 else ''} signed by" if n else "checkpoints signed by"
    out.print(f"[{style}]verified:[/] {what} " + ", ".join(parts))


def _authority_cell(authority: records_pb2.Authority, with_name: bool = True) -> str:
    english = _english(authority.display_names) or authority.name
    local = _local(authority.display_names)
    lines = [f"[bold]{escape(english)}[/]"]
    if local and local != english:
        lines.append(escape(local))
    if with_name:
        lines.append(f"[dim]{escape(authority.name)}[/]")
    return "\n".join(lines)


def _english(texts: Iterable[records_pb2.LocalizedText]) -> str:
    items = list(texts)
    for t in items:
        if t.language == "en" or t.language.startswith("en-"):
            return t.text
    return items[0].text if items else ""


def _local(texts: Iterable[records_pb2.LocalizedText]) -> str:
    """The local-script name: records list it first."""
    for t in texts:
        if not (t.language == "en" or t.language.startswith("en-")):
            return t.text
    return ""


def _roles(roles: Iterable[int]) -> str:
    return ", ".join(_enum_word(records_pb2.CompetenceRole, r, "COMPETENCE_ROLE_") for r in roles)


def _enum_word(enum: Any, value: int, prefix: str) -> str:
    return _enum_label(str(enum.Name(value)).removeprefix(prefix))


def _enum_label(name: str) -> str:
    for prefix in ("COMPETENCE_ROLE_", "COVERAGE_LEVEL_", "INSTRUMENT_SCOPE_", "TRANSMISSION_ROUTE_",
                   "PROCEEDING_STAGE_", "POSSIBILITY_", "TREATY_STATUS_", "VISIBILITY_"):
        name = name.removeprefix(prefix)
    return name.lower().replace("_", "-")


def _iso(dt: Any) -> str:
    return str(dt.astimezone(UTC).isoformat().replace("+00:00", "Z"))


def _age(age: timedelta) -> str:
    seconds = int(age.total_seconds())
    if seconds < 60:
        return f"{seconds} s"
    if seconds < 3600:
        return f"{seconds // 60} min"
    if seconds < 86400:
        return f"{seconds // 3600} h"
    return f"{seconds // 86400} d"


if __name__ == "__main__":  # pragma: no cover
    main()
