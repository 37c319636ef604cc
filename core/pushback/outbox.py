"""The transactional outbox: deliveries written with the state change that causes them.

A :class:`~core.model.Delivery` row says "push this to that target" (a sink, or the mailer). It
is added in the same transaction as the envelope state change, so a crash leaves either both or
neither. Workers then *claim* due rows as leases that expire, so a worker killed mid-delivery
gives its rows back to the pool; the push happens outside any database transaction; the row is
then marked delivered, or failed with exponential backoff and jitter up to a bound, then dead.

Delivery is at-least-once: a worker may die after pushing and before marking. Every row carries
a stable ``idempotency_key`` that targets pass on, so the receiving side can drop the repeat.

On PostgreSQL candidates are read ``FOR UPDATE SKIP LOCKED`` so concurrent workers do not even
contend for the same rows; on every backend the claim itself is a compare-and-set ``UPDATE``,
so no row is ever taken twice.
"""

from __future__ import annotations

import datetime as dt
import logging
import random
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import and_, func, or_, select, update
from sqlalchemy.orm import Session, sessionmaker

from core.errors import GatewayError, InputError, NotFoundError
from core.model import Delivery, utcnow
from core.records.audit import record_event
from core.states import DeliveryState

__all__ = [
    "DispatchResult",
    "Handler",
    "RetryPolicy",
    "claim",
    "count_deliveries",
    "dispatch",
    "enqueue",
    "get_delivery",
    "list_deliveries",
    "list_targets",
    "mark_delivered",
    "mark_failed",
    "release_leases",
    "retry_dead",
]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RetryPolicy:
    """How often and how late a failed delivery is tried again."""

    max_attempts: int = 8
    base_delay: float = 30.0  # seconds before the second attempt (then doubling)
    max_delay: float = 6 * 3600.0

    def delay(self, attempts: int) -> dt.timedelta:
        """Backoff before the next try after ``attempts`` failures ("full jitter", 50-100 %)."""
        ceiling = min(self.max_delay, self.base_delay * 2 ** max(0, attempts - 1))
        return dt.timedelta(seconds=ceiling * random.uniform(0.5, 1.0))  # noqa: S311 - not crypto


def enqueue(
    *,
    session: Session,
    target: str,
    idempotency_key: str,
    payload: Mapping[str, Any],
    envelope_id: str | None = None,
) -> Delivery:
    """Add one delivery to the session's transaction; an existing key returns the existing row.

    Keys must be stable for the logical delivery (e.g. ``"{target}:{envelope_id}:completed"``) so
    that re-running the step that caused it cannot create a second one.
    """
    existing = _existing(session, idempotency_key)
    if existing is not None:
        return existing
    now = utcnow()
    delivery = Delivery(
        target=target,
        idempotency_key=idempotency_key,
        payload=dict(payload),
        envelope_id=envelope_id,
        state=DeliveryState.PENDING,
        attempts=0,
        next_attempt_at=now,
        created_at=now,
    )
    session.add(delivery)
    return delivery


def _existing(session: Session, idempotency_key: str) -> Delivery | None:
    """The delivery already made for ``idempotency_key``, in the session or in the database.

    Looked up without flushing the session first: a flush would insert the transaction's audit
    events before the commit chains them, each as a statement of its own, then update every
    one of them with its chain link at the commit (an approval that notifies the next party
    paid three inserts and an update for what the commit otherwise writes in one statement).
    A delivery added to the session and not yet flushed is found among its new objects."""
    for obj in session.new:
        if isinstance(obj, Delivery) and obj.idempotency_key == idempotency_key:
            return obj
    with session.no_autoflush:
        found = session.scalar(select(Delivery).where(Delivery.idempotency_key == idempotency_key))
    if found is not None and found in session.deleted:
        session.flush()  # its deletion first, as the flush before the query would have done
        return None
    return found


def _due(now: dt.datetime, targets: Sequence[str] | None) -> Any:
    condition = or_(
        and_(Delivery.state == DeliveryState.PENDING.value, Delivery.next_attempt_at <= now),
        and_(
            Delivery.state == DeliveryState.LEASED.value,
            Delivery.lease_expires_at < now,
        ),
    )
    if targets is not None:
        condition = and_(condition, Delivery.target.in_(list(targets)))
    return condition


