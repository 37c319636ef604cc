"""Shared fixtures: databases (SQLite and PostgreSQL), blob store, a gateway on the dev PKI."""

from __future__ import annotations

import os
import secrets
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import Engine, create_engine, text
from sqlalchemy.orm import Session, sessionmaker

from core.blobs import BlobStore
from core.model import Base
from core.storage import create_database_engine, migrate

pytest_plugins = ["tests.fixtures.pki_plugin", "tests.fixtures.sshd"]

ROOT = Path(__file__).resolve().parents[1]
PG_ADMIN_URL = os.environ.get(
    "KEIYAKU_TEST_PG_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test"
)


def _postgres_reachable() -> str | None:
    try:
        engine = create_engine(PG_ADMIN_URL, connect_args={"connect_timeout": 3})
        with engine.connect() as conn:
            conn.execute(text("select 1"))
        engine.dispose()
        return None
    except Exception as exc:  # any failure means "not reachable here"
        return f"{type(exc).__name__}: {exc}".splitlines()[0]


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    """A fresh PostgreSQL database for this test run, dropped afterwards.

    In CI (CI=true) an unreachable server fails the run; locally it skips with the reason.
    """
    problem = _postgres_reachable()
    if problem is not None:
        if os.environ.get("CI"):
            pytest.fail(
                f"PostgreSQL is required in CI and unreachable at {PG_ADMIN_URL}: {problem}"
            )
        pytest.skip(f"PostgreSQL unreachable at {PG_ADMIN_URL}: {problem}")
    name = f"keiyaku_test_{secrets.token_hex(4)}"
    admin = create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    try:
        yield PG_ADMIN_URL.rsplit("/", 1)[0] + f"/{name}"
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


@pytest.fixture(scope="session")
def sqlite_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A SQLite database migrated once per test run, for tests to copy (a copy is a few ms, a
    migration from nothing about 200 ms)."""
    path = tmp_path_factory.mktemp("sqlite-template") / "keiyaku.db"
    engine = create_database_engine(f"sqlite:///{path}")
    migrate(engine)
    engine.dispose()
    return path


@pytest.fixture(scope="session")
def initialised_site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A site made by the real ``keiyaku init`` once per test run (config, secrets, development
    PKI: a few seconds of key generation); tests take copies with :func:`copy_site`."""
    path = tmp_path_factory.mktemp("site") / "home"
    env = {k: v for k, v in os.environ.items() if not k.startswith("KEIYAKU_")}
    subprocess.run(
        [sys.executable, "-m", "gateway.cli", "init", str(path)],
        check=True,
        cwd=ROOT,
        env=env,
        capture_output=True,
    )
    return path


def copy_site(site: Path, sqlite_template: Path | None, destination: Path) -> Path:
    """A copy of an initialised site at ``destination``, with its database already migrated
    from ``sqlite_template`` (None: no database yet, as right after ``keiyaku init``)."""
    shutil.copytree(site, destination)
    if sqlite_template is not None:
        shutil.copyfile(sqlite_template, destination / "keiyaku.db")
    return destination


@pytest.fixture
def site_home(initialised_site: Path, sqlite_template: Path, tmp_path: Path) -> Path:
    """A fresh copy of the initialised site for one test."""
    return copy_site(initialised_site, sqlite_template, tmp_path / "home")


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def db_engine(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Engine]:
    """A migrated engine on SQLite (file) and on PostgreSQL."""
    if request.param == "sqlite":
        database = tmp_path / "keiyaku.db"
        shutil.copyfile(request.getfixturevalue("sqlite_template"), database)
        engine = create_database_engine(f"sqlite:///{database}")
        migrate(engine)  # at head already: this only checks, as the gateway does on start
        yield engine
        engine.dispose()
        return
    url = request.getfixturevalue("postgres_url")
    engine = create_database_engine(url)
    migrate(engine)
    try:
        yield engine
    finally:
        with engine.begin() as conn:
            # Each test starts from empty tables; the schema is kept for the next one.
            tables = ", ".join(t.name for t in Base.metadata.sorted_tables)
            conn.execute(text(f"TRUNCATE {tables} RESTART IDENTITY"))
        engine.dispose()


@pytest.fixture
def sessions(db_engine: Engine) -> sessionmaker[Session]:
    """A session factory bound to the test database."""
    return sessionmaker(db_engine, expire_on_commit=False)


@pytest.fixture
def session(sessions: sessionmaker[Session]) -> Iterator[Session]:
    """One session, closed after the test."""
    with sessions() as s:
        yield s


@pytest.fixture
def blobs(tmp_path: Path) -> BlobStore:
    """A blob store in a temporary folder with a random master key."""
    return BlobStore(tmp_path / "blobs", secrets.token_bytes(32))
