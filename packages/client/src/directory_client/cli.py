"""counterpart: ask a Counterpart node whom to send a request to, and check the answer.

The command line a prosecutor or a case-management script uses. Every answer is
verified against the pinned federation document (``counterpart trust FILE``) unless
``--no-verify`` is given, and the output always says which of the two happened.

The text output is laid out for a terminal of any width, 80 columns included: lines and
indented blocks rather than wide tables, text wrapped by word, and every value a reader
copies (resource names, e-mail addresses, phone numbers, addresses, URIs, fingerprints)
kept whole on one line, never cut, folded or shortened with an ellipsis.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import re
import shutil
import sys
import tempfile
import textwrap
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, NoReturn, TypeVar

import click
from click.core import ParameterSource
from google.protobuf import json_format
from google.protobuf.message import Message
from rich.cells import cell_len
from rich.console import Console
from rich.text import Text

from counterpart.v1 import directory_service_pb2 as ds
from counterpart.v1 import federation_pb2, log_pb2, records_pb2
from counterpart_core import access, effective, signing
from counterpart_core import federation as fed
from counterpart_core.errors import CounterpartError
from counterpart_core.timeutil import from_timestamp, utcnow
from directory_client.client import (
    DEFAULT_TARGET,
    NOT_TRUSTED_HINT,
    DirectoryClient,
    connect,
    load_pinned,
    load_token,
    pin,
    save_token,
    token_path,
    update_trust,
)
from directory_client.errors import (
    ClientError,
    InvalidName,
    NotTrusted,
    ServerError,
    VerificationFailed,
)
from directory_client.offline import (
    OfflineClient,
    OfflineUnavailable,
    copy_error,
    mirror_path,
    node_mirror,
    token_channel,
)
from directory_client.verify import Record, Verification

F = TypeVar("F", bound=Callable[..., Any])

EXIT_OK = 0
EXIT_ERROR = 1
EXIT_USAGE = 2
EXIT_NOT_FOUND = 3

# Reasons the node gives for a question the caller must rephrase: a usage error (exit 2).
_USAGE_REASONS = frozenset({"PLACE_AMBIGUOUS", "AS_OF_IN_FUTURE", "AS_OF_TIME_MISSING", "INVALID_AS_OF"})

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
_SCOPES = {
    federation_pb2.INSTRUMENT_SCOPE_BILATERAL: "bilateral",
    federation_pb2.INSTRUMENT_SCOPE_REGIONAL: "regional",
    federation_pb2.INSTRUMENT_SCOPE_UNIVERSAL: "universal",
}
_PLACE_KINDS = {
    records_pb2.PLACE_KIND_SUBDIVISION: "subdivision",
    records_pb2.PLACE_KIND_MUNICIPALITY: "municipality",
}
_CHANNEL_WORDS = {"email": "e-mail", "phone": "phone", "fax": "fax", "postal": "post"}
NOT_STATED = "not stated"


# --- settings and error handling -----------------------------------------------------------


@dataclass(frozen=True)
class Settings:
    """The global options, shared by every command."""

    server: str = DEFAULT_TARGET
    fmt: str = "table"
    verify: bool = True
    timeout: float = 10.0
    tls: bool | None = None
    server_member: str | None = None
    token_file: Path | None = None
    offline: bool = False

    def token(self) -> str | None:
        if self.token_file is not None:
            try:
                return self.token_file.read_text(encoding="utf-8").strip() or None
            except OSError as e:
                raise ClientError(f"cannot read token file {self.token_file}: {e.strerror}") from e
        return load_token()

    def client(self) -> DirectoryClient:
        """A client for --server; loads the pinned trust root (needed for TLS, and to verify
        unless --no-verify) and the access token, if any. --offline: a client of the
        offline copy instead (``directory_client.offline``)."""
        if self.offline:
            return _offline_client(self)
        federation = load_pinned()
        if federation is None and self.verify:
            raise NotTrusted(NOT_TRUSTED_HINT)
        return DirectoryClient(
            self.server, federation=federation, verify=self.verify, timeout=self.timeout,
            token=self.token(), tls=self.tls, server_member=self.server_member,
        )


def _fail(message: str, code: int) -> NoReturn:
    """One message "error: ..." on stderr, then exit. In a terminal the message wraps by word
    (a name or address in it stays whole); piped, it stays one line for scripts."""
    text = f"error: {message}"
    if sys.stderr.isatty():
        width = shutil.get_terminal_size().columns
        text = textwrap.fill(text, width=max(width, 20), subsequent_indent="  ",
                             break_long_words=False, break_on_hyphens=False)
    click.echo(text, err=True)
    sys.exit(code)


def handle_errors(fn: F) -> F:
    """Print a ClientError as "error: ..." on stderr and exit with its code."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except ServerError as e:
            if e.not_found:
                _fail(str(e), EXIT_NOT_FOUND)
            _fail(str(e), EXIT_USAGE if e.reason in _USAGE_REASONS else EXIT_ERROR)
        except (InvalidName, OfflineUnavailable) as e:
            _fail(str(e), EXIT_USAGE)
        except ClientError as e:
            _fail(str(e), EXIT_ERROR)

    return wrapper  # type: ignore[return-value]


def _console() -> Console:
    """Console on stdout; plain text (no colour codes) when stdout is not a terminal."""
    return Console(highlight=False, soft_wrap=False)


# --- the screen: wrapped by word, copied values whole ------------------------------------------


@dataclass(frozen=True)
class Whole:
    """A value a reader copies (e-mail, phone, resource name, address, URI, fingerprint):
    it is kept on one line, never broken, folded or shortened, even when wider than the
    screen."""

    text: str
    style: str = ""


Part = str | Whole | tuple[str, str]
"""Words (wrapped at spaces), a Whole value, or (words, rich style)."""

_SPACE = re.compile(r"\s+")
_BREAKS = re.compile(r"[\r\n\t\v\f]")


class Screen:
    """Writes lines for a terminal of the console's width: each call to :meth:`say` is one
    paragraph, wrapped by word with a hanging indent."""

    def __init__(self, console: Console) -> None:
        self.console = console
        self.width = max(console.width, 24)

    def blank(self) -> None:
        self.console.print()

    def say(self, *parts: Part, indent: int = 0, hang: int = 2, lead: str = "", style: str = "") -> None:
        """Print ``parts`` as one paragraph: the first line starts at ``indent`` (then
        ``lead``), the lines after it ``hang`` further in."""
        text = Text(style=style)
        atoms: list[tuple[int, int]] = []
        for part in parts:
            if isinstance(part, Whole):
                start = len(text)
                text.append(_BREAKS.sub(" ", part.text), style=part.style or None)  # spaces kept
                atoms.append((start, len(text)))
            elif isinstance(part, tuple):
                text.append(_SPACE.sub(" ", part[0]), style=part[1] or None)
            else:
                text.append(_SPACE.sub(" ", part))
        plain = text.plain
        first = " " * indent + lead
        rest = " " * (indent + max(hang, cell_len(lead)))
        starts = [m.start() for m in re.finditer(r"\S+", plain)]
        if not starts:
            self.console.print(Text(first.rstrip()), soft_wrap=True)
            return
        begin = starts[0]
        breaks = [i for i in starts if i > begin and not any(s < i < e for s, e in atoms)]
        offsets: list[int] = []
        line_start = begin
        for k, b in enumerate(breaks):
            end = breaks[k + 1] if k + 1 < len(breaks) else len(plain)
            room = self.width - cell_len(first if not offsets else rest)
            if cell_len(plain[line_start:end].rstrip()) > room:
                offsets.append(b)
                line_start = b
        for n, piece in enumerate(text[begin:].divide([o - begin for o in offsets])):
            piece.rstrip()
            line = Text(first if n == 0 else rest)
            line.append_text(piece)
            self.console.print(line, soft_wrap=True)

    def field(self, label: str, *parts: Part, indent: int = 0, hang: int = 2, style: str = "") -> None:
        """One "label: value" paragraph, the label in bold."""
        self.say((f"{label}: ", "bold"), *parts, indent=indent, hang=hang, style=style)

    def heading(self, text: str) -> None:
        self.say((text, "bold"))


def _joined(values: Iterable[str], sep: str = ", ") -> list[Part]:
    """Whole values separated by ``sep`` (lines may break after a separator, never inside)."""
    out: list[Part] = []
    for i, v in enumerate(values):
        if i:
            out.append(sep)
        out.append(Whole(v))
    return out


def _phrase(value: str, width: int = 40) -> Part:
    """A short value stays on one line; a long text wraps by word."""
    return Whole(value) if cell_len(value) <= width or " " not in value else value


