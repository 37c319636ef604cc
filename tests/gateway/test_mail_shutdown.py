"""Graceful shutdown of the mail sender: on stop (SIGTERM through the app's lifespan) the mail
in flight is sent, the rest of the claimed batch is given back at once."""

from __future__ import annotations

import threading
import time

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from core.model import Delivery
from core.pushback.outbox import enqueue
from core.states import DeliveryState
from gateway.mailer import MailDispatcher


def _enqueue(sessions: sessionmaker[Session], count: int, target: str = "mail") -> None:
    with sessions() as session:
        for i in range(count):
            enqueue(session=session, target=target, idempotency_key=f"{target}:{i}", payload={})
        session.commit()


def _rows(sessions: sessionmaker[Session]) -> list[Delivery]:
    with sessions() as session:
        return list(session.scalars(select(Delivery).order_by(Delivery.id)).all())


def test_mail_dispatcher_stop_finishes_the_mail_in_flight(
    sessions: sessionmaker[Session],
) -> None:
    _enqueue(sessions, 6, target="mail")
    in_flight, proceed = threading.Event(), threading.Event()
    sent: list[int] = []

    def handler(delivery: Delivery) -> None:
        in_flight.set()
        proceed.wait(10)
        sent.append(delivery.id)

    dispatcher = MailDispatcher(sessions, handler, interval=60)
    dispatcher.start()
    assert in_flight.wait(10)
    stopper = threading.Thread(target=dispatcher.stop)  # what SIGTERM does through the lifespan
    stopper.start()
    deadline = time.monotonic() + 5
    while not dispatcher._stop.is_set() and time.monotonic() < deadline:
        time.sleep(0.01)
    proceed.set()
    stopper.join(15)
    assert not stopper.is_alive()
    rows = _rows(sessions)
    assert len(sent) == 1
    delivered = [r for r in rows if r.state is DeliveryState.DELIVERED]
    assert [r.id for r in delivered] == sent
    assert all(
        r.state is DeliveryState.PENDING and r.lease_owner is None and r.attempts == 0
        for r in rows
        if r.id not in sent
    )
