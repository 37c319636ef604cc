"""The signing worker's queue: approvals committed but not yet signed, envelopes to seal.

A party's approval is committed at once (who instructed, when, how authenticated); applying the
signature needs the signing key, every document and a TSA round trip, any of which can fail for
a while (TSA down, disk full, a database connection dropped, a process killed). So the approval
commits together with a *signing task*, and the signing worker applies it afterwards, retrying
with backoff until it is done. When the last party's signature moves the envelope to ``sealing``,
a *seal task* is committed with that change.

Tasks are outbox rows (:mod:`core.pushback.outbox`, target :data:`SIGNING_TARGET`): claimed as leases that
expire, so work a killed node held returns to the pool; ``FOR UPDATE SKIP LOCKED`` on
PostgreSQL. Applying a task is idempotent (a party already signed, or an envelope already sealed,
is a no-op), and the signature or seal closes its task in the same transaction that records it.
"""

from __future__ import annotations

import datetime as dt

from sqlalchemy import and_, exists, select, update
from sqlalchemy.orm import Session

from core.model import Delivery, Envelope, Party, utcnow
from core.pushback.outbox import RetryPolicy, enqueue
from core.states import DeliveryState, EnvelopeState, PartyState

__all__ = [
    "SIGNING_RETRY",
    "SIGNING_TARGET",
    "claim_task",
    "close_task",
    "enqueue_missing",
    "enqueue_seal",
    "enqueue_signature",
    "seal_key",
    "signature_key",
]

SIGNING_TARGET = "signing"

#: A committed approval must end signed: no task goes dead for a transient fault, however long
#: the TSA is down. Only a non-retriable error (a tampered document, a broken key) stops it.
SIGNING_RETRY = RetryPolicy(max_attempts=1_000_000, base_delay=2.0, max_delay=60.0)


def signature_key(party_id: str) -> str:
    """The idempotency key of the task that signs for one party."""
    return f"signing:{party_id}"


def seal_key(envelope_id: str) -> str:
    """The idempotency key of the task that seals one envelope."""
    return f"seal:{envelope_id}"


def enqueue_signature(
    *,
    session: Session,
    party: Party,
    lease_to: str | None = None,
    lease: dt.timedelta = dt.timedelta(minutes=2),
) -> None:
    """Queue the signature of ``party`` (in the caller's transaction, with its approval).

    With ``lease_to`` the new task is created already leased to that worker, as if it had
    claimed it: an inline caller that signs right after the commit saves the claim's own
    transaction (and its fsync), and no worker can take the task until the lease expires.
    """
    # No autoflush for enqueue's look-up by key: it would insert the approval's audit event
    # before the commit chains it, and the chain would then update that row again.
    with session.no_autoflush:
        task = enqueue(
            session=session,
            target=SIGNING_TARGET,
            idempotency_key=signature_key(party.id),
            payload={"kind": "signature", "envelope_id": party.envelope_id, "party_id": party.id},
            envelope_id=party.envelope_id,
        )
    if lease_to is not None and task in session.new:  # never take over an existing task
        task.state = DeliveryState.LEASED
        task.lease_owner = lease_to
        task.lease_expires_at = utcnow() + lease
        task.attempts = 1


def enqueue_seal(*, session: Session, envelope: Envelope) -> None:
    """Queue the seal of ``envelope`` (in the transaction that moves it to ``sealing``)."""
    enqueue(
        session=session,
        target=SIGNING_TARGET,
        idempotency_key=seal_key(envelope.id),
        payload={"kind": "seal", "envelope_id": envelope.id},
        envelope_id=envelope.id,
    )


def claim_task(
    *, session: Session, key: str, worker: str, lease: dt.timedelta = dt.timedelta(minutes=2)
) -> int | None:
    """Lease the task ``key`` for ``worker`` if it is due (pending, or its lease expired) and
    commit; returns its id, or None when another worker holds it or it is done. An inline
    caller takes the task this way so that it never signs at the same time as the worker."""
    now = utcnow()
    task_id = session.scalar(select(Delivery.id).where(Delivery.idempotency_key == key))
    if task_id is None:
        return None
    result = session.execute(
        update(Delivery)
        .where(
            Delivery.id == task_id,
            (Delivery.state == DeliveryState.PENDING.value)
            | ((Delivery.state == DeliveryState.LEASED.value) & (Delivery.lease_expires_at < now)),
        )
        .values(
            state=DeliveryState.LEASED.value,
            lease_owner=worker,
            lease_expires_at=now + lease,
            attempts=Delivery.attempts + 1,
        )
        .execution_options(synchronize_session=False)
    )
    session.commit()
    return task_id if result.rowcount == 1 else None  # type: ignore[attr-defined]


def close_task(*, session: Session, key: str, now: dt.datetime | None = None) -> None:
    """Mark the task ``key`` done inside the caller's transaction (whoever applied it: the
    worker, or an inline call), so it is never applied again once that transaction commits."""
    session.execute(
        update(Delivery)
        .where(
            Delivery.idempotency_key == key,
            Delivery.state.in_([DeliveryState.PENDING.value, DeliveryState.LEASED.value]),
        )
        .values(
            state=DeliveryState.DELIVERED.value,
            delivered_at=now or utcnow(),
            lease_owner=None,
            lease_expires_at=None,
            last_error=None,
        )
        .execution_options(synchronize_session=False)
    )


def enqueue_missing(*, session: Session) -> int:
    """Queue a task for every party in ``signing`` and envelope in ``sealing`` that has none
    (work left by a version without the queue, or a row edited by hand). Commits; returns how
    many were queued."""
    queued = 0
    parties = session.scalars(
        select(Party)
        .join(Envelope, Envelope.id == Party.envelope_id)
        .where(
            Party.state == PartyState.SIGNING.value,
            Envelope.state == EnvelopeState.SENT.value,
            ~exists().where(
                and_(
                    Delivery.idempotency_key == SIGNING_TARGET + ":" + Party.id,
                    Delivery.target == SIGNING_TARGET,
                )
            ),
        )
    ).all()
    for party in parties:
        enqueue_signature(session=session, party=party)
        queued += 1
    envelopes = session.scalars(
        select(Envelope).where(
            Envelope.state == EnvelopeState.SEALING.value,
            ~exists().where(
                and_(
                    Delivery.idempotency_key == "seal:" + Envelope.id,
                    Delivery.target == SIGNING_TARGET,
                )
            ),
        )
    ).all()
    for envelope in envelopes:
        enqueue_seal(session=session, envelope=envelope)
        queued += 1
    session.commit()
    return queued