# --- the group and the global options ------------------------------------------------------

_HELP = """Find the competent authority for a request for international cooperation in
criminal matters, with answers checked against the federation's signatures.

\b
Start by pinning the federation document you received from the secretariat:
    counterpart trust federation.json
then ask, e.g.:
    counterpart find --in GE --type mla.hearing.witness --place Batumi
    counterpart find --in GE --type mla.hearing.witness --place Batumi --long

\b
The options below (--server, --format, --no-verify, --timeout,
--tls/--plaintext, --server-member, --token-file, --offline) may be
given before or after the subcommand; given after it, they win:
    counterpart find --in GE --type mla.general --format json

\b
Exit codes:
  0  success
  1  error: the server answered with an error, cannot be reached, the answer
     failed verification, or no federation document is pinned
  2  usage error: a bad option or argument, or a place that names several
     places (the message lists them: give one of them, or its subdivision)
  3  not found: the server has no such record, member or place (for a place,
     the message names the closest ones)
"""

# name of the click parameter -> the Settings field it sets
_GLOBAL_PARAMS = {
    "server": "server", "fmt": "fmt", "no_verify": "verify", "timeout": "timeout", "tls": "tls",
    "server_member": "server_member", "token_file": "token_file", "offline": "offline",
}


def _global_options(group: bool, exclude: frozenset[str] = frozenset()) -> Callable[[F], F]:
    """The global options, for the group (with their defaults and environment variables) or
    for a subcommand (no defaults: only what is given after the subcommand counts)."""
    after = "" if group else " [global option]"

    def default(value: Any) -> Any:
        return value if group else None

    options: dict[str, Callable[[F], F]] = {
        "server": click.option(
            "--server", envvar="COUNTERPART_SERVER" if group else None, default=default(DEFAULT_TARGET),
            show_default=group, metavar="HOST:PORT",
            help="The node to ask (env COUNTERPART_SERVER)." + after,
        ),
        "fmt": click.option(
            "--format", "fmt", type=click.Choice(["table", "json"]), default=default("table"),
            show_default=group,
            help="table: text for people (fits any terminal width); json: one document on stdout, "
                 "for scripts." + after,
        ),
        "no_verify": click.option(
            "--no-verify", is_flag=True, default=False,
            help="Do not check signatures and proofs (development only; output says NOT VERIFIED)."
                 + after,
        ),
        "timeout": click.option(
            "--timeout", type=click.FloatRange(min=0.1), default=default(10.0), show_default=group,
            help="Seconds to wait for the node." + after,
        ),
        "tls": click.option(
            "--tls/--plaintext", "tls", default=None,
            help="Force TLS, or plaintext (loopback only). Default: TLS unless the server is on "
                 "loopback and not a member endpoint of the pinned document." + after,
        ),
        "server_member": click.option(
            "--server-member", default=None, metavar="MEMBER",
            help="The member whose node --server is, when the pinned document does not list that "
                 "address." + after,
        ),
        "token_file": click.option(
            "--token-file", type=click.Path(path_type=Path, dir_okay=False), default=None,
            help="Access token file (default: $COUNTERPART_TOKEN, else the one `counterpart login` "
                 "saved)." + after,
        ),
        "offline": click.option(
            "--offline", is_flag=True, default=False, envvar="COUNTERPART_OFFLINE" if group else None,
            help="Answer from the offline copy (`counterpart mirror`), verified as a node's answers "
                 "(env COUNTERPART_OFFLINE=1)." + after,
        ),
    }

    def apply(f: F) -> F:
        for name in reversed(list(options)):
            if name not in exclude:
                f = options[name](f)
        return f

    return apply


def _settings_from(values: dict[str, Any]) -> dict[str, Any]:
    """Settings fields from the global options' values."""
    out: dict[str, Any] = {}
    for param, value in values.items():
        field = _GLOBAL_PARAMS[param]
        if param == "no_verify":
            value = not value
        elif param == "server_member" and value:
            value = value.upper()
        out[field] = value
    return out


def with_settings(exclude: Iterable[str] = ()) -> Callable[[F], F]:
    """Give a subcommand the global options and pass it the Settings: the group's, with any
    global option given after the subcommand taking the place of the group's value."""
    excluded = frozenset(exclude)

    def decorate(fn: F) -> F:
        @functools.wraps(fn)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            ctx = click.get_current_context()
            base = ctx.find_object(Settings) or Settings()
            given = {}
            for param in _GLOBAL_PARAMS:
                if param in excluded:
                    continue
                value = kwargs.pop(param)
                if ctx.get_parameter_source(param) == ParameterSource.COMMANDLINE:
                    given[param] = value
            return fn(dataclasses.replace(base, **_settings_from(given)), *args, **kwargs)

        return _global_options(group=False, exclude=excluded)(wrapper)  # type: ignore[return-value]

    return decorate


@click.group(help=_HELP, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="counterpart")
@_global_options(group=True)
@click.pass_context
def main(
    ctx: click.Context, server: str, fmt: str, no_verify: bool, timeout: float, tls: bool | None,
    server_member: str | None, token_file: Path | None, offline: bool,
) -> None:
    ctx.obj = Settings(**_settings_from({
        "server": server, "fmt": fmt, "no_verify": no_verify, "timeout": timeout, "tls": tls,
        "server_member": server_member, "token_file": token_file, "offline": offline,
    }))


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
@with_settings()
@handle_errors
def trust(settings: Settings, file: Path | None, replace: bool, update: bool) -> None:
    """Verify a federation document and pin it as the trust root.

    FILE must be signed by a threshold of its own root keys and not be expired. A newer
    version of the pinned federation must be exactly the next one, signed by the
    pinned version's root keys. With --update, those versions come from the node.
    """
    if update == (file is not None):
        _fail("give either FILE or --update", EXIT_USAGE)
    if file is None:
        versions = update_trust(settings.server, timeout=settings.timeout)
        if settings.fmt == "json":
            _print_json({"pinned_versions": versions})
            return
        s = Screen(_console())
        if versions:
            s.say(f"pinned version {versions[-1]} (checked each step: {', '.join(map(str, versions))})")
        else:
            s.say("the pinned version is the newest the node has")
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
    codes = [m.code for m in result.federation.members()]
    what = "already pinned" if result.unchanged else "pinned"
    since = (
        f" (was version {result.previous_version})"
        if result.previous_version is not None and not result.unchanged else ""
    )
    s = Screen(_console())
    s.say(f"{what}: federation {doc.federation_id!r} version {result.federation.version}{since}, "
          f"expires {_iso(from_timestamp(doc.expire_time))}")
    s.field("members", *(_joined(codes) if codes else ["none"]))
    s.field("trust root", Whole(str(result.path)))


# --- signing in --------------------------------------------------------------------------


@main.command()
@click.option(
    "--token-file", "source", type=click.Path(path_type=Path, dir_okay=False), default=None,
    help="Read the token from this file (default: the --token-file given before `login`, "
         "else ask for it on the terminal).",
)
@with_settings(exclude=["token_file"])
@handle_errors
def login(settings: Settings, source: Path | None) -> None:
    """Keep the access token your national node's administrator issued you (checked against
    the pinned federation document first), so later commands sign in with it. The token is a
    secret: it is stored readable by you only."""
    federation = load_pinned()
    if federation is None:
        raise NotTrusted(NOT_TRUSTED_HINT)
    source = source or settings.token_file
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
    s = Screen(_console())
    s.say(f"signed in as {caller.describe()}; the token is kept, readable by you only, in:")
    s.say(Whole(str(path)), indent=2)


@main.command()
@with_settings()
@handle_errors
def logout(settings: Settings) -> None:
    """Forget the token `counterpart login` kept."""
    path = token_path()
    existed = path.exists()
    if existed:
        path.unlink()
    if settings.fmt == "json":
        _print_json({"signed_out": existed, "token_file": str(path)})
        return
    s = Screen(_console())
    if existed:
        s.say("signed out: removed ", Whole(str(path)))
    else:
        s.say("not signed in")


# --- as of ------------------------------------------------------------------------------


def _parse_as_of(ctx: click.Context, param: click.Parameter, value: str | None) -> datetime | None:
    if value is None:
        return None
    try:
        at = effective.parse_instant(value)
    except ValueError as e:
        raise click.BadParameter(str(e)) from None
    if at > utcnow():
        raise click.BadParameter(
            f"{effective.format_instant(at)} is in the future;\n  without --as-of, the answer "
            "shows changes already scheduled"
        )
    return at


