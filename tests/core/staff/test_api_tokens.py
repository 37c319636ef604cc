"""API tokens: wrong ones counted per caller address, a locked address refused whatever token it
holds, a right one authenticated without writing (SQLite and PostgreSQL). The parallel guesses
over HTTP are in tests/gateway/test_guessing.py."""

from __future__ import annotations

import datetime as dt

import pytest
from sqlalchemy import select, update
from sqlalchemy.orm import Session, sessionmaker

from core.errors import AuthError
from core.model import AuditEvent, AuthThrottle
from core.staff.api_clients import TokenPolicy, authenticate, create_api_client

POLICY = TokenPolicy(max_failures=5, lockout=dt.timedelta(minutes=15))
IP = "192.0.2.7"
T0 = dt.datetime(2026, 4, 1, 0, 30, tzinfo=dt.UTC)
WRONG = "kgw_" + "x" * 43


def _token(sessions: sessionmaker[Session]) -> str:
    with sessions() as session:
        _client, token = create_api_client(session=session, name="e-bidding")
        session.commit()
    return token


def _call(sessions: sessionmaker[Session], token: str, now: dt.datetime) -> str:
    """What one call is answered: the client's name, or the refusal's code."""
    with sessions() as session:
        try:
            return authenticate(session=session, token=token, ip=IP, policy=POLICY, now=now).name
        except AuthError as exc:
            return exc.code


def _row(sessions: sessionmaker[Session]) -> tuple[int, dt.datetime | None] | None:
    with sessions() as session:
        row = session.execute(select(AuthThrottle.failures, AuthThrottle.locked_until)).first()
        return None if row is None else (row[0], row[1])


def _actions(sessions: sessionmaker[Session]) -> list[str]:
    with sessions() as session:
        return list(session.scalars(select(AuditEvent.action)))


def test_a_right_token_writes_nothing_and_a_wrong_one_is_counted(
    sessions: sessionmaker[Session],
) -> None:
    good = _token(sessions)
    for _ in range(3):
        assert _call(sessions, good, T0) == "e-bidding"
    assert _row(sessions) is None  # not even the address's row was made
    assert _call(sessions, WRONG, T0) == "auth.invalid_token"
    assert _call(sessions, good, T0) == "e-bidding"
    row = _row(sessions)
    assert row is not None and row[0] == 1  # the right token neither took nor gave back


def test_a_locked_address_refuses_the_right_token_until_the_lock_ends(
    sessions: sessionmaker[Session],
) -> None:
    good = _token(sessions)
    answers = [_call(sessions, f"{WRONG[:-1]}{i}", T0) for i in range(POLICY.max_failures)]
    assert answers == ["auth.invalid_token"] * POLICY.max_failures
    assert _actions(sessions).count("api.lockout") == 1
    before_end = T0 + POLICY.lockout - dt.timedelta(seconds=1)
    assert _call(sessions, good, before_end) == "auth.invalid_token"
    assert _call(sessions, WRONG, before_end) == "auth.invalid_token"
    assert _actions(sessions).count("api.locked") == 2
    assert _call(sessions, good, T0 + POLICY.lockout) == "e-bidding"


@pytest.mark.parametrize("failures", [5, 9])
def test_failures_over_a_lowered_limit_lock_the_address_for_the_lockout_only(
    sessions: sessionmaker[Session], failures: int
) -> None:
    """Failures counted under a higher ``max_failed_tokens`` (or any row over the limit without
    a lock): the address is locked for one lockout from the next call, not refused for good."""
    good = _token(sessions)
    assert _call(sessions, WRONG, T0) == "auth.invalid_token"  # makes the address's row
    with sessions() as session:
        session.execute(update(AuthThrottle).values(failures=failures, locked_until=None))
        session.commit()
    later = T0 + dt.timedelta(days=30)
    assert _call(sessions, good, later) == "auth.invalid_token"
    row = _row(sessions)
    assert row is not None and row[0] == 0 and row[1] is not None
    assert _call(sessions, good, later + POLICY.lockout - dt.timedelta(seconds=1)) == (
        "auth.invalid_token"
    )
    assert _call(sessions, good, later + POLICY.lockout) == "e-bidding"
