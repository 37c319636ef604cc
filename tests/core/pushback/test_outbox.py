"""The outbox: written with the state change, claimed as leases, retried with backoff, then dead."""

from __future__ import annotations

import datetime as dt
import threading

import pytest
from sqlalchemy import Engine, event, func, select
from sqlalchemy.orm import Session, sessionmaker

from core.errors import Disposition, GatewayError, StateError
from core.model import AuditEvent, Delivery, utcnow
from core.pushback.outbox import (
    RetryPolicy,
    claim,
    count_deliveries,
    dispatch,
    enqueue,
    list_deliveries,
    list_targets,
    mark_delivered,
    mark_failed,
    retry_dead,
)
from core.records.audit import record_event, verify_chain
from core.states import DeliveryState


def _fill(session: Session, n: int, target: str = "folder") -> None:
    for i in range(n):
        enqueue(session=session, target=target, idempotency_key=f"{target}:{i}", payload={"i": i})
    session.commit()


def test_enqueue_is_idempotent_on_its_key(session: Session) -> None:
    a = enqueue(session=session, target="folder", idempotency_key="folder:e1:completed", payload={})
    session.commit()
    b = enqueue(session=session, target="folder", idempotency_key="folder:e1:completed", payload={})
    session.commit()
    assert a.id == b.id
    assert session.scalar(select(func.count()).select_from(Delivery)) == 1


def test_enqueue_leaves_the_audit_events_for_the_commit_to_chain(
    session: Session, db_engine: Engine
) -> None:
    """An enqueue does not flush the transaction: its audit events are inserted once, already
    chained, by the commit (a flush first inserted each on its own and the commit then updated
    every one). A delivery added earlier in the same transaction is still found by its key."""
    statements: list[str] = []

    def note(_conn: object, _cursor: object, statement: str, *_: object) -> None:
        statements.append(statement)

    record_event(session=session, action="test.approved", actor="t")
    first = enqueue(session=session, target="mail", idempotency_key="mail:e1:p1", payload={})
    record_event(session=session, action="test.requested", actor="t")
    event.listen(db_engine, "before_cursor_execute", note)
    try:
        again = enqueue(session=session, target="mail", idempotency_key="mail:e1:p1", payload={})
        session.commit()
    finally:
        event.remove(db_engine, "before_cursor_execute", note)
    assert again is first
    audit = [s for s in statements if "audit_events" in s]
    assert len(audit) == 1 and audit[0].lstrip().startswith(("INSERT", "WITH")), audit
    assert session.scalar(select(func.count()).select_from(Delivery)) == 1
    assert verify_chain(session=session).ok
    actions = session.scalars(select(AuditEvent.action).order_by(AuditEvent.chain_seq)).all()
    assert actions == ["test.approved", "test.requested"]


def test_an_enqueue_rolled_back_with_its_transaction_leaves_nothing(session: Session) -> None:
    enqueue(session=session, target="folder", idempotency_key="k", payload={})
    session.rollback()
    assert session.scalar(select(func.count()).select_from(Delivery)) == 0


def test_claim_leases_and_expired_leases_return(session: Session) -> None:
    _fill(session, 3)
    first = claim(session=session, worker="a", limit=2)
    assert len(first) == 2 and all(d.state is DeliveryState.LEASED for d in first)
    assert [d.attempts for d in first] == [1, 1]
    second = claim(session=session, worker="b", limit=5)
    assert [d.id for d in second] == [3]  # a's leases are not due
    later = utcnow() + dt.timedelta(minutes=10)
    taken_over = claim(session=session, worker="c", limit=5, now=later)
    assert sorted(d.id for d in taken_over) == [1, 2, 3]
    # The original holder lost its lease: its success is not recorded over c's.
    assert mark_delivered(session=session, delivery=first[0], worker="a") is False
    assert mark_delivered(session=session, delivery=taken_over[0], worker="c") is True


