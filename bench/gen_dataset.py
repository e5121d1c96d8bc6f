"""Generate a synthetic federation into a node data directory, for benchmarks.

The result is the state a node holds after syncing a whole federation: every member's
log (authorities, contacts, rules, treaties) signed with that member's own key, a
checkpoint per member, the derived lookup indexes, the federation document naming every
member's key (signed by a generated root key) and a ``node.toml``, so that

    counterpart-node serve --data-dir DIR --no-heartbeat

serves it. Records are built as protobuf messages, checked with
``records.validate_record`` and ``records.check_record_set`` (so the data is valid data),
signed with ``log.build_entry`` / ``log.build_checkpoint`` and stored with one
``Store.append`` per member -- the code path a node's sync takes.

Per member (defaults: 200 members x 500 authorities):
  - 4 national authorities (central authority, prosecution office, Interpol NCB, FIU);
  - one regional prosecution office per subdivision ``<CODE>-S01``..``<CODE>-Snn``;
  - the rest: municipal courts and prosecution offices in pairs, each pair covering two
    municipalities whose names are given in Latin and Cyrillic script;
  - 2 + one per subdivision contact points, 10 procedural rules, 10 treaty records.

With ``--jobs N`` > 1, N worker processes each build, validate, sign and
``Store.append`` members into a shard SQLite file of their own (SQLite has one writer,
and the append -- ORM work -- dominates); the shards' rows are then copied into the
node's database with plain SQL (autoincrement ids renumbered, nothing else changed).
``--jobs 1`` appends everything through one Store. ``bench-manifest.json`` in the data
directory tells ``bench_find.py`` which members, subdivisions and municipality names exist.

Usage: python bench/gen_dataset.py --out /tmp/cp-bench [--members 200] [--authorities 500]
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import random
import shutil
import sqlite3
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, cast

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from sqlalchemy import Table

from counterpart.v1 import records_pb2 as rp
from counterpart_core import federation as fed
from counterpart_core import log, merkle, signing
from counterpart_core.names import parse_record_name
from counterpart_core.records import Record, SourcedRecord, check_record_set, validate_record
from counterpart_core.vocab import Vocabulary, default_vocabularies
from directory_server.config import CONFIG_NAME, NodeConfig
from directory_server.node import Node
from directory_server.storage.models import DERIVED_TABLES, CheckpointRow, EntryRow
from directory_server.storage.store import Store, sqlite_url

MANIFEST_NAME = "bench-manifest.json"
FEDERATION_ID = "bench"
VALIDITY = timedelta(days=365)  # checkpoints and document stay fresh while the dataset is reused

# Request types that every member publishes a rule for (the benchmark asks about these).
RULE_REQUEST_TYPES = [
    "mla.general",
    "mla.documents",
    "mla.bank-information",
    "mla.search-and-seizure",
    "mla.hearing.witness",
    "mla.hearing.suspect",
    "mla.service-of-documents",
    "extradition",
    "extradition.provisional-arrest",
    "transfer-of-sentenced-persons",
]
# What local offices execute.
LOCAL_REQUEST_TYPES = [
    "mla.general",
    "mla.documents",
    "mla.search-and-seizure",
    "mla.hearing.witness",
    "mla.hearing.suspect",
    "mla.service-of-documents",
]
COURT_REQUEST_TYPES = ["mla.hearing.witness", "mla.hearing.suspect", "mla.service-of-documents"]
# Multilateral instruments (bilateral ones name their parties); each member holds 10 of them.
INSTRUMENTS = [
    "untoc",
    "uncac",
    "un-1988-drugs",
    "coe-ets-030",
    "coe-ets-099",
    "coe-ets-182",
    "coe-ets-024",
    "coe-ets-112",
    "coe-ets-185",
    "cis-minsk-1993",
    "cis-chisinau-2002",
    "oas-1992-mla",
]
# Latin / Cyrillic syllable pairs: a municipality's name in both scripts, no transliteration
# library needed (and fold() turns both into the same search key, as with Batumi / Батуми).
SYLLABLES = [
    ("ka", "ка"),
    ("ri", "ри"),
    ("to", "то"),
    ("mo", "мо"),
    ("na", "на"),
    ("ve", "ве"),
    ("lu", "лу"),
    ("di", "ди"),
    ("sa", "са"),
    ("po", "по"),
    ("re", "ре"),
    ("ni", "ни"),
    ("go", "го"),
    ("ba", "ба"),
    ("tu", "ту"),
    ("mi", "ми"),
    ("le", "ле"),
    ("zo", "зо"),
    ("da", "да"),
    ("bu", "бу"),
]
NAME_SPACE = len(SYLLABLES) ** 3
ROLE = rp.CompetenceRole


def member_codes(n: int) -> list[str]:
    """Two-letter codes AA, AB, ... (ISO 3166-2 subdivision codes need a 2-letter prefix)."""
    if not 1 <= n <= 26 * 26:
        raise SystemExit(f"--members must be between 1 and {26 * 26}")
    letters = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"
    return [letters[i // 26] + letters[i % 26] for i in range(n)]


def subdivision_count(authorities: int) -> int:
    return max(1, min(99, (authorities - 4) // 20))


def municipality_name(member_index: int, i: int) -> tuple[str, str]:
    """The i-th municipality of a member as (Latin, Cyrillic); unique within the member."""
    n = (i * 2753 + member_index * 7919) % NAME_SPACE  # 2753 is coprime with 8000
    parts = [SYLLABLES[(n // len(SYLLABLES) ** k) % len(SYLLABLES)] for k in range(3)]
    latin = "".join(p[0] for p in parts)
    cyrillic = "".join(p[1] for p in parts)
    return latin.capitalize(), cyrillic.capitalize()


def _t(language: str, text: str) -> rp.LocalizedText:
    return rp.LocalizedText(language=language, text=text)


@dataclass(frozen=True)
class MemberSpec:
    index: int
    code: str
    authorities: int
    private_key: bytes  # raw Ed25519 private key (picklable)
    now: datetime


@dataclass
class MemberResult:
    code: str
    entry_count: int
    municipalities: list[tuple[str, str]]
    subdivisions: int
    build_seconds: float
    sign_seconds: float
    append_seconds: float
    # The signed log, when the caller appends it (empty when a worker appended it to its shard).
    entries: list[log.LogEntry]
    checkpoint: log.LogCheckpoint | None


def build_records(
    spec: MemberSpec, vocab: Vocabulary
) -> tuple[list[SourcedRecord], list[tuple[str, str]]]:
    """Every record of one member, validated; and its municipality names."""
    code = spec.code
    rnd = random.Random(spec.index)
    base = f"members/{code}"
    n_sub = subdivision_count(spec.authorities)
    subdivisions = [f"{code}-S{i:02d}" for i in range(1, n_sub + 1)]
    domain = f"{code.lower()}.example"
    tz = "Europe/Berlin"
    lang = "ru"  # the Cyrillic-script language of the synthetic members
    review = "2026-11-22"
    records: list[tuple[str, str, Record]] = []  # (collection, id, record)

    def authority(
        rid: str,
        en: str,
        local: str,
        kind: str,
        parent: str,
        coverage: rp.Coverage,
        competences: list[rp.Competence],
        subdivision: str,
        locality: str,
        **extra: Any,
    ) -> None:
        a = rp.Authority(
            name=f"{base}/authorities/{rid}",
            display_names=[_t("en", en), _t(lang, local)],
            kind=kind,
            parent=f"{base}/authorities/{parent}" if parent else "",
            address=rp.PostalAddress(
                lines=[en],
                locality=locality,
                subdivision=subdivision,
                country=code,
            ),
            coverage=coverage,
            competences=competences,
            languages=[lang, "en"] if rnd.random() < 0.3 else [lang],
            channels=[rp.Channel(kind="email", address=f"{rid}@{domain}")],
            office_hours=rp.OfficeHours(time_zone=tz, opening_hours="Mo-Fr 09:00-18:00"),
            website=f"https://{domain}/{rid}",
            review_date=review,
            **extra,
        )
        records.append(("authorities", rid, a))

    capital_sub = subdivisions[0]
    capital = municipality_name(spec.index, 0)[0]
    national = rp.Coverage(national=True)
    urgent = rp.UrgentContact(
        description="Duty desk (synthetic)",
        email=f"urgent@{domain}",
        phone=f"+99{spec.index % 10}5550{spec.index:04d}",
        always_available=True,
    )
    authority(
        "moj",
        f"Ministry of Justice of {code}",
        f"Министерство юстиции {code}",
        "central-authority",
        "",
        national,
        [
            rp.Competence(
                request_types=RULE_REQUEST_TYPES,
                roles=[ROLE.COMPETENCE_ROLE_RECEIVES, ROLE.COMPETENCE_ROLE_ISSUES],
            )
        ],
        capital_sub,
        capital,
        urgent_contact=urgent,
        notes=[_t("en", "Central authority for mutual legal assistance (synthetic record).")],
    )
    authority(
        "pgo",
        f"Prosecutor General of {code}",
        f"Генеральная прокуратура {code}",
        "prosecution-office",
        "",
        national,
        [
            rp.Competence(
                request_types=LOCAL_REQUEST_TYPES + ["extradition"],
                roles=[ROLE.COMPETENCE_ROLE_EXECUTES, ROLE.COMPETENCE_ROLE_ISSUES],
            )
        ],
        capital_sub,
        capital,
        notes=[
            _t(
                "en",
                "Uncertain: the split of tasks with the ministry is not confirmed (synthetic).",
            )
        ]
        if spec.index % 3 == 0
        else [],
    )
    authority(
        "interpol-ncb",
        f"Interpol NCB {capital}",
        f"НЦБ Интерпола {capital}",
        "interpol-ncb",
        "",
        national,
        [
            rp.Competence(
                request_types=["extradition.provisional-arrest"],
                roles=[ROLE.COMPETENCE_ROLE_RECEIVES],
            )
        ],
        capital_sub,
        capital,
        urgent_contact=urgent,
    )
    authority(
        "fiu",
        f"Financial Intelligence Unit of {code}",
        f"Подразделение финансовой разведки {code}",
        "financial-intelligence-unit",
        "",
        national,
        [
            rp.Competence(
                request_types=["mla.bank-information"],
                roles=[ROLE.COMPETENCE_ROLE_EXECUTES],
                offence_categories=["money-laundering", "corruption"],
            )
        ],
        capital_sub,
        capital,
    )
    remaining = spec.authorities - 4
    for i, sub in enumerate(subdivisions[: max(0, remaining)], start=1):
        rid = f"region-s{i:02d}"
        authority(
            rid,
            f"Regional Prosecutor's Office {sub}",
            f"Областная прокуратура {sub}",
            "prosecution-office",
            "pgo",
            rp.Coverage(subdivisions=[sub]),
            [
                rp.Competence(
                    request_types=LOCAL_REQUEST_TYPES, roles=[ROLE.COMPETENCE_ROLE_EXECUTES]
                )
            ],
            sub,
            municipality_name(spec.index, i)[0],
        )
    remaining -= len(subdivisions)
    municipalities: list[tuple[str, str]] = []
    pair = 0
    while remaining > 0:
        sub_index = pair % len(subdivisions)
        sub = subdivisions[sub_index]
        names = [municipality_name(spec.index, 2 * pair + k) for k in (0, 1)]
        municipalities.extend(names)
        coverage = rp.Coverage(
            municipalities=[
                rp.Municipality(names=[_t("en", lat), _t(lang, cyr)], subdivision=sub)
                for lat, cyr in names
            ]
        )
        town_lat, town_cyr = names[0]
        parent = (
            f"region-s{sub_index + 1:02d}" if len(subdivisions) <= spec.authorities - 4 else "pgo"
        )
        types = rnd.sample(LOCAL_REQUEST_TYPES, rnd.randint(3, 5))
        authority(
            f"po-{pair:04d}",
            f"District Prosecutor's Office of {town_lat}",
            f"Районная прокуратура {town_cyr}",
            "prosecution-office",
            parent,
            coverage,
            [rp.Competence(request_types=types, roles=[ROLE.COMPETENCE_ROLE_EXECUTES])],
            sub,
            town_lat,
        )
        remaining -= 1
        if remaining > 0:
            authority(
                f"court-{pair:04d}",
                f"District Court of {town_lat}",
                f"Районный суд {town_cyr}",
                "court",
                "",
                coverage,
                [
                    rp.Competence(
                        request_types=COURT_REQUEST_TYPES,
                        roles=[ROLE.COMPETENCE_ROLE_EXECUTES],
                        stages=[rp.PROCEEDING_STAGE_TRIAL],
                    )
                ],
                sub,
                town_lat,
            )
            remaining -= 1
        pair += 1

    # Contacts: the central authority's desk, its 24/7 point (members only), one per region.
    contacts = [
        (
            "ca-desk",
            "Mutual legal assistance desk",
            "Отдел правовой помощи",
            "moj",
            "central-authority-desk",
            rp.VISIBILITY_PUBLIC,
        ),
        (
            "duty-24-7",
            "24/7 point of contact",
            "Круглосуточный контакт",
            "pgo",
            "24-7-point",
            rp.VISIBILITY_MEMBERS,
        ),
    ] + [
        (
            f"region-s{i:02d}-desk",
            f"International desk {sub}",
            f"Международный отдел {sub}",
            f"region-s{i:02d}",
            "network-contact-point",
            rp.VISIBILITY_PUBLIC,
        )
        for i, sub in enumerate(subdivisions[: max(0, spec.authorities - 4)], start=1)
    ]
    for rid, en, local, auth, role, visibility in contacts:
        records.append(
            (
                "contacts",
                rid,
                rp.Contact(
                    name=f"{base}/contacts/{rid}",
                    display_names=[_t("en", en), _t(lang, local)],
                    authority=f"{base}/authorities/{auth}",
                    role=role,
                    languages=[lang, "en"],
                    email=f"{rid}@{domain}",
                    availability="Mo-Fr 09:00-18:00",
                    visibility=visibility,
                    review_date=review,
                ),
            )
        )

    # Treaties: 10 of the 12 multilateral instruments, one of them only signed.
    held = rnd.sample(INSTRUMENTS, 10)
    in_force = set(held[1:])
    for instrument in held:
        records.append(
            (
                "treaties",
                instrument,
                rp.Treaty(
                    name=f"{base}/treaties/{instrument}",
                    instrument=instrument,
                    status=rp.TREATY_STATUS_IN_FORCE
                    if instrument in in_force
                    else rp.TREATY_STATUS_SIGNED,
                    in_force_date=f"{2000 + rnd.randint(0, 24)}-{rnd.randint(1, 12):02d}",
                    declared_languages=[lang, "en"],
                    central_authority=f"{base}/authorities/moj",
                    notes=[_t("en", "Synthetic treaty participation.")],
                ),
            )
        )

    # Rules: one per request type, naming the frameworks in force that cover it.
    for rt in RULE_REQUEST_TYPES:
        frameworks = sorted(c for c in in_force if rt in vocab.instruments[c].request_types)
        rule = rp.Rule(
            name=f"{base}/rules/{rt}",
            request_type=rt,
            possible=rp.POSSIBILITY_YES if frameworks else rp.POSSIBILITY_PARTLY,
            legal_frameworks=frameworks,
            receiving_authority=f"{base}/authorities/moj",
            routes=[rp.TRANSMISSION_ROUTE_DIRECT, rp.TRANSMISSION_ROUTE_CENTRAL_AUTHORITY]
            if rt.startswith("mla.hearing")
            else [rp.TRANSMISSION_ROUTE_CENTRAL_AUTHORITY],
            interpol_for_urgent=rt.startswith("extradition"),
            languages=[lang, "en"] if rnd.random() < 0.5 else [lang],
            informal_consultation_recommended=True,
            consultation_contact=f"{base}/contacts/ca-desk",
            form_and_documents=[_t("en", "A written request with a translation (synthetic).")],
            notes=[_t("en", f"Synthetic rule for {rt}.")],
            review_date=review,
        )
        if rt.startswith("mla.hearing"):
            rule.executing_authority = f"{base}/authorities/pgo"
        if rt.startswith("extradition"):
            rule.extradition.extradites_nationals = rp.POSSIBILITY_NO
            rule.extradition.provisional_arrest_days = 40
        records.append(("rules", rt, rule))

    sourced: list[SourcedRecord] = []
    for collection, rid, record in records:
        name = parse_record_name(f"{base}/{collection}/{rid}", collection)
        validate_record(record, name, vocab, file="gen_dataset")
        sourced.append(SourcedRecord(str(name), record, "gen_dataset"))
    check_record_set(sourced)
    return sourced, municipalities


def build_member(spec: MemberSpec) -> MemberResult:
    """Build, validate and sign one member's log; append it to this worker's shard, if any."""
    vocab = _worker_vocab()
    t0 = time.perf_counter()
    records, municipalities = build_records(spec, vocab)
    t1 = time.perf_counter()
    key = signing.SigningKey(Ed25519PrivateKey.from_private_bytes(spec.private_key))
    entries = [
        log.build_entry(spec.code, seq, r.name, r.record, spec.now, key)
        for seq, r in enumerate(records, start=1)
    ]
    root = merkle.root_hash([e.leaf_hash for e in entries])
    checkpoint = log.build_checkpoint(spec.code, len(entries), root, spec.now, key, VALIDITY)
    t2 = time.perf_counter()
    result = MemberResult(
        spec.code,
        len(entries),
        municipalities,
        subdivision_count(spec.authorities),
        t1 - t0,
        t2 - t1,
        0.0,
        entries,
        checkpoint,
    )
    if _SHARD is not None:
        _SHARD.append(spec.code, 0, entries, checkpoint)
        result.append_seconds = time.perf_counter() - t2
        result.entries, result.checkpoint = [], None
    return result


_VOCAB: Vocabulary | None = None
_SHARD: Store | None = None  # per worker process: a SQLite file merged into the node's at the end


def _worker_vocab() -> Vocabulary:
    global _VOCAB
    if _VOCAB is None:
        _VOCAB = Vocabulary(default_vocabularies())
    return _VOCAB


def _init_worker(shard_dir: str) -> None:
    global _SHARD
    _SHARD = Store(
        sqlite_url(Path(shard_dir)).replace("node.sqlite3", f"shard-{os.getpid()}.sqlite3")
    )


def _raw_private(key: signing.SigningKey) -> bytes:
    return key.private.private_bytes(
        serialization.Encoding.Raw, serialization.PrivateFormat.Raw, serialization.NoEncryption()
    )


def _merge_shards(db: Path, shard_dir: Path) -> None:
    """Copy every row of the workers' shard databases into the node's database."""
    tables = [cast(Table, m.__table__) for m in (EntryRow, CheckpointRow, *DERIVED_TABLES)]
    conn = sqlite3.connect(db, isolation_level=None)
    try:
        conn.execute("PRAGMA journal_mode=WAL")
        for shard in sorted(shard_dir.glob("shard-*.sqlite3")):
            conn.execute("ATTACH DATABASE ? AS shard", (str(shard),))
            conn.execute("BEGIN")
            for table in tables:
                # autoincrement ids are renumbered; every other column is copied as is
                cols = ", ".join(
                    f'"{c.name}"'
                    for c in table.columns
                    if not (c.primary_key and c.autoincrement is True)
                )
                t = table.name
                conn.execute(f'INSERT INTO main."{t}" ({cols}) SELECT {cols} FROM shard."{t}"')
            conn.execute("COMMIT")
            conn.execute("DETACH DATABASE shard")
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    finally:
        conn.close()
    shutil.rmtree(shard_dir)


def _results(specs: list[MemberSpec], jobs: int, shard_dir: Path) -> Iterator[MemberResult]:
    if jobs <= 1:
        yield from map(build_member, specs)
        return
    shard_dir.mkdir()
    ctx = multiprocessing.get_context("spawn")
    with ctx.Pool(processes=jobs, initializer=_init_worker, initargs=(str(shard_dir),)) as pool:
        yield from pool.imap_unordered(build_member, specs, chunksize=1)


def generate(out: Path, members: int, authorities: int, jobs: int, force: bool) -> dict[str, Any]:
    """Write the dataset into ``out``; return the manifest (also written to the directory)."""
    if authorities < 4:
        raise SystemExit("--authorities must be at least 4 (the national authorities)")
    if out.exists() and any(out.iterdir()):
        if not force:
            raise SystemExit(f"{out} is not empty; pass --force to replace it")
        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    now = datetime.now(UTC).replace(microsecond=0)
    codes = member_codes(members)
    keys = {c: signing.SigningKey.generate() for c in codes}
    root_key = signing.SigningKey.generate()

    doc = fed.new_document(FEDERATION_ID, [root_key.public_bytes], 1, now, VALIDITY)
    for c in codes:
        # no endpoints: the node serving this dataset has no peers, so a lookup benchmark's
        # server CPU is the lookups' own (with 199 endpoints that do not resolve, the sync
        # engine's retries added 0-84 ms of CPU per second, bench/README.md)
        fed.add_member(doc, c, f"Synthetic member {c}", [keys[c].public_bytes], [])
    envelope = signing.sign_envelope(
        doc.SerializeToString(deterministic=True), signing.FEDERATION_TYPE, [root_key]
    )
    config = NodeConfig(data_dir=out, member=codes[0], listen="127.0.0.1:7700")
    (out / CONFIG_NAME).write_text(config.to_toml(), encoding="utf-8")
    store = Store(sqlite_url(out))
    node = Node(config, store=store, clock=lambda: now)
    node.install_federation(envelope)

    specs = [MemberSpec(i, c, authorities, _raw_private(keys[c]), now) for i, c in enumerate(codes)]
    entries_total = 0
    build_s = sign_s = append_s = 0.0
    manifest_members: dict[str, Any] = {}
    try:
        for n, res in enumerate(_results(specs, jobs, out / "shards"), start=1):
            if res.checkpoint is not None:
                t0 = time.perf_counter()
                store.append(res.code, 0, res.entries, res.checkpoint)
                res.append_seconds = time.perf_counter() - t0
            append_s += res.append_seconds
            build_s += res.build_seconds
            sign_s += res.sign_seconds
            entries_total += res.entry_count
            manifest_members[res.code] = {
                "entries": res.entry_count,
                "subdivisions": res.subdivisions,
                "municipalities": res.municipalities,
            }
            if n % 20 == 0 or n == len(specs):
                print(
                    f"  {n}/{len(specs)} members, {entries_total} entries, "
                    f"{time.perf_counter() - started:.1f} s",
                    flush=True,
                )
    finally:
        node.close()
    if jobs > 1:
        t0 = time.perf_counter()
        _merge_shards(out / "node.sqlite3", out / "shards")
        merge_s = time.perf_counter() - t0
    else:
        merge_s = 0.0
    elapsed = time.perf_counter() - started
    db = out / "node.sqlite3"
    db_bytes = sum(p.stat().st_size for p in out.glob("node.sqlite3*"))
    manifest = {
        "federation_id": FEDERATION_ID,
        "generated_at": now.isoformat(),
        "members": codes,
        "authorities_per_member": authorities,
        "entries": entries_total,
        "rule_request_types": RULE_REQUEST_TYPES,
        "generation_seconds": round(elapsed, 2),
        "build_validate_cpu_seconds": round(build_s, 2),
        "sign_cpu_seconds": round(sign_s, 2),
        "store_append_seconds": round(append_s, 2),
        "shard_merge_seconds": round(merge_s, 2),
        "jobs": jobs,
        "database": str(db),
        "database_bytes": db_bytes,
        "member_data": manifest_members,
    }
    (out / MANIFEST_NAME).write_text(json.dumps(manifest, ensure_ascii=False), encoding="utf-8")
    return manifest


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, required=True, help="node data directory to create")
    p.add_argument("--members", type=int, default=200)
    p.add_argument("--authorities", type=int, default=500, help="authorities per member")
    p.add_argument(
        "--jobs",
        type=int,
        default=os.cpu_count() or 1,
        help="worker processes that build and sign (default: CPU count)",
    )
    p.add_argument("--force", action="store_true", help="replace a non-empty --out")
    a = p.parse_args(argv)
    m = generate(a.out, a.members, a.authorities, a.jobs, a.force)
    print(
        f"generated {len(m['members'])} members x {m['authorities_per_member']} authorities: "
        f"{m['entries']} entries in {m['generation_seconds']:.1f} s "
        f"(build+validate {m['build_validate_cpu_seconds']:.1f} s CPU, "
        f"sign {m['sign_cpu_seconds']:.1f} s CPU, "
        f"Store.append {m['store_append_seconds']:.1f} s, in {m['jobs']} processes; "
        f"shard merge {m['shard_merge_seconds']:.1f} s); "
        f"database {m['database_bytes'] / 2**20:.1f} MiB at {m['database']}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
