"""Migrations produce exactly the model's schema, on SQLite and PostgreSQL."""

from __future__ import annotations

import warnings

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import Engine, inspect

from core.model import Base, schema_filter
from core.storage import migrate


def test_migrations_match_the_model(db_engine: Engine) -> None:
    with db_engine.connect() as conn, warnings.catch_warnings():
        if conn.dialect.name == "sqlite":
            # The bigram indexes are expressions on PostgreSQL only (never created here), and
            # Alembic says it cannot compare expression indexes on SQLite before it filters.
            warnings.filterwarnings(
                "ignore", "autogenerate skipping metadata-specified expression-based index"
            )
        context = MigrationContext.configure(
            conn, opts={"include_object": schema_filter(conn.dialect.name)}
        )
        diff = compare_metadata(context, Base.metadata)
    assert diff == []


def test_migrate_is_idempotent(db_engine: Engine) -> None:
    migrate(db_engine)
    tables = set(inspect(db_engine).get_table_names())
    assert {"envelopes", "documents", "parties", "fields", "audit_events", "contractors"} <= tables


def test_the_migrations_have_one_head() -> None:
    """Branches made side by side are merged before they ship, so `upgrade head` is defined."""
    from alembic.script import ScriptDirectory

    from core.storage import alembic_config, create_database_engine

    script = ScriptDirectory.from_config(alembic_config(create_database_engine("sqlite://")))
    assert len(script.get_heads()) == 1