def as_of_options(fn: F) -> F:
    """--as-of and --published: the answer the directory gives for a past instant."""
    fn = click.option(
        "--published", is_flag=True,
        help="With --as-of: what the directory said then (only versions published by then), "
             "instead of what was in effect then by today's knowledge.",
    )(fn)
    return click.option(
        "--as-of", "as_of", default=None, metavar="WHEN", callback=_parse_as_of,
        help="Answer as of this date or time: 2026-03-01 (00:00 UTC), 2026-03-01T14:00 (UTC) "
             "or RFC 3339 with an offset. Default: in effect then, by today's knowledge.",
    )(fn)


def _reading(as_of: datetime | None, published: bool) -> str:
    if published and as_of is None:
        raise click.UsageError("--published needs --as-of (e.g. --as-of 2026-03-01 --published)")
    return effective.PUBLISHED if published else effective.IN_EFFECT


def _as_of_line(s: Screen, response: Message, asked: bool) -> None:
    """One line saying which instant and reading an as-of answer used."""
    if not asked or not response.HasField("as_of"):
        return
    stated: ds.AsOf = response.as_of  # type: ignore[attr-defined]
    when = effective.format_instant(from_timestamp(stated.time))
    # one line (find's answer must fit 80x24); --help and the guide say what the other reading is
    if stated.reading == ds.AS_OF_READING_PUBLISHED:
        s.say((f"as of {when}: as published then (what the directory said)", "bold"))
    else:
        s.say((f"as of {when}: in effect then (today's knowledge)", "bold"))


def _period(s: Screen, record: Message, indent: int = 2) -> None:
    """A record's effective dates, when it has any."""
    text = effective.format_period(record)
    if text:
        s.field("effective", text.removeprefix("in effect "), indent=indent)


# --- find --------------------------------------------------------------------------------


@main.command()
@click.option("--in", "member", required=True, metavar="MEMBER",
              help="The requested member, where the measure is to be taken (e.g. GE).")
@click.option("--type", "request_type", required=True, metavar="CODE",
              help="Request type code, e.g. mla.hearing.witness.")
@click.option("--place", default="",
              help="Subdivision code, city or region name (any script, small typos forgiven) or "
                   "postal code.")
@click.option("--offence", default="", metavar="CODE", help="Offence category code.")
@click.option("--stage", type=click.Choice(sorted(_STAGES)), default=None,
              help="Stage of the proceedings.")
@click.option("--from", "requesting", default="", metavar="MEMBER",
              help="The requesting member (e.g. AZ), to find legal bases between both.")
@click.option("--urgent", is_flag=True, help="The request is urgent.")
@click.option("--lang", "languages", multiple=True, metavar="TAG",
              help="A language you can write in (BCP 47); repeat, preferred first.")
@click.option("--long", "long_", is_flag=True,
              help="Everything: every candidate and why, all legal bases, the rule's conditions, "
                   "keys and channels, contact points, warnings, provenance.")
@as_of_options
@with_settings()
@handle_errors
def find(
    settings: Settings, member: str, request_type: str, place: str, offence: str,
    stage: str | None, requesting: str, urgent: bool, languages: tuple[str, ...], long_: bool,
    as_of: datetime | None, published: bool,
) -> None:
    """Whom to send a request to: who receives and who executes it for the place, the route,
    the languages and the legal basis, on one screen (--long: everything)."""
    request = ds.FindCounterpartRequest(
        requested_member=member.upper(), request_type=request_type, place=place,
        offence_category=offence,
        stage=_STAGES.get(stage or "", records_pb2.PROCEEDING_STAGE_UNSPECIFIED),
        requesting_member=requesting.upper(), urgent=urgent, preferred_languages=languages,
    )
    reading = _reading(as_of, published)
    with settings.client() as client:
        response, verification = client.find_counterpart(request, as_of=as_of, reading=reading)
    if settings.fmt == "json":
        _print_json(_document(response, verification, client))
        return
    view = _FindView(request, response, _Vocab.of(client.federation))
    s = Screen(_console())
    view.summary(s)
    _as_of_line(s, response, as_of is not None)  # at the foot, beside what was verified: never scrolled away
    if long_:
        view.details(s)
        s.blank()
    _print_session(s, client, hint=not response.withheld_contacts)
    _print_verification(s, verification)


@dataclass(frozen=True)
class _Vocab:
    """Titles of the codes an answer uses, from the pinned federation document."""

    request_types: dict[str, str]
    channels: dict[str, str]
    contact_roles: dict[str, str]
    authority_kinds: dict[str, str]

    @classmethod
    def of(cls, federation: fed.Federation | None) -> _Vocab:
        if federation is None:
            return cls({}, {}, {}, {})
        v = federation.document.vocabularies

        def titles(terms: Iterable[federation_pb2.VocabularyTerm]) -> dict[str, str]:
            return {t.code: t.title for t in terms}

        return cls(titles(v.request_types), titles(v.channels), titles(v.contact_roles),
                   titles(v.authority_kinds))


def _has_role(cand: ds.Candidate, role: int) -> bool:
    return role in cand.roles


