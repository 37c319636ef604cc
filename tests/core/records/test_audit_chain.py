"""The audit hash chain: edits, deletions and smuggled rows are named; concurrent writers in
several processes keep it whole (PostgreSQL) and so do threads on SQLite's single writer."""

from __future__ import annotations

import datetime as dt
import multiprocessing
import threading

import pytest
from sqlalchemy import Engine, delete, insert, select, update
from sqlalchemy.orm import Session, sessionmaker

from core.model import AuditEvent, utcnow
from core.records.audit import iter_events, record_event, verify_chain
from core.storage import create_database_engine, transaction


def _write(sessions: sessionmaker[Session], n: int, tag: str) -> None:
    for i in range(n):
        with transaction(sessions) as session:
            record_event(session=session, action="test.write", actor=tag, detail={"i": i})
            record_event(session=session, action="test.write2", actor=tag, detail={"i": i})
        if i % 5 == 0:  # a rolled-back transaction must leave no gap in the chain
            with sessions() as session, session.begin():
                record_event(session=session, action="test.rolled_back", actor=tag)
                session.rollback()


def _write_in_process(url: str, n: int, tag: str) -> None:
    engine = create_database_engine(url)
    try:
        _write(sessionmaker(engine, expire_on_commit=False), n, tag)
    finally:
        engine.dispose()


def test_chain_verifies_and_names_an_edited_event(
    sessions: sessionmaker[Session], db_engine: Engine
) -> None:
    _write(sessions, 5, "a")
    with sessions() as session:
        report = verify_chain(session=session)
        assert report.ok and report.checked == 10
        target = session.scalar(select(AuditEvent.id).where(AuditEvent.chain_seq == 4))
    with db_engine.begin() as conn:
        conn.execute(update(AuditEvent).where(AuditEvent.id == target).values(actor="mallory"))
    with sessions() as session:
        report = verify_chain(session=session)
    assert report.problems == [
        {"problem": "edited", "seq": 4, "event_id": target, "action": "test.write2"}
    ]


def test_chain_names_a_deleted_event_and_a_smuggled_one(
    sessions: sessionmaker[Session], db_engine: Engine
) -> None:
    _write(sessions, 3, "a")
    with db_engine.begin() as conn:
        conn.execute(delete(AuditEvent).where(AuditEvent.chain_seq == 3))
    with sessions() as session:
        report = verify_chain(session=session)
    assert report.problems[0]["problem"] == "deleted" and report.problems[0]["seq"] == 3

    with db_engine.begin() as conn:
        conn.execute(delete(AuditEvent))
    _write(sessions, 2, "b")
    with sessions() as session:
        assert verify_chain(session=session).problems[0]["problem"] == "deleted"  # whole prefix


def test_deleting_the_newest_event_is_noticed(
    sessions: sessionmaker[Session], db_engine: Engine
) -> None:
    _write(sessions, 2, "a")
    with db_engine.begin() as conn:
        conn.execute(delete(AuditEvent).where(AuditEvent.chain_seq == 4))
    with sessions() as session:
        assert verify_chain(session=session).problems[0] == {
            "problem": "deleted",
            "seq": 4,
            "next_event_id": None,
            "next_seq": None,
        }


def test_an_event_inserted_behind_the_chain_is_noticed(
    sessions: sessionmaker[Session], db_engine: Engine
) -> None:
    _write(sessions, 1, "a")
    with db_engine.begin() as conn:
        conn.execute(insert(AuditEvent).values(actor="x", action="forged", at=utcnow(), detail={}))
    with sessions() as session:
        assert verify_chain(session=session).problems[0]["problem"] == "unchained"


def test_export_range(sessions: sessionmaker[Session]) -> None:
    at = dt.datetime(2026, 4, 1, tzinfo=dt.UTC)
    with transaction(sessions) as session:
        for day in range(3):
            record_event(session=session, action="x", actor="a", at=at + dt.timedelta(days=day))
    with sessions() as session:
        events = list(
            iter_events(
                session=session, start=at + dt.timedelta(days=1), end=at + dt.timedelta(days=3)
            )
        )
    assert [e.chain_seq for e in events] == [2, 3]


