"""The README answers what a newcomer, an operator, a secretariat member and an API user ask
first, and names no distribution that is not ours (`counterpart` on the public index is another
project)."""

from __future__ import annotations

import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
DOCS = [REPO / "README.md", REPO / "deploy" / "README.md", REPO / "packages" / "client" / "README.md"]


def test_no_install_line_names_the_foreign_counterpart_distribution() -> None:
    for doc in DOCS:
        text = doc.read_text(encoding="utf-8")
        assert not re.search(r"pip install ['\"]?counterpart(\[|['\"\s]|$)", text), doc


def test_the_readme_says_what_people_ask_first() -> None:
    text = (REPO / "README.md").read_text(encoding="utf-8")
    for needle, what in [
        ("PATH", "how the programs get on PATH"),
        ("COUNTERPART_HOME", "where the client keeps the pinned document and the token"),
        ("_COUNTERPART_COMPLETE", "shell completion"),
        ("--passphrase-file", "the passphrase sources"),
        ("COUNTERPART_KEY_PASSPHRASE", "the passphrase sources"),
        ("must lead to the same port", "listen versus the document's endpoint"),
        ("unknown place is an error", "what happens on an unknown place"),
        ("counterpart-directory-client", "the client installs alone"),
    ]:
        assert needle in text, what