class _FindView:
    """A FindCounterpart answer laid out for a prosecutor: who, how, in which language, on
    what basis; the summary fits one screen, the details hold everything else."""

    def __init__(self, request: ds.FindCounterpartRequest, response: ds.FindCounterpartResponse,
                 vocab: _Vocab) -> None:
        self.request = request
        self.response = response
        self.vocab = vocab
        self.rule = response.rule if response.HasField("rule") else None
        self.by_name = {c.authority.name: c for c in response.candidates}
        self.contacts = {c.name: c for c in response.contacts}

    # --- who ----------------------------------------------------------------------------

    def receiver(self) -> tuple[str, ds.Candidate | None]:
        """(resource name, candidate) of the authority that receives the request."""
        if self.rule is not None and self.rule.receiving_authority:
            name = self.rule.receiving_authority
            return name, self.by_name.get(name)
        cand = next((c for c in self.response.candidates
                     if _has_role(c, records_pb2.COMPETENCE_ROLE_RECEIVES)), None)
        return (cand.authority.name if cand else ""), cand

    def executor(self) -> tuple[str, str, ds.Candidate | None]:
        """(how the rule says it, resource name, candidate) of the executing authority."""
        rule = self.rule
        executes = next((c for c in self.response.candidates
                         if _has_role(c, records_pb2.COMPETENCE_ROLE_EXECUTES)), None)
        if rule is not None:
            place = self.response.place
            subdivisions = {place.subdivision, place.gazetteer_place.parent_subdivision} - {""}
            for by in rule.executing_by_subdivision:
                hit = sorted(subdivisions & set(by.subdivisions))
                if hit:
                    return (f"executed, for {', '.join(hit)}, by the authority the rule names",
                            by.authority, self.by_name.get(by.authority))
            if rule.executing_authority:
                name = rule.executing_authority
                return "executes", name, self.by_name.get(name)
            if rule.territorial_execution:
                return ("executed by the authority territorially competent for the place",
                        executes.authority.name if executes else "", executes)
        return "executes", (executes.authority.name if executes else ""), executes

    # --- the summary --------------------------------------------------------------------

    def summary(self, s: Screen) -> None:
        req, resp, rule = self.request, self.response, self.rule
        title = self.vocab.request_types.get(req.request_type, req.request_type)
        heading = f"{title} ({req.request_type}) in {req.requested_member}"
        if req.requesting_member:
            heading += f", requested by {req.requesting_member}"
        if req.urgent:
            heading += ", URGENT"
        s.heading(heading)
        self._place(s)
        if rule is not None and rule.possible in (records_pb2.POSSIBILITY_NO, records_pb2.POSSIBILITY_PARTLY):
            s.field("possible", _POSSIBILITY[rule.possible], *self._alternatives(),
                    style="bold yellow")

        recv_name, recv = self.receiver()
        how, exec_name, execu = self.executor()
        if recv_name and recv_name == exec_name and how == "executes":
            self._authority(s, "receives and executes", recv_name, recv)
        elif recv_name and recv_name == exec_name:
            self._authority(s, "receives", recv_name, recv)
            s.field(how, "the same authority, ", Whole(exec_name))
        else:
            self._authority(s, "receives", recv_name, recv)
            self._authority(s, how, exec_name, execu)

        self._route(s)
        self._languages(s)
        self._legal_basis(s)
        if req.urgent:
            self._urgent(s)
        self._contacts(s)
        n = len(resp.warnings)
        withheld: list[Part] = []
        if resp.withheld_contacts:
            withheld = [f"; {resp.withheld_contacts} members-only contacts withheld (counterpart login)"]
        s.field("warnings", f"{n} (--long)" if n else "none", *withheld, style="yellow" if n else "")

    def _alternatives(self) -> list[Part]:
        text = _english(self.rule.alternatives) if self.rule is not None else ""
        return [f"; alternatives: {text}"] if text else []

    def _place(self, s: Screen) -> None:
        place = self.response.place
        if place.approximate:
            where = place.subdivision or place.gazetteer_place.subdivision
            s.field("place", f"read {place.query.strip()!r} as ", Whole(place.matched_name),
                    *([f" ({where})"] if where else []), style="bold yellow")
        else:
            s.field("place", _place(place))

    def _authority(self, s: Screen, label: str, name: str, cand: ds.Candidate | None) -> None:
        if not name:
            s.field(label, "not stated (no competent authority found for this place)",
                    style="bold yellow")
            return
        if cand is None:
            s.field(label, Whole(name))
            s.say("not among the candidates; its details: counterpart show ", Whole(name), indent=2, hang=4)
            return
        a = cand.authority
        english = _english(a.display_names) or a.name
        local = _local(a.display_names)
        names: list[Part] = [english]
        if local and local != english:
            names += [" / ", Whole(local)]
        s.field(label, *names)
        s.say(Whole(a.name), indent=2)
        _period(s, a)
        for ch in a.channels:
            s.say(*self._channel(ch), indent=2, hang=4)
        if not a.channels:
            s.say("channel: not stated", indent=2)
        address = _address(a.address)
        if address:
            s.say("address: ", *address, indent=2, hang=4)

    @staticmethod
    def _channel(ch: records_pb2.Channel) -> list[Part]:
        """"e-mail ADDRESS", "phone NUMBER", "e-codex: ID": the address whole."""
        word = _CHANNEL_WORDS.get(ch.kind)
        return [f"{word} " if word else f"{ch.kind}: ", Whole(ch.address) if ch.address else NOT_STATED]

    def _route(self, s: Screen) -> None:
        resp, rule = self.response, self.rule
        route = _ROUTES.get(resp.route)
        if route is None:
            s.field("route", NOT_STATED + ("" if rule is not None else " (no rule published)"))
        else:
            extra = ""
            if self.request.urgent and rule is not None and rule.interpol_for_urgent:
                extra = "; urgent: an advance copy through Interpol is accepted"
            s.field("route", route + extra)

    def _languages(self, s: Screen) -> None:
        accepted = list(self.response.languages)
        wanted = list(self.request.preferred_languages)
        warning: list[Part] = []
        if wanted and accepted and not any(_lang_match(w, a) for w in wanted for a in accepted):
            advice = f"! none of yours ({', '.join(wanted)}): translate into {' or '.join(accepted)}"
            warning = ["; ", (advice, "bold yellow")]
        s.field("languages accepted", ", ".join(accepted) or NOT_STATED, *warning)

    def _legal_basis(self, s: Screen) -> None:
        bases = list(self.response.legal_bases)
        if not bases:
            s.field("legal basis", "none in force found", style="yellow")
            return
        b = bases[0]
        also: list[Part] = ["; also: ", *_joined(x.instrument for x in bases[1:]), " (--long)"] if len(bases) > 1 else []
        s.field("legal basis", f"{b.title} ", Whole(f"[{b.instrument}]"),
                f"; {_SCOPES.get(b.scope, 'scope not stated')}; "
                f"{'direct transmission allowed' if b.direct_transmission else 'no direct transmission'}",
                *also)

    def _urgent(self, s: Screen) -> None:
        if not self.response.urgent_contacts:
            s.field("urgent", "no urgent contact published", style="yellow")
        for uc in self.response.urgent_contacts:
            s.field("urgent", *_urgent(uc), style="bold")

    def _shown_contacts(self) -> list[tuple[str, records_pb2.Contact]]:
        """The contact points the summary shows: the one to consult before sending, the 24/7
        points for an urgent request, asset-recovery focal points for asset recovery."""
        out: list[tuple[str, records_pb2.Contact]] = []
        rule = self.rule
        if rule is not None and rule.informal_consultation_recommended and rule.consultation_contact in self.contacts:
            out.append(("consult before sending", self.contacts[rule.consultation_contact]))
        for c in self.response.contacts:
            if any(c is x for _, x in out):
                continue
            urgent = self.request.urgent and (c.role == "24-7-point" or "24/7" in c.availability)
            assets = self.request.request_type.startswith("asset-recovery") and "asset-recovery" in c.role
            if urgent or assets:
                out.append((self.vocab.contact_roles.get(c.role, c.role), c))
        return out

    def _contacts(self, s: Screen) -> None:
        rule, resp = self.rule, self.response
        shown = self._shown_contacts()
        if (rule is not None and rule.informal_consultation_recommended
                and rule.consultation_contact and rule.consultation_contact not in self.contacts):
            s.field("consult before sending", Whole(rule.consultation_contact),
                    " (members-only: not shown to you)")
        for label, c in shown:
            s.field(label, f"{_english(c.display_names) or c.name}: ", *_reach(c))
        more = len(resp.contacts) - len(shown)
        if more > 0:
            s.field("contact points", f"{more} more with --long")

    # --- the details --------------------------------------------------------------------

    def details(self, s: Screen) -> None:
        self._candidates(s)
        self._legal_bases(s)
        self._rule(s)
        self._contact_points(s)
        self._urgent_contacts(s)
        self._place_details(s)
        self._warnings(s)
        self._provenance(s)

    def _candidates(self, s: Screen) -> None:
        s.blank()
        if not self.response.candidates:
            s.heading("Candidates: none found")
            return
        s.heading("Candidates, best first")
        for i, cand in enumerate(self.response.candidates, 1):
            a = cand.authority
            english = _english(a.display_names) or a.name
            s.say((english, "bold"), lead=f"{i}. ", hang=3)
            for t in a.display_names:
                if t.text != english:
                    s.say(f"{t.text} ({t.language})", indent=3)
            s.say(Whole(a.name), indent=3)
            s.field("roles", _roles(cand.roles) or NOT_STATED, "; coverage matched: ",
                    _enum_word(ds.CoverageLevel, cand.coverage_level, "COVERAGE_LEVEL_"), indent=3)
            s.field("why", "; ".join(cand.reasons) or NOT_STATED, indent=3)
            _authority_facts(s, a, self.vocab, indent=3, matching=list(cand.matching_languages))

    def _legal_bases(self, s: Screen) -> None:
        s.blank()
        bases = self.response.legal_bases
        if not bases:
            s.heading("Legal bases: none in force found (reciprocity may apply)")
            return
        s.heading("Legal bases, strongest first")
        req = self.request
        for i, b in enumerate(bases, 1):
            s.say((b.title or b.instrument, "bold"), " ", Whole(f"[{b.instrument}]"), lead=f"{i}. ", hang=3)
            parties = [req.requested_member] if b.requested_member_party else []
            if b.requesting_member_party and req.requesting_member:
                parties.append(req.requesting_member)
            s.field("scope", f"{_SCOPES.get(b.scope, NOT_STATED)}; in force for "
                    f"{' and '.join(parties) or 'neither side, as far as this node knows'}", indent=3)
            s.field("route", "direct transmission between judicial authorities allowed"
                    if b.direct_transmission else
                    "no direct transmission (through the central authorities)", indent=3)
            s.field("declared languages", ", ".join(b.declared_languages) or NOT_STATED, indent=3)
            s.field("offences", ", ".join(b.offence_categories) or "any", indent=3)
            if b.explanation:
                s.field("why", b.explanation, indent=3)

    def _rule(self, s: Screen) -> None:
        s.blank()
        rule, req = self.rule, self.request
        if rule is None:
            s.heading(f"Rule: {req.requested_member} has published none for {req.request_type}")
            return
        s.say(("Rule ", "bold"), Whole(rule.name, "bold"))
        self.rule_facts(s)

    def rule_facts(self, s: Screen) -> None:
        """Every fact of the rule, "not stated" where the member published nothing."""
        rule = self.rule
        if rule is None:
            return
        s.field("possible", _POSSIBILITY.get(rule.possible, NOT_STATED), indent=2)
        s.field("alternatives", _english(rule.alternatives) or NOT_STATED, indent=2)
        routes = [_ROUTES.get(r, NOT_STATED) for r in rule.routes]
        s.field("routes accepted", "; ".join(routes) or NOT_STATED, indent=2)
        s.field("Interpol for urgent requests", "accepted" if rule.interpol_for_urgent else NOT_STATED, indent=2)
        s.field("languages", ", ".join(rule.languages) or NOT_STATED, indent=2)
        s.field("legal frameworks", *(_joined(rule.legal_frameworks) or [NOT_STATED]), indent=2)
        s.field("receiving authority", *self._named(rule.receiving_authority), indent=2)
        s.field("executing authority", *self._named(rule.executing_authority), indent=2)
        if rule.territorial_execution:
            name = self.executor()[1]
            where: list[Part] = ["ask `counterpart find --place PLACE`"]
            if name:
                where = self._named(name)
            elif self.request.place:
                where = ["none found for this place"]
            s.field("territorial execution",
                    "executed by the authority territorially competent for the place: ", *where, indent=2)
        for by in rule.executing_by_subdivision:
            s.field(f"executes in {', '.join(by.subdivisions)}", *self._named(by.authority), indent=2)
        for label, texts in (
            ("form and documents", rule.form_and_documents),
            ("evidence use limits", rule.evidence_use_limits),
            ("execution deadline", rule.execution_deadline),
            ("urgent procedure", rule.urgent_procedure),
        ):
            s.field(label, _english(texts) or NOT_STATED, indent=2)
        s.field("dual criminality", _POSSIBILITY.get(rule.dual_criminality, NOT_STATED), indent=2)
        s.field("electronic transmission", _electronic(rule), indent=2)
        consult: list[Part] = ["not recommended" if not rule.informal_consultation_recommended
                               else "recommended before sending"]
        if rule.consultation_contact:
            consult += [": ", *self._named(rule.consultation_contact)]
        s.field("informal consultation", *consult, indent=2)
        if rule.HasField("asset_recovery"):
            ar = rule.asset_recovery
            s.say(("asset recovery:", "bold"), indent=2)
            s.field("recognizes foreign confiscation orders",
                    _POSSIBILITY.get(ar.recognizes_foreign_confiscation, NOT_STATED), indent=4)
            s.field("non-conviction-based confiscation",
                    _POSSIBILITY.get(ar.non_conviction_based, NOT_STATED), indent=4)
            s.field("asset sharing", _english(ar.asset_sharing) or NOT_STATED, indent=4)
        if rule.HasField("extradition"):
            ex = rule.extradition
            s.say(("extradition:", "bold"), indent=2)
            s.field("extradites nationals", _POSSIBILITY.get(ex.extradites_nationals, NOT_STATED), indent=4)
            s.field("provisional arrest",
                    f"the request must follow within {ex.provisional_arrest_days} days"
                    if ex.provisional_arrest_days else NOT_STATED, indent=4)
            s.field("simplified procedure (with consent)", "yes" if ex.simplified_procedure else NOT_STATED,
                    indent=4)
        for note in rule.notes:
            s.field("note", note.text, indent=2)
        s.field("reviewed", rule.review_date or NOT_STATED, indent=2)

    def _named(self, name: str) -> list[Part]:
        """An authority or contact named by the rule: as people read it, and its resource name."""
        if not name:
            return [NOT_STATED]
        cand = self.by_name.get(name)
        contact = self.contacts.get(name)
        if cand is not None:
            return [f"{_english(cand.authority.display_names) or name}, ", Whole(name)]
        if contact is not None:
            return [f"{_english(contact.display_names) or name}, ", Whole(name)]
        return [Whole(name)]

    def _contact_points(self, s: Screen) -> None:
        s.blank()
        resp = self.response
        withheld = (f" ({resp.withheld_contacts} members-only withheld: counterpart login to see them)"
                    if resp.withheld_contacts else "")
        if not resp.contacts:
            s.heading(f"Contact points: none{withheld}")
            return
        s.heading(f"Contact points{withheld}")
        for c in resp.contacts:
            _contact_facts(s, c, self.vocab)

    def _urgent_contacts(self, s: Screen) -> None:
        s.blank()
        if not self.response.urgent_contacts:
            s.heading("Urgent contacts: none in this answer")
            return
        s.heading("Urgent contacts")
        for uc in self.response.urgent_contacts:
            s.say(*_urgent(uc), indent=2)

    def _place_details(self, s: Screen) -> None:
        place = self.response.place
        if not place.HasField("gazetteer_place"):
            return
        s.blank()
        s.say(("Place ", "bold"), Whole(place.gazetteer_place.name, "bold"),
              f" (matched {place.matched_name!r}{', approximately' if place.approximate else ''})")
        _place_facts(s, place.gazetteer_place, indent=2)

    def _warnings(self, s: Screen) -> None:
        s.blank()
        if not self.response.warnings:
            s.heading("Warnings: none")
            return
        s.heading("Warnings")
        for w in self.response.warnings:
            s.say(w, lead="! ", indent=2, style="yellow")

    def _provenance(self, s: Screen) -> None:
        s.blank()
        s.heading("Provenance (the node's view; the verification line is the client's)")
        for p in self.response.provenances:
            s.say(f"{p.member}: checkpoint {p.checkpoint_size}, signed "
                  f"{_iso(from_timestamp(p.checkpoint_issue_time))}, expires "
                  f"{_iso(from_timestamp(p.checkpoint_expire_time))}"
                  f"{', STALE' if p.stale else ''}", indent=2)


