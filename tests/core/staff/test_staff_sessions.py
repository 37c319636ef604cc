"""Server-side staff sessions: logout, idle timeout, absolute lifetime, the once-a-minute touch,
and the events that end every session of a staff member (password, disabling, import, admin)."""

from __future__ import annotations

import datetime as dt
import hashlib

from sqlalchemy import select
from sqlalchemy.orm import Session

from core.model import AuditEvent, StaffSession
from core.staff.accounts import (
    PasswordPolicy,
    apply_import,
    plan_import,
    set_password,
    update_staff,
)
from core.staff.sessions import (
    KEEP_ENDED,
    SessionPolicy,
    count_live_sessions,
    end_session,
    end_staff_sessions,
    resume_session,
    start_session,
)
from tests.fixtures.staff import make_staff

POLICY = SessionPolicy(lifetime=dt.timedelta(hours=8), idle=dt.timedelta(minutes=30))
T0 = dt.datetime(2026, 4, 1, 9, tzinfo=dt.UTC)
GOOD = "Kei-yaku-2026!"


def _row(session: Session, token: str) -> StaffSession:
    row = session.get(
        StaffSession, hashlib.sha256(token.encode()).hexdigest(), populate_existing=True
    )
    assert row is not None
    return row


def test_only_the_hash_is_stored_and_logout_ends_it(session: Session) -> None:
    staff = make_staff(session, "tanaka@city.example.jp")
    token = start_session(session=session, staff=staff, policy=POLICY, ip="192.0.2.1", now=T0)
    session.commit()
    assert len(token) >= 43  # 256 bits
    assert session.get(StaffSession, token) is None  # the token itself is nowhere
    row = _row(session, token)
    assert (row.staff_id, row.ip, row.expires_at) == (staff.id, "192.0.2.1", T0 + POLICY.lifetime)
    assert resume_session(session=session, token=token, policy=POLICY, now=T0) is staff
    assert end_session(session=session, token=token, now=T0) is True
    session.commit()
    assert resume_session(session=session, token=token, policy=POLICY, now=T0) is None
    assert end_session(session=session, token=token, now=T0) is False  # already ended
    for bad in (None, "", "not-a-token"):
        assert resume_session(session=session, token=bad, policy=POLICY, now=T0) is None


def test_idle_timeout_slides_but_the_lifetime_does_not(session: Session) -> None:
    staff = make_staff(session, "tanaka@city.example.jp")
    token = start_session(session=session, staff=staff, policy=POLICY, now=T0)
    session.commit()
    # Used within a minute: no write.
    assert resume_session(
        session=session, token=token, policy=POLICY, now=T0 + dt.timedelta(seconds=50)
    )
    assert _row(session, token).last_seen_at == T0
    # Used every 29 minutes: stays open, each use moves the idle deadline on.
    moment = T0
    while moment + dt.timedelta(minutes=29) < T0 + POLICY.lifetime:
        moment += dt.timedelta(minutes=29)
        assert resume_session(session=session, token=token, policy=POLICY, now=moment) is staff
        assert _row(session, token).last_seen_at == moment
    # The absolute lifetime ends it however busy it is.
    after = T0 + POLICY.lifetime + dt.timedelta(seconds=1)
    assert resume_session(session=session, token=token, policy=POLICY, now=after) is None

    idle = start_session(session=session, staff=staff, policy=POLICY, now=T0)
    session.commit()
    late = T0 + POLICY.idle + dt.timedelta(seconds=1)
    assert resume_session(session=session, token=idle, policy=POLICY, now=late) is None
    assert _row(session, idle).last_seen_at == T0  # a refused use does not slide it


