"""Staff sessions kept on the server: a login is a :class:`~core.model.StaffSession` row.

The browser holds a random token (256 bits, in a signed cookie); the database holds only its
SHA-256, so a copy of the table opens nothing. A session is good while its row is not ended, its
absolute lifetime has not run out, it has been used within the idle timeout, and its staff member
is enabled. Logout ends the row, so a copied cookie stops working at once; a password change,
disabling the account or an admin's "end sessions" ends every row of that staff member.

Use slides ``last_seen_at`` at most once per :attr:`SessionPolicy.touch_every`, so a busy page
does not write on every request (the idle timeout may so strike up to that much early). Rows
that stopped being valid are deleted a week later, at a later login (:func:`purge_sessions`).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import secrets
from dataclasses import dataclass

from sqlalchemy import ColumnElement, delete, func, or_, select, update
from sqlalchemy.orm import Session

from core.model import Staff, StaffSession, utcnow
from core.records.audit import record_event

__all__ = [
    "KEEP_ENDED",
    "SessionPolicy",
    "count_live_sessions",
    "end_session",
    "end_staff_sessions",
    "purge_sessions",
    "resume_session",
    "start_session",
]

# How long a session row is kept after it ended or lapsed (for looking into an incident).
KEEP_ENDED = dt.timedelta(days=7)


@dataclass(frozen=True)
class SessionPolicy:
    """How long a staff session lasts."""

    lifetime: dt.timedelta = dt.timedelta(hours=1)  # from login, whatever the use
    idle: dt.timedelta = dt.timedelta(minutes=30)  # since the last request
    touch_every: dt.timedelta = dt.timedelta(minutes=1)  # least time between last_seen_at writes


def _key(token: str) -> str:
    # 256 random bits need no salt: the hash only keeps a database copy from opening sessions.
    return hashlib.sha256(token.encode("ascii", "replace")).hexdigest()


def start_session(
    *,
    session: Session,
    staff: Staff,
    policy: SessionPolicy,
    ip: str | None = None,
    now: dt.datetime | None = None,
) -> str:
    """Open a session for ``staff`` after a good login; returns the token for the cookie (only
    its hash is stored). Also deletes long-dead rows. The caller commits."""
    now = now or utcnow()
    purge_sessions(session=session, now=now)
    token = secrets.token_urlsafe(32)
    session.add(
        StaffSession(
            id=_key(token),
            staff_id=staff.id,
            created_at=now,
            last_seen_at=now,
            expires_at=now + policy.lifetime,
            ip=(ip or "")[:64] or None,
        )
    )
    return token


def _live(policy: SessionPolicy, now: dt.datetime) -> list[ColumnElement[bool]]:
    return [
        StaffSession.ended_at.is_(None),
        StaffSession.expires_at > now,
        StaffSession.last_seen_at > now - policy.idle,
    ]


def resume_session(
    *,
    session: Session,
    token: str | None,
    policy: SessionPolicy,
    now: dt.datetime | None = None,
) -> Staff | None:
    """The enabled staff member whose live session ``token`` opens, or None. Slides the idle
    timeout and, when it did, commits at once (so no write lock is held for the request)."""
    if not token:
        return None
    now = now or utcnow()
    key = _key(token)
    row = session.execute(
        select(StaffSession, Staff)
        .join(Staff, Staff.id == StaffSession.staff_id)
        .where(StaffSession.id == key, Staff.disabled.is_(False), *_live(policy, now))
    ).one_or_none()
    if row is None:
        return None
    staff_session, staff = row
    if now - staff_session.last_seen_at >= policy.touch_every:
        session.execute(
            update(StaffSession)
            .where(StaffSession.id == key, StaffSession.last_seen_at < now)
            .values(last_seen_at=now)
            .execution_options(synchronize_session=False)
        )
        session.commit()
    return staff


def end_session(*, session: Session, token: str | None, now: dt.datetime | None = None) -> bool:
    """End the session ``token`` opens (logout); False when it was not open. The caller commits."""
    if not token:
        return False
    result = session.execute(
        update(StaffSession)
        .where(StaffSession.id == _key(token), StaffSession.ended_at.is_(None))
        .values(ended_at=now or utcnow())
        .execution_options(synchronize_session=False)
    )
    return bool(result.rowcount)  # type: ignore[attr-defined]


def end_staff_sessions(
    *,
    session: Session,
    staff: Staff,
    actor: str,
    ip: str | None = None,
    now: dt.datetime | None = None,
) -> int:
    """End every open session of ``staff`` (password changed, account disabled, or an admin's
    order); records ``staff.sessions_ended`` when there was one. Returns how many ended."""
    if staff.id is None:  # not inserted yet: it cannot have a session
        return 0
    result = session.execute(
        update(StaffSession)
        .where(StaffSession.staff_id == staff.id, StaffSession.ended_at.is_(None))
        .values(ended_at=now or utcnow())
        .execution_options(synchronize_session=False)
    )
    ended = int(result.rowcount)  # type: ignore[attr-defined]
    if ended:
        record_event(
            session=session,
            action="staff.sessions_ended",
            actor=actor,
            ip=ip,
            detail={"email": staff.email, "sessions": ended},
        )
    return ended


def count_live_sessions(
    *, session: Session, policy: SessionPolicy, now: dt.datetime | None = None
) -> dict[str, int]:
    """How many live sessions each staff member has (staff id → count; none: absent)."""
    now = now or utcnow()
    rows = session.execute(
        select(StaffSession.staff_id, func.count())
        .where(*_live(policy, now))
        .group_by(StaffSession.staff_id)
    )
    return {staff_id: int(count) for staff_id, count in rows}


def purge_sessions(*, session: Session, now: dt.datetime | None = None) -> int:
    """Delete the rows that ended or lapsed more than :data:`KEEP_ENDED` ago."""
    cutoff = (now or utcnow()) - KEEP_ENDED
    result = session.execute(
        delete(StaffSession)
        .where(or_(StaffSession.ended_at < cutoff, StaffSession.expires_at < cutoff))
        .execution_options(synchronize_session=False)
    )
    return int(result.rowcount)  # type: ignore[attr-defined]