def _lang_match(wanted: str, accepted: str) -> bool:
    """en matches en and en-GB; sr-Latn does not match sr-Cyrl."""
    w, a = wanted.lower(), accepted.lower()
    return w == a or a.startswith(w + "-") or w.startswith(a + "-")


def _address(address: records_pb2.PostalAddress) -> list[Part]:
    """A postal address: each line, the locality, subdivision, postal code and country whole."""
    items = [*address.lines, address.locality, address.postal_code, address.subdivision, address.country]
    return _joined(x for x in items if x)


def _reach(c: records_pb2.Contact) -> list[Part]:
    parts: list[Part] = []
    if c.email:
        parts += ["e-mail ", Whole(c.email)]
    if c.phone:
        parts += [", " if parts else "", "phone ", Whole(c.phone)]
    return parts or ["no e-mail or phone published"]


def _urgent(uc: records_pb2.UrgentContact) -> list[Part]:
    parts: list[Part] = [uc.description or "urgent contact"]
    reach = [x for x in (uc.phone, uc.email) if x]
    if reach:
        parts += [": ", *_joined(reach)]
    if uc.always_available:
        parts.append(" (24/7)")
    return parts


def _authority_facts(
    s: Screen, a: records_pb2.Authority, vocab: _Vocab, indent: int, matching: Sequence[str] = (),
) -> None:
    """An authority's facts, one per line, every value a reader copies whole."""
    kind = vocab.authority_kinds.get(a.kind, a.kind)
    s.field("kind", kind or NOT_STATED, indent=indent)
    if a.parent:
        s.field("part of", Whole(a.parent), indent=indent)
    langs = ", ".join(a.languages) or NOT_STATED
    if matching:
        langs += f" (yours: {', '.join(matching)})"
    s.field("languages", langs, indent=indent)
    for ch in a.channels:
        s.say(*_channel_titled(ch, vocab), indent=indent, hang=4)
        for note in ch.notes:
            s.say(note.text, indent=indent + 2)
    if not a.channels:
        s.field("channels", NOT_STATED, indent=indent)
    s.field("address", *(_address(a.address) or [NOT_STATED]), indent=indent, hang=4)
    oh = a.office_hours
    hours = " ".join(x for x in (oh.opening_hours, f"({oh.time_zone})" if oh.time_zone else "") if x)
    s.field("office hours", hours or NOT_STATED, indent=indent)
    if a.HasField("urgent_contact"):
        s.field("urgent contact", *_urgent(a.urgent_contact), indent=indent, hang=4)
    if a.transmission_keys:
        for key in a.transmission_keys:
            _transmission_key(s, key, indent)
    else:
        s.field("transmission keys", NOT_STATED, indent=indent)
    if a.website:
        s.field("website", Whole(a.website), indent=indent)
    if a.HasField("coverage"):
        s.field("coverage", *_coverage(a.coverage), indent=indent, hang=4)
    for note in a.notes:
        s.field("note", note.text, indent=indent)
    s.field("reviewed", a.review_date or NOT_STATED, indent=indent)


def _transmission_key(s: Screen, key: records_pb2.TransmissionKey, indent: int) -> None:
    """A key for encrypted transmission: its fingerprint and URI each whole on a line."""
    s.field("transmission key", key.kind or "kind not stated", indent=indent)
    s.say("fingerprint ", Whole(key.fingerprint) if key.fingerprint else NOT_STATED, indent=indent + 2)
    s.say("URI ", Whole(key.uri) if key.uri else NOT_STATED, indent=indent + 2)


def _channel_titled(ch: records_pb2.Channel, vocab: _Vocab) -> list[Part]:
    title = vocab.channels.get(ch.kind) or ch.kind
    return [(f"{title}: ", "bold"), Whole(ch.address) if ch.address else NOT_STATED]