def claim(
    *,
    session: Session,
    worker: str,
    limit: int = 20,
    lease: dt.timedelta = dt.timedelta(minutes=5),
    targets: Sequence[str] | None = None,
    now: dt.datetime | None = None,
) -> list[Delivery]:
    """Lease up to ``limit`` due deliveries for ``worker`` and commit; expired leases count as due."""
    now = now or utcnow()
    candidates = session.scalars(
        select(Delivery.id)
        .where(_due(now, targets))
        .order_by(Delivery.next_attempt_at, Delivery.id)
        .limit(limit)
        .with_for_update(skip_locked=True)
    ).all()
    values = {
        "state": DeliveryState.LEASED.value,
        "lease_owner": worker,
        "lease_expires_at": now + lease,
        "attempts": Delivery.attempts + 1,
    }
    claimed: list[int] = []
    if candidates and session.get_bind().dialect.update_returning:
        # One compare-and-set UPDATE for the batch (the due condition again, so a row another
        # worker took meanwhile is not taken twice); RETURNING says which rows were won.
        claimed = list(
            session.scalars(
                update(Delivery)
                .where(Delivery.id.in_(list(candidates)), _due(now, targets))
                .values(**values)
                .returning(Delivery.id)
                .execution_options(synchronize_session=False)
            )
        )
    else:
        for delivery_id in candidates:
            result = session.execute(
                update(Delivery)
                .where(Delivery.id == delivery_id, _due(now, targets))
                .values(**values)
                .execution_options(synchronize_session=False)
            )
            if result.rowcount == 1:  # type: ignore[attr-defined]
                claimed.append(delivery_id)
    session.commit()
    if not claimed:
        return []
    rows = session.scalars(
        select(Delivery)
        .where(Delivery.id.in_(claimed))
        .order_by(Delivery.next_attempt_at, Delivery.id)
        .execution_options(populate_existing=True)
    ).all()
    return list(rows)


def _finish(session: Session, delivery: Delivery, worker: str, **values: Any) -> bool:
    result = session.execute(
        update(Delivery)
        .where(
            Delivery.id == delivery.id,
            Delivery.state == DeliveryState.LEASED.value,
            Delivery.lease_owner == worker,
        )
        .values(**values)
        .execution_options(synchronize_session=False)
    )
    session.commit()
    return bool(result.rowcount == 1)  # type: ignore[attr-defined]


def mark_delivered(*, session: Session, delivery: Delivery, worker: str) -> bool:
    """Record a successful push. False when the lease was lost (another worker took over)."""
    return _finish(
        session,
        delivery,
        worker,
        state=DeliveryState.DELIVERED.value,
        delivered_at=utcnow(),
        lease_owner=None,
        lease_expires_at=None,
        last_error=None,
    )


def mark_failed(
    *,
    session: Session,
    delivery: Delivery,
    worker: str,
    error: str,
    retriable: bool,
    policy: RetryPolicy,
) -> DeliveryState:
    """Record a failed push: back to pending after a backoff, or dead when the bound is reached
    or the error will not go away by retrying. Returns the new state."""
    now = utcnow()
    dead = not retriable or delivery.attempts >= policy.max_attempts
    state = DeliveryState.DEAD if dead else DeliveryState.PENDING
    _finish(
        session,
        delivery,
        worker,
        state=state.value,
        next_attempt_at=now if dead else now + policy.delay(delivery.attempts),
        lease_owner=None,
        lease_expires_at=None,
        last_error=error[:4000],
    )
    return state


def retry_dead(
    *, session: Session, delivery_id: int, actor: str, ip: str | None = None
) -> Delivery:
    """Send a dead delivery round again (attempts start over); an audit event, and commits."""
    delivery = get_delivery(session=session, delivery_id=delivery_id)
    if delivery.state is not DeliveryState.DEAD:
        raise InputError(
            "outbox.not_dead",
            f"delivery {delivery_id} is {delivery.state.value}, only dead ones are retried",
            "再送できるのは配信失敗(dead)の配信のみです。",
        )
    delivery.state = DeliveryState.PENDING
    delivery.attempts = 0
    delivery.next_attempt_at = utcnow()
    record_event(
        session=session,
        action="outbox.retry",
        actor=actor,
        envelope_id=delivery.envelope_id,
        ip=ip,
        detail={"delivery": delivery.id, "target": delivery.target},
    )
    session.commit()
    return delivery


def get_delivery(*, session: Session, delivery_id: int) -> Delivery:
    """One delivery, or ``not_found.delivery``."""
    delivery = session.get(Delivery, delivery_id, populate_existing=True)
    if delivery is None:
        raise NotFoundError(
            "not_found.delivery", f"no delivery {delivery_id}", "配信が見つかりません。"
        )
    return delivery


def list_deliveries(
    *,
    session: Session,
    state: DeliveryState | None = None,
    limit: int = 100,
    target: str | None = None,
    envelope_id: str | None = None,
    offset: int = 0,
) -> Sequence[Delivery]:
    """Deliveries, newest first, optionally in one state, to one target, of one envelope."""
    query = select(Delivery).order_by(Delivery.id.desc()).limit(limit).offset(offset)
    if state is not None:
        query = query.where(Delivery.state == state.value)
    if target is not None:
        query = query.where(Delivery.target == target)
    if envelope_id is not None:
        query = query.where(Delivery.envelope_id == envelope_id)
    return session.scalars(query).all()


