"""Migration 0014 finds the contractors that name matching merged before it, reports them and
holds their waiting awards; it never splits anything. On SQLite and on PostgreSQL (a scratch
database of its own, since the run's shared one is already at head)."""

from __future__ import annotations

import datetime as dt
import secrets
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import Engine, create_engine, select, text
from sqlalchemy.orm import Session

from core.model import Award, AwardState, Contractor, ContractorConflict, ContractorIdentity
from core.storage import create_database_engine, migrate
from tests.conftest import PG_ADMIN_URL

NOW = dt.datetime(2025, 10, 1, tzinfo=dt.UTC)


def _award(conn, award_id: str, contractor: str, corp: str | None, draft: str) -> None:  # type: ignore[no-untyped-def]
    conn.execute(
        text(
            "INSERT INTO awards (id, source, award_id, state, title, contractor_id, "
            "corporate_number, draft, fingerprint, created_at, updated_at) VALUES "
            "(:id, 'portal', :award_id, 'waiting_usage_request', 't', :cid, :corp, :draft, 'f', "
            ":now, :now)"
        ),
        {"id": f"a{award_id}", "award_id": award_id, "cid": contractor, "corp": corp,
         "draft": draft, "now": NOW},
    )  # fmt: skip


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def empty_engine(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Engine]:
    """An engine on an empty database, to migrate step by step."""
    if request.param == "sqlite":
        engine = create_database_engine(f"sqlite:///{tmp_path / 'old.db'}")
        yield engine
        engine.dispose()
        return
    request.getfixturevalue("postgres_url")  # skips (fails in CI) when PostgreSQL is not there
    name = f"keiyaku_migration_{secrets.token_hex(4)}"
    admin = create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    engine = create_database_engine(PG_ADMIN_URL.rsplit("/", 1)[0] + f"/{name}")
    try:
        yield engine
    finally:
        engine.dispose()
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


def test_merged_contractors_are_reported_and_their_awards_held(empty_engine: Engine) -> None:
    engine = empty_engine
    migrate(engine, "0011")
    with engine.begin() as conn:
        for cid, name, corp in (
            ("c1", "株式会社山田建設", "1000000000001"),
            ("c2", "㈱鈴木", None),
        ):
            conn.execute(
                text("INSERT INTO contractors (id, name, corporate_number, created_at) "
                     "VALUES (:id, :name, :corp, :now)"),
                {"id": cid, "name": name, "corp": corp, "now": NOW},
            )  # fmt: skip
        for cid, kind, value in (
            ("c1", "corporate_number", "1000000000001"),
            ("c1", "corporate_number", "2000000000002"),  # learnt from a same-name record
            ("c1", "name_key", "株式会社山田建設"),
            ("c2", "registry_code", "000123"),
            ("c2", "name_key", "株式会社鈴木"),
        ):
            conn.execute(
                text("INSERT INTO contractor_identities (contractor_id, kind, value) "
                     "VALUES (:c, :k, :v)"),
                {"c": cid, "k": kind, "v": value},
            )  # fmt: skip
        _award(conn, "P1", "c1", "1000000000001", '{"contractor": {"name": "株式会社山田建設"}}')
        _award(conn, "P2", "c1", "2000000000002", '{"contractor": {"name": "株式会社山田建設"}}')
        _award(conn, "P3", "c2", None, '{"contractor": {"registry_code": "000123"}}')
    migrate(engine)
    with Session(engine) as session:
        (conflict,) = session.scalars(select(ContractorConflict)).all()
        assert conflict.kind == "merged_before" and conflict.contractor_id == "c1"
        assert conflict.detail["corporate_numbers"] == ["1000000000001", "2000000000002"]
        assert "株式会社山田建設" in conflict.message_ja
        states = {a.award_id: a.state for a in session.scalars(select(Award))}
        assert states == {
            "P1": AwardState.CONTRACTOR_CONFLICT,
            "P2": AwardState.CONTRACTOR_CONFLICT,
            "P3": AwardState.WAITING_USAGE_REQUEST,  # c2 was never merged
        }
        kinds = set(session.scalars(select(ContractorIdentity.kind)))
        assert kinds == {"corporate_number", "registry_code"}  # names no longer identify
        assert session.get(Contractor, "c2").name_key == "株式会社鈴木"  # type: ignore[union-attr]
        # Nothing was split: still two contractors, c1 keeps both numbers for staff to see.
        assert len(session.scalars(select(Contractor)).all()) == 2