def _coverage(cov: records_pb2.Coverage) -> list[Part]:
    parts: list[str] = []
    if cov.national:
        parts.append("national")
    parts += list(cov.subdivisions)
    for m in cov.municipalities:
        parts.append(" / ".join(t.text for t in m.names) + (f" ({m.subdivision})" if m.subdivision else ""))
    parts += [f"postal codes {r.first}-{r.last}" for r in cov.postal_code_ranges]
    return _joined(parts, "; ") if parts else [NOT_STATED]


def _contact_facts(s: Screen, c: records_pb2.Contact, vocab: _Vocab, indent: int = 2) -> None:
    role = vocab.contact_roles.get(c.role, c.role)
    s.say((_english(c.display_names) or c.name, "bold"), f" ({role})" if role else "", indent=indent)
    s.say(Whole(c.name), indent=indent + 2)
    if c.authority:
        s.field("of", Whole(c.authority), indent=indent + 2)
    s.say(*_reach(c), indent=indent + 2, hang=4)
    details = "; ".join(x for x in (", ".join(c.languages), c.availability) if x)
    if details:
        s.say(details, indent=indent + 2)
    for note in c.notes:
        s.field("note", note.text, indent=indent + 2)


def _place_facts(s: Screen, p: records_pb2.Place, indent: int = 0) -> None:
    """A gazetteer place: kind, subdivision, names grouped by language, postal codes."""
    s.field("kind", _PLACE_KINDS.get(p.kind, NOT_STATED), indent=indent)
    sub = p.subdivision or NOT_STATED
    if p.parent_subdivision:
        sub += f" (in {p.parent_subdivision})"
    s.field("subdivision", sub, indent=indent)
    if p.capital:
        s.field("capital", "yes", indent=indent)
    s.say(("names:", "bold"), indent=indent)
    grouped: dict[str, list[str]] = {}
    for t in p.names:
        grouped.setdefault(t.language, []).append(t.text)
    for lang, texts in grouped.items():
        s.field(lang, *_joined(texts), indent=indent + 2, hang=4)
    if not grouped:
        s.say(NOT_STATED, indent=indent + 2)
    ranges = [r.first if r.first == r.last else f"{r.first}-{r.last}" for r in p.postal_code_ranges]
    s.field("postal codes", *(_joined(ranges) or [NOT_STATED]), indent=indent, hang=4)
    for note in p.notes:
        s.field("note", note.text, indent=indent)
    s.field("reviewed", p.review_date or NOT_STATED, indent=indent)


def _electronic(rule: records_pb2.Rule) -> str:
    if not rule.HasField("electronic_transmission"):
        return NOT_STATED
    et = rule.electronic_transmission
    if not et.accepted:
        return "not accepted"
    extra = [w for w, on in (("signature required", et.signature_required),
                             ("encryption required", et.encryption_required)) if on]
    return "accepted" + (f" ({', '.join(extra)})" if extra else " (no signature or encryption required)")


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


# --- show --------------------------------------------------------------------------------


@main.command()
@click.argument("name")
@as_of_options
@with_settings()
@handle_errors
def show(settings: Settings, name: str, as_of: datetime | None, published: bool) -> None:
    """Show one record (members/GE/authorities/pgo, members/GE/places/batumi, ...) or a
    member (members/GE or GE)."""
    if "/" not in name:
        name = name.upper()  # a bare member code: ge -> GE
    is_member = name.count("/") <= 1
    reading = _reading(as_of, published)
    if is_member and as_of is not None:
        raise click.UsageError("--as-of applies to a record (members/GE/authorities/pgo), not to a member")
    with settings.client() as client:
        response: Message
        if is_member:
            response, verification = client.member(name)
        else:
            response, verification = client.get(name, as_of=as_of, reading=reading)
    if settings.fmt == "json":
        _print_json(_document(response, verification, client))
        return
    s = Screen(_console())
    vocab = _Vocab.of(client.federation)
    if isinstance(response, ds.GetMemberResponse):
        m = response.member
        s.say(Whole(m.name, "bold"), (f": {m.display_name}", "bold"))
        _describe(s, m, indent=2)
    else:
        field, subject = next(
            (fd.name, value) for fd, value in response.ListFields()
            if fd.name not in ("proof", "provenance", "as_of")
        )
        _as_of_line(s, response, as_of is not None)
        s.say(Whole(subject.name if isinstance(subject, Record) else "", "bold"), (f" ({field})", "bold"))
        _period(s, subject)
        if isinstance(subject, records_pb2.Place):
            _place_facts(s, subject, indent=2)
        elif isinstance(subject, records_pb2.Authority):
            s.say(_english(subject.display_names) or subject.name, indent=2)
            for t in subject.display_names:
                s.field(t.language, t.text, indent=4)
            _authority_facts(s, subject, vocab, indent=2)
            for comp in subject.competences:
                s.field("competent to", _roles(comp.roles) or NOT_STATED, " ",
                        *_joined(comp.request_types), indent=2, hang=4)
                if comp.offence_categories:
                    s.field("offences", ", ".join(comp.offence_categories), indent=4)
                if comp.stages:
                    s.field("stages", ", ".join(_enum_label(records_pb2.ProceedingStage.Name(x))
                                                for x in comp.stages), indent=4)
        elif isinstance(subject, records_pb2.Rule):
            member = subject.name.split("/")[1]
            view = _FindView(ds.FindCounterpartRequest(requested_member=member, request_type=subject.request_type),
                             ds.FindCounterpartResponse(rule=subject), vocab)
            view.rule_facts(s)
        elif isinstance(subject, records_pb2.Contact):
            _contact_facts(s, subject, vocab, indent=2)
            s.field("visibility", _enum_label(records_pb2.Visibility.Name(subject.visibility)), indent=4)
            s.field("reviewed", subject.review_date or NOT_STATED, indent=4)
        else:
            _describe(s, subject, indent=2, skip=("name",))
    proof = getattr(response, "proof", None)
    if isinstance(proof, ds.RecordProof) and proof.name:
        s.say(f"signed entry: seq {proof.leaf_index + 1} of {proof.tree_size}")
    s.blank()
    _print_session(s, client)
    _print_verification(s, verification)


@main.command()
@click.argument("name")
@click.option("--page-size", type=click.IntRange(min=0, max=500), default=0, help="At most this many versions.")
@click.option("--page-token", default="", help="Continue with older versions.")
@with_settings()
@handle_errors
def history(settings: Settings, name: str, page_size: int, page_token: str) -> None:
    """Every version of a record, newest first, deletions included: who was competent, by
    which rule, before it changed (members/GE/rules/mla.general@7 is the version entry 7 made)."""
    with settings.client() as client:
        response, verification = client.history(name, page_size, page_token)
    if settings.fmt == "json":
        _print_json(_document(response, verification, client))
        return
    s = Screen(_console())
    s.say(Whole(name, "bold"), (f": {len(response.revisions)} version(s), newest first", "bold"))
    for r in response.revisions:
        when = _iso(from_timestamp(r.publish_time)) if r.HasField("publish_time") else NOT_STATED
        entry = log_pb2.Entry.FromString(signing.parse_envelope(bytes(r.proof.signed_entry)).payload)
        body = entry.WhichOneof("body")
        if r.deleted:
            what = f"deleted ({entry.deletion.reason})" if entry.deletion.reason else "deleted"
        else:
            record = getattr(entry, body) if body else None
            texts = getattr(record, "display_names", None) or getattr(record, "names", None) or []
            what = f"published: {_english(texts) or body}"
        s.say(Whole(r.revision_name), indent=2)
        s.field(when, what, indent=4)
    if response.next_page_token:
        s.say("older versions: --page-token ", Whole(response.next_page_token))
    s.blank()
    _print_session(s, client)
    _print_verification(s, verification)


def _describe(s: Screen, message: Message, indent: int = 0, skip: Sequence[str] = ()) -> None:
    """Every field of a message, one per line, nested messages indented, signed bytes left out."""
    for fd, value in message.ListFields():
        if fd.name in skip:
            continue
        label = fd.name.replace("_", " ")
        if fd.message_type is not None:
            kind = fd.message_type.full_name
            if kind == "counterpart.v1.LocalizedText":
                texts = list(value) if fd.is_repeated else [value]
                if len(texts) == 1:
                    s.field(label, f"{texts[0].text} ({texts[0].language})", indent=indent)
                else:
                    s.say((f"{label}:", "bold"), indent=indent)
                    for t in texts:
                        s.say(f"{t.text} ({t.language})", lead="- ", indent=indent + 2)
            elif kind == "google.protobuf.Timestamp":
                s.field(label, _iso(from_timestamp(value)), indent=indent)
            elif kind == "google.protobuf.Duration":
                s.field(label, _age(value.ToTimedelta()), indent=indent)
            elif fd.is_repeated:
                s.say((f"{label}:", "bold"), indent=indent)
                for i, item in enumerate(value, 1):
                    s.say(f"({i})", indent=indent + 2)
                    _describe(s, item, indent + 4)
            else:
                s.say((f"{label}:", "bold"), indent=indent)
                _describe(s, value, indent + 2)
        elif fd.enum_type is not None:
            values = value if fd.is_repeated else [value]
            s.field(label, ", ".join(_enum_label(fd.enum_type.values_by_number[v].name) for v in values),
                    indent=indent)
        elif fd.type == fd.TYPE_BYTES:
            continue  # signed envelopes: evidence, not something to read
        elif fd.is_repeated:
            s.field(label, *_joined(str(v) for v in value), indent=indent, hang=4)
        elif isinstance(value, bool):
            s.field(label, "yes" if value else "no", indent=indent)
        else:
            s.field(label, _phrase(str(value)), indent=indent)