def count_deliveries(*, session: Session, target: str | None = None) -> dict[DeliveryState, int]:
    """How many deliveries are in each state (every state present, zero included)."""
    query = select(Delivery.state, func.count()).group_by(Delivery.state)
    if target is not None:
        query = query.where(Delivery.target == target)
    counts = dict.fromkeys(DeliveryState, 0)
    for state, count in session.execute(query):
        counts[DeliveryState(state)] = int(count)
    return counts


def list_targets(*, session: Session) -> list[str]:
    """The targets that have deliveries, by name."""
    return list(session.scalars(select(Delivery.target).distinct().order_by(Delivery.target)))


Handler = Callable[[Delivery], None]


@dataclass
class DispatchResult:
    """What one dispatch pass did."""

    delivered: list[int] = field(default_factory=list)
    retrying: list[int] = field(default_factory=list)
    dead: list[int] = field(default_factory=list)
    lost: list[int] = field(default_factory=list)
    released: list[int] = field(default_factory=list)  # given back unpushed at a shutdown


def release_leases(
    *, session: Session, worker: str, delivery_ids: Sequence[int] | None = None
) -> int:
    """Give back deliveries ``worker`` leased and has not pushed (all of them, or only
    ``delivery_ids``): due again at once, the claim's attempt not counted. Commits."""
    condition = and_(Delivery.state == DeliveryState.LEASED.value, Delivery.lease_owner == worker)
    if delivery_ids is not None:
        condition = and_(condition, Delivery.id.in_(list(delivery_ids)))
    result = session.execute(
        update(Delivery)
        .where(condition)
        .values(
            state=DeliveryState.PENDING.value,
            lease_owner=None,
            lease_expires_at=None,
            next_attempt_at=utcnow(),
            attempts=Delivery.attempts - 1,
        )
        .execution_options(synchronize_session=False)
    )
    session.commit()
    released = int(result.rowcount)  # type: ignore[attr-defined]
    if released:
        log.info("%s gave back %d leased deliveries", worker, released)
    return released


def dispatch(
    *,
    sessions: sessionmaker[Session],
    handlers: Mapping[str, Handler],
    worker: str,
    policy: RetryPolicy | None = None,
    limit: int = 20,
    lease: dt.timedelta = dt.timedelta(minutes=5),
    stop: Callable[[], bool] | None = None,
    prepare: Callable[[Sequence[Delivery]], None] | None = None,
) -> DispatchResult:
    """Claim due deliveries for the known targets, push each with its handler, record the outcome.

    A handler raises :class:`GatewayError` (retriable or not) on failure; any other exception is
    treated as retriable, since a bug or an outage should not silently drop a delivery. When
    ``stop`` turns true (a shutdown), the delivery in flight finishes and the rest of the batch
    is given back at once (:func:`release_leases`) instead of waiting for its leases to expire.
    ``prepare`` is called with the claimed batch before the first push (e.g. to read the
    batch's rows at once).
    """
    policy = policy or RetryPolicy()
    result = DispatchResult()
    with sessions() as session:
        batch = claim(
            session=session, worker=worker, limit=limit, lease=lease, targets=list(handlers)
        )
        if prepare is not None and batch:
            prepare(batch)
        for index, delivery in enumerate(batch):
            if stop is not None and stop():
                rest = [d.id for d in batch[index:]]
                result.released.extend(rest)
                release_leases(session=session, worker=worker, delivery_ids=rest)
                break
            try:
                handlers[delivery.target](delivery)
            except GatewayError as exc:
                state = mark_failed(
                    session=session,
                    delivery=delivery,
                    worker=worker,
                    error=f"{exc.code}: {exc.message_en}",
                    retriable=exc.retriable,
                    policy=policy,
                )
                (result.dead if state is DeliveryState.DEAD else result.retrying).append(
                    delivery.id
                )
                log.warning("delivery %s to %s failed: %s", delivery.id, delivery.target, exc)
                continue
            except Exception as exc:  # recorded and retried, never dropped
                state = mark_failed(
                    session=session,
                    delivery=delivery,
                    worker=worker,
                    error=f"{type(exc).__name__}: {exc}",
                    retriable=True,
                    policy=policy,
                )
                (result.dead if state is DeliveryState.DEAD else result.retrying).append(
                    delivery.id
                )
                log.exception("delivery %s to %s raised", delivery.id, delivery.target)
                continue
            if mark_delivered(session=session, delivery=delivery, worker=worker):
                result.delivered.append(delivery.id)
            else:
                result.lost.append(delivery.id)
    return result
