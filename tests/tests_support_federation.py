"""The whole sample federation in one store, as a node holds it once it has synced every
member: each member's records published with that member's own key (``Node.publish``), so
every entry and checkpoint is signed by its origin, and lookups run over all of them."""

from __future__ import annotations

import shutil
from pathlib import Path

from conftest import PASSPHRASE, SAMPLE_DATA, Clock, Federation  # type: ignore[import-not-found, unused-ignore]

from counterpart_core import signing
from directory_server.config import CONFIG_NAME, NodeConfig
from directory_server.lookup import Directory
from directory_server.node import Node
from directory_server.storage.store import Store, sqlite_url

MEMBERS = sorted(p.name for p in SAMPLE_DATA.iterdir() if p.is_dir())


def whole_federation(root: Path, federation: Federation, clock: Clock) -> tuple[Store, Directory, list[Node]]:
    store = Store(sqlite_url(root))
    nodes = []
    document = federation.document(MEMBERS, clock())
    for member in MEMBERS:
        data_dir = root / f"member-{member}"
        data_dir.mkdir()
        config = NodeConfig(data_dir=data_dir, member=member)
        (data_dir / CONFIG_NAME).write_text(config.to_toml(), encoding="utf-8")
        signing.write_key_file(config.key_path, federation.key(member), PASSPHRASE)
        node = Node(config, store=store, clock=clock)
        if not store.federation_chain():
            node.install_federation(document)
        records = root / f"records-{member}"
        shutil.copytree(SAMPLE_DATA / member, records)
        node.publish(records, PASSPHRASE)
        nodes.append(node)
    return store, Directory(store, nodes[0].federation, clock), nodes