# --- search ------------------------------------------------------------------------------


@main.command()
@click.argument("query")
@click.option("--member", default="", metavar="MEMBER", help="Only this member (e.g. GE).")
@click.option("--page-size", type=click.IntRange(min=0, max=100), default=0,
              help="At most this many results (default 20).")
@click.option("--page-token", default="", help="Continue from a previous page.")
@as_of_options
@with_settings()
@handle_errors
def search(
    settings: Settings, query: str, member: str, page_size: int, page_token: str, as_of: datetime | None,
    published: bool,
) -> None:
    """Find authorities by name or place, in any script (Batumi finds ბათუმი)."""
    reading = _reading(as_of, published)
    with settings.client() as client:
        response, verification = client.search(query, member.upper(), page_size, page_token, as_of=as_of,
                                               reading=reading)
    if settings.fmt == "json":
        _print_json(_document(response, verification, client))
        return
    s = Screen(_console())
    vocab = _Vocab.of(client.federation)
    _as_of_line(s, response, as_of is not None)
    if response.authorities:
        s.heading(f"Authorities matching {query!r}")
        for i, a in enumerate(response.authorities, 1):
            english = _english(a.display_names) or a.name
            s.say((english, "bold"), lead=f"{i}. ", hang=3)
            local = _local(a.display_names)
            if local and local != english:
                s.say(local, indent=3)
            s.say(Whole(a.name), indent=3)
            _period(s, a, indent=3)
            kind = vocab.authority_kinds.get(a.kind, a.kind)
            s.say(*([f"{kind}; "] if kind else []), *(_address(a.address) or ["address not stated"]),
                  indent=3, hang=2)
            for ch in a.channels:
                s.say(*_channel_titled(ch, vocab), indent=3, hang=4)
            if a.HasField("urgent_contact"):
                s.field("urgent", *_urgent(a.urgent_contact), indent=3, hang=4)
            for key in a.transmission_keys:
                _transmission_key(s, key, indent=3)
            if a.website:
                s.field("website", Whole(a.website), indent=3)
            if a.parent:
                s.field("part of", Whole(a.parent), indent=3)
    else:
        s.say(f"No authority matches {query!r}.")
    if response.next_page_token:
        s.say("more: --page-token ", Whole(response.next_page_token))
    s.blank()
    _print_session(s, client)
    _print_verification(s, verification)


# --- members -----------------------------------------------------------------------------


@main.command()
@with_settings()
@handle_errors
def members(settings: Settings) -> None:
    """The federation's members and how fresh this node's copy of their data is."""
    with settings.client() as client:
        response, verification = client.members()
    if settings.fmt == "json":
        _print_json(_document(response, verification, client))
        return
    s = Screen(_console())
    verified = {m.member: m for m in verification.members} if verification else {}
    s.heading(f"Federation {response.federation_id!r} version {response.federation_version}")
    now = utcnow()
    for m in response.members:
        status = verified.get(m.code)
        if status is not None:
            fresh = f"checkpoint {status.checkpoint_size}, {_age(status.age)} old"
            stale = status.stale
        elif m.HasField("provenance"):  # --no-verify: the node's word, recomputed locally
            p = m.provenance
            age = max(now - from_timestamp(p.checkpoint_issue_time), timedelta(0))
            fresh = f"checkpoint {p.checkpoint_size}, {_age(age)} old"
            stale = now > from_timestamp(p.checkpoint_expire_time)
        else:
            fresh, stale = "no data on this node", False
        withheld = f" ({m.withheld_contact_count} withheld)" if m.withheld_contact_count else ""
        s.say((f"{m.code} ", "bold"), Whole(m.display_name, "bold"), " (", Whole(m.name), ")", hang=4)
        if not m.log_size and not m.HasField("provenance"):
            s.say("no data on this node", indent=4)
            continue
        s.say(f"authorities {m.authority_count}, contact points {m.contact_count}{withheld}, "
              f"rules {m.rule_count}, treaties {m.treaty_count}", indent=4, hang=2)
        s.say(f"log {m.log_size} entries; {fresh}, ",
              ("STALE: the checkpoint has expired", "bold red") if stale else "not stale", indent=4, hang=2)
        for endpoint in m.endpoints:
            s.field("endpoint", Whole(endpoint), indent=4)
    if response.next_page_token:
        s.say("(more members on the node than shown)")
    s.blank()
    _print_session(s, client)
    _print_verification(s, verification)


# --- the offline copy --------------------------------------------------------------------


def _pinned_envelope() -> bytes:
    """The pinned document's exact bytes (the copy's chain must pass through them)."""
    federation = load_pinned()
    if federation is None:
        raise NotTrusted(NOT_TRUSTED_HINT.replace(" or pass --no-verify", ""))
    return federation.envelope


def _offline_client(settings: Settings) -> OfflineClient:
    if not settings.verify:
        _fail("--offline answers are always verified: drop --no-verify", EXIT_USAGE)
    federation = load_pinned()
    if federation is None:
        raise NotTrusted(NOT_TRUSTED_HINT.replace(" or pass --no-verify", ""))
    return OfflineClient(
        mirror_path(), federation.envelope, federation=federation, token=settings.token(), timeout=settings.timeout,
    )


def _copy_age(client: OfflineClient) -> str:
    last = client.offline.last_pull
    if last is None:
        return "Offline copy, never brought up to date (the last `counterpart mirror` failed)"
    age = max(utcnow() - last, timedelta(0))
    return f"Offline copy of {last.astimezone(UTC):%Y-%m-%d %H:%M} UTC ({_age(age)} old)"


def _print_offline(s: Screen, client: OfflineClient) -> None:
    """"Offline copy of 2026-11-30 21:10 UTC (3 h old); expired checkpoints: AM, AZ"."""
    expired = client.offline.expired
    s.say(f"{_copy_age(client)}; ",
          (f"expired checkpoints: {', '.join(expired)}", "bold red") if expired else "no checkpoint has expired")
    if client.caller and client.caller != "anonymous":
        s.say(f"signed in as {client.caller}")
    else:
        s.say("not signed in (members-only contacts show to signed-in users only)")


def _offline_json(client: OfflineClient) -> dict[str, Any]:
    last = client.offline.last_pull
    return {
        "file": str(client.offline.path),
        "copy_time": _iso(last) if last else None,
        "age_seconds": int((utcnow() - last).total_seconds()) if last else None,
        "expired_checkpoints": client.offline.expired,
    }


@main.command()
@click.option("--file", "file", type=click.Path(path_type=Path, dir_okay=False), default=None,
              help="The copy (default: $COUNTERPART_MIRROR, else mirror.db in the client's directory).")
@click.option("--verify", "check", is_flag=True,
              help="Instead of pulling: check every entry, signature and root of the copy.")
@click.option("--export", "export_to", type=click.Path(path_type=Path, dir_okay=False), default=None,
              metavar="FILE", help="Instead of pulling: write the copy to FILE, one consistent file.")
@click.option("--import", "import_from", type=click.Path(path_type=Path, dir_okay=False), default=None,
              metavar="FILE", help="Instead of pulling: replace the copy with FILE once it is fully checked.")
@click.option("--federation-fingerprint", default=None, metavar="HEX",
              help="With --import and no pinned document: the fingerprint `--export` printed; the "
                   "document it names is pinned.")
