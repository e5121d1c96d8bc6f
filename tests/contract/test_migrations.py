"""Alembic owns the schema: the migrations must produce exactly what the models describe."""

from __future__ import annotations

from pathlib import Path

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext

from directory_server.storage.models import Base
from directory_server.storage.store import Store, sqlite_url


def test_migrations_match_the_models(tmp_path: Path) -> None:
    store = Store(sqlite_url(tmp_path))  # runs every migration
    try:
        with store.engine.connect() as conn:
            diff = compare_metadata(MigrationContext.configure(conn), Base.metadata)
        assert diff == [], f"models and migrations differ; add a migration: {diff}"
        with store.engine.connect() as conn:
            assert MigrationContext.configure(conn).get_current_revision() == "0006"
    finally:
        store.close()
