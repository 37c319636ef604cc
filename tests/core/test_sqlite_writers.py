"""SQLite writers of one process queue on the engine's write gate (core.storage).

SQLite's own busy handler sleeps in growing steps and wakes late, so under concurrent API
creates one in ten waited most of a second for a lock held a few milliseconds. The gate makes a
second writer of the same process wait until the first commits or rolls back, and then go at
once. Each test gives the waiting connection ``busy_timeout=0``: had it reached SQLite while the
other held the write lock, it would fail at once with "database is locked".
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import Engine, text

from core import storage
from core.storage import create_database_engine, database_error


@pytest.fixture
def engine(tmp_path: Path) -> Iterator[Engine]:
    engine = create_database_engine(f"sqlite:///{tmp_path / 'gate.db'}")
    with engine.begin() as conn:
        conn.execute(text("CREATE TABLE t (x INTEGER)"))
    yield engine
    engine.dispose()


def _write_without_waiting(engine: Engine, value: int, errors: list[BaseException]) -> None:
    try:
        with engine.connect() as conn:
            conn.execute(text("PRAGMA busy_timeout=0"))
            conn.execute(text("INSERT INTO t (x) VALUES (:x)"), {"x": value})
            conn.commit()
    except BaseException as exc:  # reported by the test
        errors.append(exc)


def _values(engine: Engine) -> list[int]:
    with engine.connect() as conn:
        return sorted(conn.execute(text("SELECT x FROM t")).scalars())


def _assert_the_gate_is_free(engine: Engine, value: int) -> None:
    """Another thread writes ``value`` at once (no busy wait): only the gate could stop it."""
    errors: list[BaseException] = []
    other = threading.Thread(target=_write_without_waiting, args=(engine, value, errors))
    other.start()
    other.join(timeout=30)
    assert not other.is_alive() and errors == []
    assert _values(engine) == [value]


def test_a_second_writer_waits_for_the_first_to_commit(engine: Engine) -> None:
    errors: list[BaseException] = []
    with engine.connect() as first:
        first.execute(text("INSERT INTO t (x) VALUES (1)"))  # holds SQLite's write lock
        second = threading.Thread(target=_write_without_waiting, args=(engine, 2, errors))
        second.start()
        second.join(timeout=0.5)
        assert second.is_alive()  # waiting on the gate, not failed in SQLite
        first.commit()
    second.join(timeout=30)
    assert not second.is_alive() and errors == []
    assert _values(engine) == [1, 2]


def test_a_rolled_back_or_abandoned_write_frees_the_gate(engine: Engine) -> None:
    with engine.connect() as conn:
        conn.execute(text("INSERT INTO t (x) VALUES (1)"))
        conn.rollback()
    with engine.connect() as conn:
        conn.execute(text("INSERT INTO t (x) VALUES (2)"))
        # closed without commit or rollback: the pool's reset rolls it back
    _assert_the_gate_is_free(engine, 3)


def test_a_failed_statement_frees_the_gate_with_its_rollback(engine: Engine) -> None:
    with engine.connect() as conn:
        conn.execute(text("INSERT INTO t (x) VALUES (1)"))
        with pytest.raises(Exception, match="no such table"):
            conn.execute(text("INSERT INTO missing (x) VALUES (1)"))
        conn.rollback()
    _assert_the_gate_is_free(engine, 2)


def test_many_writers_at_once_all_commit(engine: Engine) -> None:
    errors: list[BaseException] = []
    threads = [
        threading.Thread(target=_write_without_waiting, args=(engine, i, errors)) for i in range(16)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert errors == []
    assert _values(engine) == list(range(16))


def test_a_writer_held_up_past_the_busy_timeout_gets_the_retriable_timeout(
    engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    # as long as SQLite's busy_timeout, not that plus SQLite's own wait after the gate's
    monkeypatch.setattr(storage, "_BUSY_SECONDS", 0.2)
    errors: list[BaseException] = []
    with engine.connect() as first:
        first.execute(text("INSERT INTO t (x) VALUES (1)"))
        second = threading.Thread(target=_write_without_waiting, args=(engine, 2, errors))
        second.start()
        second.join(timeout=30)
        first.commit()
    (error,) = errors
    fault = database_error(error)
    assert fault is not None and fault.code == "database.timeout" and fault.retriable
    assert _values(engine) == [1]