@with_settings(exclude=["offline"])
@handle_errors
def mirror(
    settings: Settings, file: Path | None, check: bool, export_to: Path | None, import_from: Path | None,
    federation_fingerprint: str | None,
) -> None:
    """Pull a verified copy of the whole federation from --server into one local file, for
    `counterpart --offline …` without network. Run it again to bring the copy forward: only
    new entries travel, each member's checked to extend what the copy holds.

    Anonymous, members-only contacts arrive withheld (the copy verifies without them);
    signed in, they arrive whole, and the file (readable by you only) holds them."""
    modes = [m for m in (check, export_to, import_from) if m]
    if len(modes) > 1:
        _fail("give at most one of --verify, --export, --import", EXIT_USAGE)
    if federation_fingerprint and import_from is None:
        _fail("--federation-fingerprint goes with --import", EXIT_USAGE)
    node = node_mirror()
    path = mirror_path(file)
    s = Screen(_console())
    try:
        if check:
            _mirror_verify(settings, s, node, path)
        elif export_to is not None:
            done = node.export(path, export_to)
            if settings.fmt == "json":
                _print_json({"file": str(done.path), "sha256": done.sha256, "bytes": done.bytes,
                             "federation_fingerprint": done.federation_fingerprint})
                return
            s.say("exported the offline copy to ", Whole(str(done.path)), f" ({done.bytes} bytes)")
            s.field("sha256", Whole(done.sha256))
            s.field("federation fingerprint", Whole(done.federation_fingerprint))
            s.say("On the other machine: counterpart mirror --import FILE, with the federation "
                  "document pinned or --federation-fingerprint and the value above.")
        elif import_from is not None:
            _mirror_import(settings, s, node, path, import_from, federation_fingerprint)
        else:
            _mirror_pull(settings, s, node, path)
    except CounterpartError as e:
        raise copy_error(e) from None


def _mirror_pull(settings: Settings, s: Screen, node: Any, path: Path) -> None:
    federation = load_pinned()
    if federation is None:
        raise NotTrusted(NOT_TRUSTED_HINT.replace(" or pass --no-verify", ""))
    token = settings.token()
    limit = int(federation.limits.max_message_bytes)
    channel, _, _ = connect(
        settings.server, federation, tls=settings.tls, server_member=settings.server_member,
        options=[("grpc.max_receive_message_length", limit), ("grpc.max_send_message_length", limit)],
    )
    with channel:
        report = node.pull(path, token_channel(channel, token), settings.server, federation.envelope,
                           signed_in=bool(token), deadline=max(settings.timeout, 30.0))
    if settings.fmt == "json":
        _print_json({
            "file": str(path), "server": settings.server, "created": report.created, "ok": report.ok,
            "pulled": report.pulled, "filled": report.filled, "log_sizes": report.sizes,
            "withheld": report.withheld, "federation_versions": report.federation_versions,
            "rejected": [{"member": m, "reason": r, "message": t} for m, r, t in report.rejected],
            "equivocations": report.equivocations, "error": report.error or None,
        })
    else:
        what = "new copy" if report.created else "brought forward"
        s.say(f"{what}: ", Whole(str(path)), " from ", Whole(settings.server),
              " (signed in)" if token else " (anonymous)")
        for member in sorted(set(report.sizes) | set(report.pulled)):
            got = report.pulled.get(member, 0)
            parts = [f"pulled {got} entr{'y' if got == 1 else 'ies'}" if got else "nothing new",
                     f", log {report.sizes.get(member, 0)}"]
            if report.filled.get(member):
                parts.append(f", {report.filled[member]} members-only filled in")
            if report.withheld.get(member):
                parts.append(f", {report.withheld[member]} withheld")
            s.say((f"{member} ", "bold"), *parts, indent=2, hang=4)
        if report.withheld:
            s.say("withheld: members-only entries, held as their hash (the copy verifies without them); "
                  "mirror signed in to hold them")
        if report.federation_versions:
            s.say(f"federation document versions accepted: {', '.join(map(str, report.federation_versions))}")
    if report.error:
        raise ClientError(f"{settings.server} could not be mirrored: {report.error}; the copy is as it was")
    if report.rejected or report.equivocations:
        why = "; ".join(f"{m or 'federation'}: {t} [{r}]" for m, r, t in report.rejected)
        if report.equivocations:
            why += ("; " if why else "") + f"equivocation by {', '.join(report.equivocations)}"
        raise VerificationFailed(
            f"{settings.server} served what does not verify against the copy ({why}); nothing of it was "
            "stored: those members' copies are as they were"
        )


def _mirror_verify(settings: Settings, s: Screen, node: Any, path: Path) -> None:
    checked, problems, state = node.full_check(path, _pinned_envelope())
    if settings.fmt == "json":
        _print_json({
            "file": str(path), "entries_checked": checked, "ok": not problems, "expired_checkpoints": state.expired,
            "problems": [{"member": p.member, "seq": p.seq, "reason": p.reason, "message": p.message} for p in problems],
        })
    else:
        s.say(f"checked {checked} entries of {len(state.members)} member(s) in ", Whole(str(path)))
        for p in problems:
            s.say(f"{p.member} entry {p.seq}: " if p.seq else f"{p.member or 'copy'}: ", p.message, f" [{p.reason}]",
                  indent=2, hang=4)
        if state.expired:
            s.say(f"expired checkpoints: {', '.join(state.expired)}")
    if problems:
        raise VerificationFailed(f"the offline copy {path} failed the full check: {len(problems)} problem(s)")
    if settings.fmt != "json":
        s.say(("verified:", "green"), " every entry's signature and every member's root")


def _mirror_import(
    settings: Settings, s: Screen, node: Any, path: Path, source: Path, expected: str | None,
) -> None:
    federation = load_pinned()

    def pin_document(envelope: bytes) -> None:
        with tempfile.TemporaryDirectory() as tmp:
            doc = Path(tmp) / "federation.json"
            fed.write_file(doc, envelope)
            pin(doc)

    done = node.import_copy(source, path, pinned=federation.envelope if federation else None,
                            expected_fingerprint=expected, pin=pin_document)
    if settings.fmt == "json":
        _print_json({"file": str(path), "entries_checked": done.checked, "pinned": done.pin is not None,
                     "expired_checkpoints": done.state.expired})
        return
    s.say(f"imported {source} after checking {done.checked} entries: ", Whole(str(path)))
    if done.pin is not None:
        s.say("pinned its federation document (fingerprint ", Whole(done.state.federation_fingerprint), ")")
    s.say("answer from it with: counterpart --offline find …")


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
    answer.pop("absences", None)  # proofs too: what they proved is in "verification"
    _drop_key(answer, "signed_checkpoint")
    return {
        "answer": answer, "verification": _verification_json(verification),
        "session": {
            "server": client.target, "tls": client.tls, "server_member": client.server_member,
            "signed_in": client.signed_in, "caller": client.caller or None,
            **({"offline": _offline_json(client)} if isinstance(client, OfflineClient) else {}),
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
        "latest_proven": verification.latest_proven,
        "warnings": list(verification.warnings),
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


def _print_session(s: Screen, client: DirectoryClient, hint: bool = True) -> None:
    """Who the node took the caller for, and over which transport (or, offline, how old
    the copy is and whose checkpoints have expired)."""
    if isinstance(client, OfflineClient):
        _print_offline(s, client)
        return
    node = f"{client.server_member}'s node" if client.server_member else "a member node" if client.tls else "node"
    transport = f"TLS, {node} authenticated" if client.tls else "plaintext (loopback)"
    if client.caller and client.caller != "anonymous":
        s.say(f"signed in as {client.caller}; {transport}")
    else:
        extra = " (log in to see members-only contacts)" if hint and not client.signed_in else ""
        s.say(f"not signed in{extra}; {transport}")


def _print_verification(s: Screen, verification: Verification | None) -> None:
    """The last line of every answer: what was checked against whose signatures."""
    if verification is None:
        s.say(("NOT VERIFIED (--no-verify):", "bold red"),
              (" signatures and proofs were not checked; do not rely on this answer", "red"))
        return
    if not verification.members:
        s.say("verified: nothing signed in this answer")
        return
    parts: list[Part] = []
    for i, m in enumerate(verification.members):
        if i:
            parts.append(", ")
        text = f"{m.member} (checkpoint {m.checkpoint_size}, {_age(m.age)} old)"
        parts.append(Whole(f"{text}: STALE, the checkpoint has expired", "bold red") if m.stale else Whole(text))
    n = verification.records_checked
    style = "bold red" if verification.stale else "green"
    what = f"{n} record{'s' if n != 1 else ''} signed by" if n else "checkpoints signed by"
    if verification.latest_proven and not verification.warnings:
        parts.append("; latest: proven")
    s.say(("verified:", style), f" {what} ", *parts)
    for warning in verification.warnings:
        s.say(("latest:", "yellow"), f" {warning}")


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
                   "PROCEEDING_STAGE_", "POSSIBILITY_", "TREATY_STATUS_", "VISIBILITY_", "PLACE_KIND_"):
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
