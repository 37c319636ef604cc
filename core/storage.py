"""Database engine, sessions and migrations (SQLite by default, PostgreSQL in production)."""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Engine, create_engine, event
from sqlalchemy import exc as sqlalchemy_exc
from sqlalchemy.orm import Session, sessionmaker

from core.errors import InfrastructureError

__all__ = [
    "alembic_config",
    "create_database_engine",
    "database_error",
    "known_revisions",
    "make_session_factory",
    "migrate",
    "schema_is_current",
    "schema_revisions",
    "transaction",
]

MIGRATIONS = Path(__file__).parent / "migrations"
# how long a SQLite writer waits for another one before failing (a test shortens it)
_BUSY_SECONDS = 30.0


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    # WAL lets readers proceed while one writer commits; busy_timeout waits instead of failing
    # at once when another process holds the write lock; SQLite ignores foreign keys by default.
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute(f"PRAGMA busy_timeout={int(_BUSY_SECONDS * 1000)}")
    # FULL: a commit is durable when it returns (NORMAL in WAL mode may lose the last
    # commits on power loss: an approval the signer was told is complete, and its signature)
    cursor.execute("PRAGMA synchronous=FULL")
    cursor.close()


_WRITES = ("INSERT", "UPDATE", "DELETE", "REPLACE", "CREATE", "DROP", "ALTER")


class _SqliteWriteGate:
    """SQLite has one writer at a time; the others wait in its busy handler, which sleeps in
    growing steps (1, 2, 5 ... 25, 50, 100 ms) and wakes late: with 8 concurrent API creates on
    one node, one in ten waited 0.6-1.1 s for a lock held for a few milliseconds. In this
    process, a transaction's first write statement waits on this lock instead, which the holder
    releases right after its COMMIT or ROLLBACK (:class:`_GatedConnection`), waking the next
    writer at once; another process is still waited for by SQLite's busy handler. Held from
    that first write to the transaction's end, as SQLite's own write lock is, so it changes who
    waits how, never what runs together."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._holder: int | None = None

    def before_execute(self, conn: Any, _cursor: Any, statement: str, *_: Any) -> None:
        dbapi = conn.connection.dbapi_connection
        if not isinstance(dbapi, _GatedConnection) or dbapi.holds_gate or not _is_write(statement):
            return
        if self._holder == threading.get_ident():
            return  # this thread writes on another connection: SQLite decides, as before
        # bounded as SQLite's busy_timeout would be, with the error it would raise
        if not self._lock.acquire(timeout=_BUSY_SECONDS):
            raise sqlalchemy_exc.OperationalError(
                statement, None, sqlite3.OperationalError("database is locked")
            )
        self._holder = threading.get_ident()
        dbapi.holds_gate = True

    def release(self) -> None:
        self._holder = None
        self._lock.release()


class _GatedConnection(sqlite3.Connection):
    """A SQLite connection that gives the write gate back once its transaction has ended."""

    gate: _SqliteWriteGate | None = None
    holds_gate = False

    def _ended(self) -> None:
        if self.holds_gate and self.gate is not None:
            self.holds_gate = False
            self.gate.release()

    def commit(self) -> None:
        try:
            super().commit()
        finally:
            self._ended()

    def rollback(self) -> None:
        try:
            super().rollback()
        finally:
            self._ended()

    def close(self) -> None:
        try:
            super().close()
        finally:
            self._ended()


def _is_write(statement: str) -> bool:
    head = statement.lstrip()[:8].upper()
    if head.startswith(_WRITES):
        return True
    return head.startswith("WITH") and any(w in statement.upper() for w in _WRITES[:4])


def create_database_engine(
    url: str,
    *,
    lock_timeout: float | None = None,
    statement_timeout: float | None = None,
    **kwargs: Any,
) -> Engine:
    """An engine for ``url`` with the settings the gateway relies on for each backend.

    On PostgreSQL, ``lock_timeout`` and ``statement_timeout`` (seconds) bound how long one
    statement may wait for a lock or run, so a request never hangs behind a stuck lock: it
    fails with a coded, retriable ``database.timeout`` instead.
    """
    if url.startswith("sqlite"):
        gate = _SqliteWriteGate()
        kwargs["connect_args"] = {**kwargs.get("connect_args", {}), "factory": _GatedConnection}
        engine = create_engine(url, **kwargs)
        event.listen(engine, "connect", _sqlite_pragmas)
        event.listen(engine, "connect", lambda dbapi, _record: setattr(dbapi, "gate", gate))
        event.listen(engine, "before_cursor_execute", gate.before_execute)
        return engine
    options = []
    if lock_timeout is not None:
        options.append(f"-c lock_timeout={int(lock_timeout * 1000)}")
    if statement_timeout is not None:
        options.append(f"-c statement_timeout={int(statement_timeout * 1000)}")
    if options:
        connect_args = dict(kwargs.pop("connect_args", {}))
        connect_args["options"] = " ".join([connect_args.get("options", ""), *options]).strip()
        kwargs["connect_args"] = connect_args
    return create_engine(url, pool_pre_ping=True, **kwargs)


def database_error(exc: BaseException) -> InfrastructureError | None:
    """The coded, retriable error for a database fault: unreachable, connection dropped (a
    terminated backend, a restart), lock or statement timeout; None for anything else."""
    if not isinstance(exc, sqlalchemy_exc.SQLAlchemyError):
        return None
    orig = getattr(exc, "orig", None)
    sqlstate = getattr(orig, "sqlstate", None) or ""
    if sqlstate in ("55P03", "57014"):  # lock_not_available, query_canceled (statement_timeout)
        return InfrastructureError(
            "database.timeout",
            f"the database did not answer in time ({type(orig).__name__})",
            "データベースが混み合っています。しばらくしてから再度お試しください。",
        )
    if isinstance(exc, sqlalchemy_exc.OperationalError) and "database is locked" in str(exc):
        return InfrastructureError(
            "database.timeout",
            "the database stayed locked by another writer",
            "データベースが混み合っています。しばらくしてから再度お試しください。",
        )
    if (
        (isinstance(exc, sqlalchemy_exc.DBAPIError) and exc.connection_invalidated)
        or isinstance(exc, sqlalchemy_exc.OperationalError | sqlalchemy_exc.TimeoutError)
        or sqlstate.startswith(("08", "57P"))  # connection exceptions, admin shutdown
    ):
        return InfrastructureError(
            "database.unavailable",
            f"the database is unavailable ({type(orig or exc).__name__})",
            "データベースに接続できません。しばらくしてから再度お試しください。",
        )
    return None


def alembic_config(engine: Engine) -> Config:
    """An Alembic config pointing at the gateway's migrations for ``engine``."""
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    config.set_main_option("sqlalchemy.url", engine.url.render_as_string(hide_password=False))
    return config


