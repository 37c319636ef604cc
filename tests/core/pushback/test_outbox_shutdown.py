"""Graceful shutdown: the delivery in flight finishes, the rest of the claimed batch is given
back at once (not after its lease expires), and nothing is pushed twice."""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from core.model import Delivery
from core.pushback.outbox import claim, dispatch, enqueue, release_leases
from core.states import DeliveryState


def _enqueue(sessions: sessionmaker[Session], count: int, target: str = "folder") -> None:
    with sessions() as session:
        for i in range(count):
            enqueue(session=session, target=target, idempotency_key=f"{target}:{i}", payload={})
        session.commit()


def _rows(sessions: sessionmaker[Session]) -> list[Delivery]:
    with sessions() as session:
        return list(session.scalars(select(Delivery).order_by(Delivery.id)).all())


def test_stop_mid_batch_gives_back_the_rest(sessions: sessionmaker[Session]) -> None:
    _enqueue(sessions, 5)
    pushed: list[int] = []

    def handler(delivery: Delivery) -> None:
        pushed.append(delivery.id)

    result = dispatch(
        sessions=sessions, handlers={"folder": handler}, worker="node-a", stop=lambda: bool(pushed)
    )
    assert result.delivered == pushed and len(pushed) == 1
    assert len(result.released) == 4
    rows = _rows(sessions)
    assert [r.state for r in rows].count(DeliveryState.DELIVERED) == 1
    for row in rows:
        if row.id in result.released:
            assert row.state is DeliveryState.PENDING
            assert row.lease_owner is None and row.attempts == 0
    # another node takes the released rows at once
    again = dispatch(sessions=sessions, handlers={"folder": handler}, worker="node-b")
    assert sorted(again.delivered) == sorted(result.released)
    assert len(pushed) == len(set(pushed)) == 5


def test_release_leases_touches_only_this_worker(sessions: sessionmaker[Session]) -> None:
    _enqueue(sessions, 4)
    with sessions() as session:
        mine = claim(session=session, worker="node-a", limit=3)
        theirs = claim(session=session, worker="node-b", limit=3)
        assert len(mine) == 3 and len(theirs) == 1
        assert release_leases(session=session, worker="node-a") == 3
    states = {r.id: (r.state, r.lease_owner) for r in _rows(sessions)}
    assert states[theirs[0].id] == (DeliveryState.LEASED, "node-b")
    assert all(states[d.id] == (DeliveryState.PENDING, None) for d in mine)