def test_threads_on_one_database_keep_the_chain(sessions: sessionmaker[Session]) -> None:
    threads = [threading.Thread(target=_write, args=(sessions, 10, f"t{i}")) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    with sessions() as session:
        report = verify_chain(session=session)
    assert report.ok and report.checked == 80


@pytest.mark.postgres
def test_concurrent_processes_keep_the_chain(postgres_url: str) -> None:
    from core.storage import migrate

    engine = create_database_engine(postgres_url)
    migrate(engine)
    try:
        with engine.begin() as conn:
            conn.execute(delete(AuditEvent))
            conn.exec_driver_sql("DELETE FROM audit_chain_head")
        spawn = multiprocessing.get_context("spawn")
        workers = [
            spawn.Process(target=_write_in_process, args=(postgres_url, 20, f"p{i}"))
            for i in range(4)
        ]
        for w in workers:
            w.start()
        for w in workers:
            w.join(120)
        assert [w.exitcode for w in workers] == [0, 0, 0, 0]
        with Session(engine) as session:
            report = verify_chain(session=session)
        assert report.ok, report.problems
        assert report.checked == 4 * 20 * 2
    finally:
        with engine.begin() as conn:
            conn.execute(delete(AuditEvent))
            conn.exec_driver_sql("DELETE FROM audit_chain_head")
        engine.dispose()


@pytest.mark.postgres
def test_an_open_transaction_does_not_hold_the_chain(postgres_url: str) -> None:
    """The head is locked only while committing: a transaction that recorded an event and is
    still working (signing, calling a TSA) does not stop others from committing theirs."""
    from core.storage import migrate

    engine = create_database_engine(postgres_url)
    migrate(engine)
    factory = sessionmaker(engine, expire_on_commit=False)
    try:
        with engine.begin() as conn:
            conn.execute(delete(AuditEvent))
            conn.exec_driver_sql("DELETE FROM audit_chain_head")
        slow = factory()
        slow.begin()
        record_event(session=slow, action="slow", actor="a")
        slow.flush()
        done = threading.Event()

        def other() -> None:
            _write(factory, 1, "b")
            done.set()

        thread = threading.Thread(target=other)
        thread.start()
        assert done.wait(10), "a second writer waited for an uncommitted transaction"
        thread.join()
        slow.commit()
        slow.close()
        with factory() as session:
            report = verify_chain(session=session)
            last = session.scalar(select(AuditEvent.action).order_by(AuditEvent.chain_seq.desc()))
        assert report.ok and report.checked == 3
        assert last == "slow"  # chained in commit order, not in insert order
    finally:
        with engine.begin() as conn:
            conn.execute(delete(AuditEvent))
            conn.exec_driver_sql("DELETE FROM audit_chain_head")
        engine.dispose()


COUNTS = (1, 3, 2, 3, 1, 4)


def test_events_of_every_count_are_stored_by_one_cached_statement(
    sessions: sessionmaker[Session], db_engine: Engine
) -> None:
    """The events a commit chains are inserted by a statement compiled once, whatever their
    count (a multi-row VALUES clause built per count has no cache key and was compiled again
    on every commit), and every one of them is stored, chained, with its own values."""
    from sqlalchemy import event as sa_event
    from sqlalchemy.engine import default

    seen: list[object] = []

    def note(conn, cursor, statement, parameters, context, executemany) -> None:  # type: ignore[no-untyped-def]
        if "INSERT INTO audit_events" in statement:
            seen.append(context.cache_hit)

    sa_event.listen(db_engine, "after_cursor_execute", note)
    try:
        for count in COUNTS:
            with transaction(sessions) as session:
                for i in range(count):
                    record_event(
                        session=session,
                        action="test.cached",
                        actor=f"{count}-{i}",
                        ip=None if i % 2 else "192.0.2.1",
                        detail={"i": i} if i else {},
                    )
    finally:
        sa_event.remove(db_engine, "after_cursor_execute", note)
    # One statement per commit. SQLAlchemy caches one event and several apart (execute and
    # executemany), so the first two may be compiled here; every later one comes from the cache.
    assert len(seen) == len(COUNTS)
    assert seen[2:] == [default.CACHE_HIT] * (len(COUNTS) - 2)
    with sessions() as session:
        report = verify_chain(session=session)
        rows = session.execute(
            select(AuditEvent.actor, AuditEvent.ip, AuditEvent.detail)
            .where(AuditEvent.action == "test.cached")
            .order_by(AuditEvent.chain_seq)
        ).all()
    assert report.ok, report.problems
    expected = [
        (f"{count}-{i}", None if i % 2 else "192.0.2.1", {"i": i} if i else {})
        for count in COUNTS
        for i in range(count)
    ]
    assert [tuple(r) for r in rows] == expected