def test_failures_back_off_then_die(session: Session) -> None:
    _fill(session, 1)
    policy = RetryPolicy(max_attempts=3, base_delay=60)
    for attempt in range(1, 4):
        now = utcnow() + dt.timedelta(days=attempt)  # far enough for any backoff
        (d,) = claim(session=session, worker="w", now=now)
        assert d.attempts == attempt
        state = mark_failed(
            session=session,
            delivery=d,
            worker="w",
            error="sink down",
            retriable=True,
            policy=policy,
        )
        session.refresh(d)
        if attempt < 3:
            assert state is DeliveryState.PENDING
            assert d.next_attempt_at > utcnow() + dt.timedelta(
                seconds=60 * 2 ** (attempt - 1) * 0.5 - 1
            )
            assert claim(session=session, worker="w") == []  # not due yet
        else:
            assert state is DeliveryState.DEAD
    assert d.last_error == "sink down"
    retry_dead(session=session, delivery_id=d.id, actor="admin@city.example.jp", ip="192.0.2.9")
    session.refresh(d)
    assert d.state is DeliveryState.PENDING and d.attempts == 0
    event = session.scalars(select(AuditEvent).where(AuditEvent.action == "outbox.retry")).one()
    assert (event.actor, event.ip, event.detail) == (
        "admin@city.example.jp",
        "192.0.2.9",
        {"delivery": d.id, "target": "folder"},
    )
    assert event.chain_seq is not None  # committed with the change
    with pytest.raises(StateError):
        retry_dead(session=session, delivery_id=d.id, actor="test")


def test_permanent_errors_die_at_once(session: Session) -> None:
    _fill(session, 1)
    (d,) = claim(session=session, worker="w")
    assert (
        mark_failed(
            session=session,
            delivery=d,
            worker="w",
            error="rejected",
            retriable=False,
            policy=RetryPolicy(),
        )
        is DeliveryState.DEAD
    )
    assert [x.id for x in list_deliveries(session=session, state=DeliveryState.DEAD)] == [d.id]


def test_counts_per_state_targets_and_pages(session: Session) -> None:
    _fill(session, 3, "folder")
    _fill(session, 2, "finance")
    (d,) = claim(session=session, worker="w", limit=1, targets=["finance"])
    mark_failed(
        session=session, delivery=d, worker="w", error="no", retriable=False, policy=RetryPolicy()
    )
    assert count_deliveries(session=session) == {
        DeliveryState.PENDING: 4,
        DeliveryState.LEASED: 0,
        DeliveryState.DELIVERED: 0,
        DeliveryState.DEAD: 1,
    }
    assert count_deliveries(session=session, target="folder")[DeliveryState.DEAD] == 0
    assert list_targets(session=session) == ["finance", "folder"]
    newest_first = [x.id for x in list_deliveries(session=session)]
    assert [x.id for x in list_deliveries(session=session, limit=2, offset=2)] == newest_first[2:4]


def test_dispatch_delivers_retries_and_kills(sessions: sessionmaker[Session]) -> None:
    with sessions() as s:
        _fill(s, 3, "sink")
    seen: list[str] = []

    def handler(d: Delivery) -> None:
        seen.append(d.idempotency_key)
        if d.payload["i"] == 1:
            raise GatewayError(
                "sink.timeout", "timed out", "タイムアウト", disposition=Disposition.RETRIABLE
            )
        if d.payload["i"] == 2:
            raise GatewayError("sink.rejected", "bad record", "不正なデータ")

    result = dispatch(
        sessions=sessions,
        handlers={"sink": handler},
        worker="w",
        policy=RetryPolicy(base_delay=3600),
    )
    assert result.delivered == [1] and result.retrying == [2] and result.dead == [3]
    assert seen == ["sink:0", "sink:1", "sink:2"]
    again = dispatch(sessions=sessions, handlers={"sink": handler}, worker="w")
    assert again.delivered == again.retrying == again.dead == []  # nothing due


@pytest.mark.postgres
def test_concurrent_claimers_never_share_a_row(
    sessions: sessionmaker[Session], db_engine: object
) -> None:
    if sessions.kw["bind"].dialect.name != "postgresql":  # type: ignore[union-attr]
        pytest.skip("row-level concurrency is a PostgreSQL property; SQLite serialises writers")
    with sessions() as s:
        _fill(s, 200)
    taken: dict[str, list[int]] = {}
    barrier = threading.Barrier(4)

    def worker(name: str) -> None:
        got: list[int] = []
        with sessions() as s:
            barrier.wait()
            while batch := claim(session=s, worker=name, limit=7):
                got += [d.id for d in batch]
        taken[name] = got

    threads = [threading.Thread(target=worker, args=(f"w{i}",)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    ids = [i for got in taken.values() for i in got]
    assert sorted(ids) == list(range(1, 201))  # every row once, none twice
    assert sum(1 for got in taken.values() if got) >= 2  # the work was actually shared
