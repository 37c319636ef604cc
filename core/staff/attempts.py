"""Attempt counters for every guessable secret: staff password and TOTP, access code, API token.

One rule for all of them but the API token (below), so parallel guesses from several processes
or nodes cannot exceed a limit: an attempt is *reserved* before the secret is compared, with one
conditional ``UPDATE`` that adds one to the counter only while the row is open (not locked) and
below the limit, and returns the count it made (``RETURNING``, read atomically with the
increment). The caller commits the reservation, then compares the secret:

- wrong, and the reservation reached the limit → :func:`lock_counter` (only the first such attempt
  records the lock);
- right → :func:`settle_success` gives the attempt back (or clears the count) *only while the
  row is still open*: a success whose row was locked meanwhile by a parallel wrong guess does not
  log in and does not clear the lock.

An attempt that finds no reservation is refused without comparing anything.

The API token (:func:`core.staff.api_clients.authenticate`) is looked up before any attempt is
reserved: the lookup is an indexed read of 256 random bits, not a slow hash, so there is no
costly comparison to ration. A locked address is refused before the lookup, as above. A wrong
token then reserves its attempt, and only the reservation decides its answer and the lock; a
right one has only read that its row admits an attempt (:func:`admits`), so an authenticated
call writes nothing.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any

from sqlalchemy import ColumnElement, and_, literal, not_, select, update
from sqlalchemy.dialects.postgresql import insert as postgresql_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.orm import InstrumentedAttribute, Session

from core.model import AuthThrottle

__all__ = [
    "AttemptCounter",
    "address_counter",
    "admits",
    "lock_counter",
    "lock_if_over_limit",
    "reserve_attempt",
    "settle_success",
    "throttle_counter",
]


@dataclass(frozen=True)
class AttemptCounter:
    """Where one secret's attempts are counted: the row (``where``), its counter column, the
    condition under which the row is open (not locked) and the limit of reserved attempts."""

    where: ColumnElement[bool]
    count: InstrumentedAttribute[int]
    open: ColumnElement[bool]
    limit: int

    @property
    def _entity(self) -> Any:
        return self.count.class_


def reserve_attempt(*, session: Session, counter: AttemptCounter) -> int | None:
    """Reserve one attempt; the count it made (1..limit), or None when the row is locked or
    its attempts are used up (then compare nothing). The caller commits before comparing."""
    result = session.execute(
        update(counter._entity)
        .where(counter.where, counter.open, counter.count < counter.limit)
        .values({counter.count: counter.count + 1})
        .returning(counter.count)
        .execution_options(synchronize_session=False)
    )
    value = result.scalar_one_or_none()
    return int(value) if value is not None else None


def settle_success(
    *, session: Session, counter: AttemptCounter, values: Mapping[Any, Any] | None = None
) -> bool:
    """After the right secret: give the reserved attempt back (or apply ``values``, e.g. a
    reset to 0) while the row is still open. False when a lock was recorded meanwhile: the
    success must then be refused, and the lock stays."""
    result = session.execute(
        update(counter._entity)
        .where(counter.where, counter.open)
        .values(dict(values) if values is not None else {counter.count: counter.count - 1})
        .execution_options(synchronize_session=False)
    )
    return int(result.rowcount) == 1  # type: ignore[attr-defined]


def lock_counter(*, session: Session, counter: AttemptCounter, values: Mapping[Any, Any]) -> bool:
    """Record a lock (``values``: e.g. ``locked_at`` or ``locked_until``) unless the row is
    locked already; True for the one attempt that recorded it."""
    result = session.execute(
        update(counter._entity)
        .where(counter.where, counter.open)
        .values(dict(values))
        .execution_options(synchronize_session=False)
    )
    return int(result.rowcount) == 1  # type: ignore[attr-defined]


def admits(*, session: Session, counter: AttemptCounter) -> bool:
    """Whether the row is open and below its limit (as :func:`reserve_attempt` requires), read
    without writing; True when there is no row yet. Only for a secret whose comparison needs no
    counting of its own (see the module's note on the API token)."""
    blocked = session.scalar(
        select(literal(1)).where(
            counter.where, not_(and_(counter.open, counter.count < counter.limit))
        )
    )
    return blocked is None


def lock_if_over_limit(
    *, session: Session, counter: AttemptCounter, values: Mapping[Any, Any]
) -> bool:
    """Record a lock (``values``) on a row that is open but holds *more* attempts than its limit,
    which only a limit lowered since they were counted leaves: no attempt can be reserved on it,
    so none would ever lock it and it would be refused for good. A row exactly at its limit is
    left alone: the attempt that reached the limit may still be comparing, and it records the
    lock itself. True when this call recorded it."""
    over = replace(counter, where=and_(counter.where, counter.count > counter.limit))
    return lock_counter(session=session, counter=over, values=values)


def address_counter(*, key: str, limit: int, now: dt.datetime) -> AttemptCounter:
    """The counter keyed ``key`` in the throttle table, whether or not its row exists yet."""
    return AttemptCounter(
        where=AuthThrottle.key == key,
        count=AuthThrottle.failures,
        open=(AuthThrottle.locked_until.is_(None)) | (AuthThrottle.locked_until <= now),
        limit=limit,
    )


def throttle_counter(*, session: Session, key: str, limit: int, now: dt.datetime) -> AttemptCounter:
    """The counter of a secret that has no row of its own to count on (an API token: an unknown
    token names no client), keyed e.g. by the caller's address; the row is made on first use."""
    if session.scalar(select(AuthThrottle.key).where(AuthThrottle.key == key)) is None:
        dialect = session.get_bind().dialect.name
        make = postgresql_insert if dialect == "postgresql" else sqlite_insert
        # ON CONFLICT DO NOTHING: two processes making the same row at once both go on.
        session.execute(
            make(AuthThrottle)
            .values(key=key, failures=0, locked_until=None)
            .on_conflict_do_nothing(index_elements=["key"])
        )
    return address_counter(key=key, limit=limit, now=now)