def migrate(engine: Engine, revision: str = "heads") -> None:
    """Bring the schema up to ``revision`` (default: every head; idempotent)."""
    config = alembic_config(engine)
    with engine.begin() as connection:
        config.attributes["connection"] = connection
        command.upgrade(config, revision)


def schema_revisions(engine: Engine) -> set[str]:
    """The migration revisions the database is at (empty before the first migration)."""
    with engine.connect() as connection:
        return set(MigrationContext.configure(connection).get_current_heads())


def known_revisions(engine: Engine) -> set[str]:
    """Every migration revision this version of the gateway ships."""
    script = ScriptDirectory.from_config(alembic_config(engine))
    return {revision.revision for revision in script.walk_revisions()}


def schema_is_current(engine: Engine) -> bool:
    """Whether the database is at every migration head (False for an empty database too)."""
    heads = set(ScriptDirectory.from_config(alembic_config(engine)).get_heads())
    with engine.connect() as connection:
        return set(MigrationContext.configure(connection).get_current_heads()) == heads


def make_session_factory(engine: Engine) -> sessionmaker[Session]:
    """Sessions that keep loaded objects usable after commit."""
    return sessionmaker(engine, expire_on_commit=False)


@contextmanager
def transaction(factory: sessionmaker[Session]) -> Iterator[Session]:
    """One unit of work: commits on success, rolls back on any exception."""
    with factory() as session, session.begin():
        yield session