def test_disabling_ends_sessions_for_good(session: Session) -> None:
    staff = make_staff(session, "tanaka@city.example.jp")
    token = start_session(session=session, staff=staff, policy=POLICY, now=T0)
    session.commit()
    update_staff(session=session, staff=staff, actor="admin@city.example.jp", disabled=True)
    session.commit()
    assert resume_session(session=session, token=token, policy=POLICY, now=T0) is None
    update_staff(session=session, staff=staff, actor="admin@city.example.jp", disabled=False)
    session.commit()
    assert resume_session(session=session, token=token, policy=POLICY, now=T0) is None
    assert _row(session, token).ended_at is not None


def test_password_change_and_admin_end_every_session(session: Session) -> None:
    staff = make_staff(session, "tanaka@city.example.jp")
    other = make_staff(session, "sato@city.example.jp")
    tokens = [start_session(session=session, staff=staff, policy=POLICY) for _ in range(2)]
    kept = start_session(session=session, staff=other, policy=POLICY)
    session.commit()
    assert count_live_sessions(session=session, policy=POLICY) == {staff.id: 2, other.id: 1}
    set_password(
        session=session,
        staff=staff,
        password=GOOD,
        policy=PasswordPolicy(),
        actor="cli:root",  # who set it is who ended the sessions
    )
    session.commit()
    assert all(resume_session(session=session, token=t, policy=POLICY) is None for t in tokens)
    assert resume_session(session=session, token=kept, policy=POLICY) is other
    assert end_staff_sessions(session=session, staff=other, actor="admin@city.example.jp") == 1
    session.commit()
    assert resume_session(session=session, token=kept, policy=POLICY) is None
    events = session.execute(
        select(AuditEvent.actor, AuditEvent.detail)
        .where(AuditEvent.action == "staff.sessions_ended")
        .order_by(AuditEvent.id)
    ).all()
    assert [(actor, detail["sessions"]) for actor, detail in events] == [
        ("cli:root", 2),
        ("admin@city.example.jp", 1),
    ]
    # Nothing open: nothing to record.
    assert end_staff_sessions(session=session, staff=other, actor="admin@city.example.jp") == 0


def test_an_import_that_disables_ends_sessions(session: Session) -> None:
    staff = make_staff(session, "tanaka@city.example.jp")
    make_staff(session, "sato@city.example.jp")
    token = start_session(session=session, staff=staff, policy=POLICY)
    session.commit()
    data = "name,department,email,roles,scope\n佐藤,契約課,sato@city.example.jp,sender,own\n"
    plan, lines = plan_import(session=session, data=data.encode(), disable_missing=True)
    assert [d["email"] for d in plan.disabled] == ["tanaka@city.example.jp"]
    apply_import(session=session, plan=plan, lines=lines, actor="api:personnel")
    session.commit()
    assert resume_session(session=session, token=token, policy=POLICY) is None


def test_old_rows_are_purged_at_the_next_login(session: Session) -> None:
    staff = make_staff(session, "tanaka@city.example.jp")
    lapsed = start_session(session=session, staff=staff, policy=POLICY, now=T0)
    ended = start_session(session=session, staff=staff, policy=POLICY, now=T0)
    end_session(session=session, token=ended, now=T0 + dt.timedelta(hours=1))
    session.commit()

    def kept() -> set[str]:
        return set(session.scalars(select(StaffSession.id)))

    def login(at: dt.datetime) -> str:
        token = start_session(session=session, staff=staff, policy=POLICY, now=at)
        session.commit()
        return hashlib.sha256(token.encode()).hexdigest()

    lapsed_id, ended_id = (_row(session, t).id for t in (lapsed, ended))
    first = login(T0 + dt.timedelta(hours=1) + KEEP_ENDED - dt.timedelta(minutes=1))
    assert kept() == {lapsed_id, ended_id, first}  # a week after it ended, not yet
    second = login(T0 + dt.timedelta(hours=1) + KEEP_ENDED + dt.timedelta(minutes=1))
    assert kept() == {lapsed_id, first, second}
    third = login(T0 + POLICY.lifetime + KEEP_ENDED + dt.timedelta(minutes=1))
    assert kept() == {first, second, third}
