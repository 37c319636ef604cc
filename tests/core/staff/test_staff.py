"""Staff records, passwords, lockout, TOTP and the CSV import."""

from __future__ import annotations

import datetime as dt
import threading

import pyotp
import pytest
from sqlalchemy import select, update
from sqlalchemy.orm import Session, sessionmaker

import core.staff.accounts as staff_module
from core.errors import StaffError
from core.model import AuditEvent, Staff, VisibilityScope
from core.staff.accounts import (
    LoginOutcome,
    PasswordPolicy,
    add_staff,
    apply_import,
    authenticate,
    check_password,
    enable_totp,
    plan_import,
    set_password,
    update_staff,
)
from core.storage import transaction

POLICY = PasswordPolicy(max_failures=3, lockout=dt.timedelta(minutes=10))
GOOD = "Kei-yaku-2026!"


def test_password_policy() -> None:
    check_password(GOOD, policy=POLICY)
    check_password("correct horse battery staple", policy=POLICY)  # a long passphrase
    for bad in ("Short1!", "alllowercaseletters", "Tanaka-2026!xyz"):
        with pytest.raises(StaffError) as caught:
            check_password(bad, policy=POLICY, email="tanaka@city.example.jp")
        assert caught.value.code == "staff.weak_password"
    # Common passwords pass the length and class rules but not zxcvbn.
    for common in ("Password123!", "P@ssw0rd2026!", "Qwerty123456!", "Iloveyou2026!"):
        with pytest.raises(StaffError) as caught:
            check_password(common, policy=POLICY, email="tanaka@city.example.jp")
        assert caught.value.code == "staff.weak_password"
        assert "推測されやすい" in caught.value.message_ja


def _staff(session: Session) -> Staff:
    staff = add_staff(
        session=session,
        name="田中 一郎",
        email="Tanaka@City.example.jp",
        roles="sender; signer",
        scope="部署",
        department="契約課",
        actor="test",
    )
    set_password(
        session=session, staff=staff, password=GOOD, policy=POLICY, actor="admin@city.example.jp"
    )
    return staff


def test_add_and_edit(session: Session) -> None:
    staff = _staff(session)
    assert (staff.email, staff.roles, staff.scope) == (
        "tanaka@city.example.jp",
        "sender,signer",
        VisibilityScope.DEPARTMENT,
    )
    assert staff.password_hash and staff.password_hash.startswith("$argon2id$")
    assert update_staff(
        session=session, staff=staff, actor="t", roles="admin", name="田中 一郎"
    ) == {"roles": "admin"}
    with pytest.raises(StaffError, match="exists"):
        add_staff(
            session=session,
            name="x",
            email="tanaka@city.example.jp",
            roles="signer",
            scope="own",
            actor="t",
        )
    with pytest.raises(StaffError, match="unknown role"):
        update_staff(session=session, staff=staff, actor="t", roles="root")


def _authenticate(sessions: sessionmaker[Session], **kwargs: object) -> LoginOutcome:
    """One login on a fresh session (authenticate commits the reserved attempt itself)."""
    with sessions() as session:
        outcome = authenticate(
            session=session, email="tanaka@city.example.jp", policy=POLICY, **kwargs
        )
        session.commit()
        return outcome


def test_lockout_is_counted_in_the_database(sessions: sessionmaker[Session]) -> None:
    with transaction(sessions) as session:
        _staff(session)
    now = dt.datetime(2026, 4, 1, 9, tzinfo=dt.UTC)
    for _attempt in range(3):
        outcome = _authenticate(sessions, password="wrong", now=now, ip="192.0.2.1")
        # The failure that locks answers like any other: nothing tells that the account exists.
        assert outcome.error is not None and outcome.error.code == "auth.login_failed"
    # The right password is refused while locked, with the same answer, and the lock stays.
    outcome = _authenticate(sessions, password=GOOD, now=now + dt.timedelta(minutes=5))
    assert outcome.error is not None and outcome.error.code == "auth.login_failed"
    with sessions() as session:
        assert session.scalar(select(Staff.locked_until)) == now + POLICY.lockout
    outcome = _authenticate(sessions, password=GOOD, now=now + dt.timedelta(minutes=11))
    assert outcome.staff is not None
    with sessions() as session:
        actions = session.scalars(select(AuditEvent.action).order_by(AuditEvent.chain_seq)).all()
    assert actions[-6:] == [
        "login.failed",
        "login.failed",
        "login.lockout",
        "login.failed",
        "login.locked",
        "login",
    ]


def test_failures_over_a_lowered_limit_lock_the_account_for_the_lockout_only(
    sessions: sessionmaker[Session],
) -> None:
    """Failures counted under a higher ``max_failures`` and no lock: the account is locked for
    one lockout from the next login, not refused for good (no attempt could be reserved, so
    none ever locked it)."""
    with transaction(sessions) as session:
        _staff(session)
        session.execute(update(Staff).values(failed_logins=POLICY.max_failures + 4))
    now = dt.datetime(2026, 4, 1, 9, tzinfo=dt.UTC)
    outcome = _authenticate(sessions, password=GOOD, now=now)
    assert outcome.error is not None and outcome.error.code == "auth.login_failed"
    with sessions() as session:
        assert session.scalar(select(Staff.locked_until)) == now + POLICY.lockout
        assert session.scalar(select(Staff.failed_logins)) == 0
    outcome = _authenticate(sessions, password=GOOD, now=now + POLICY.lockout)
    assert outcome.staff is not None


def test_a_lock_recorded_while_the_right_password_is_checked_wins(
    sessions: sessionmaker[Session], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The right password's attempt was reserved before a parallel wrong one locked the
    account: it does not log in and does not clear the lock."""
    with transaction(sessions) as session:
        _staff(session)
    now = dt.datetime(2026, 4, 1, 9, tzinfo=dt.UTC)
    _authenticate(sessions, password="wrong", now=now)
    real = staff_module._HASHER

    class LockWhileChecking:
        """The real hasher, but the locking guess lands while the right password is checked."""

        def __getattr__(self, name: str) -> object:
            return getattr(real, name)

        def verify(self, stored: str, password: str) -> bool:
            if password == GOOD:
                assert _authenticate(sessions, password="wrong", now=now).staff is None
            return bool(real.verify(stored, password))

    # Two attempts are left: the right password reserves one, the wrong guess the last.
    monkeypatch.setattr(staff_module, "_HASHER", LockWhileChecking())
    outcome = _authenticate(sessions, password=GOOD, now=now)
    assert outcome.staff is None
    assert outcome.error is not None and outcome.error.code == "auth.login_failed"
    with sessions() as session:
        assert session.scalar(select(Staff.locked_until)) == now + POLICY.lockout


def test_unknown_and_disabled_staff_get_the_same_answer(session: Session) -> None:
    staff = _staff(session)
    unknown = authenticate(
        session=session, email="nobody@city.example.jp", password=GOOD, policy=POLICY
    )
    staff.disabled = True
    disabled = authenticate(session=session, email=staff.email, password=GOOD, policy=POLICY)
    assert unknown.error is not None and disabled.error is not None
    assert unknown.error.as_dict() == disabled.error.as_dict()


def test_totp(session: Session) -> None:
    staff = _staff(session)
    uri = enable_totp(session=session, staff=staff, issuer="開発市", actor=staff.email)
    assert uri.startswith("otpauth://totp/")
    assert staff.totp_secret
    now = dt.datetime(2026, 4, 1, 9, tzinfo=dt.UTC)
    code = pyotp.TOTP(staff.totp_secret).at(now)
    without = authenticate(
        session=session, email=staff.email, password=GOOD, policy=POLICY, now=now
    )
    assert without.error is not None
    ok = authenticate(
        session=session, email=staff.email, password=GOOD, policy=POLICY, totp_code=code, now=now
    )
    assert ok.staff is staff


def _login(session: Session, code: str, now: dt.datetime) -> str | None:
    """The error code of a login with ``code`` (None: logged in)."""
    outcome = authenticate(
        session=session,
        email="tanaka@city.example.jp",
        password=GOOD,
        policy=POLICY,
        totp_code=code,
        now=now,
    )
    return outcome.error.code if outcome.error else None


def test_a_one_time_code_is_good_once(sessions: sessionmaker[Session]) -> None:
    with transaction(sessions) as session:
        staff = _staff(session)
        enable_totp(session=session, staff=staff, issuer="開発市", actor=staff.email)
        totp = pyotp.TOTP(staff.totp_secret)
    now = dt.datetime(2026, 4, 1, 9, 0, 5, tzinfo=dt.UTC)
    code = totp.at(now)
    with sessions() as session:
        assert _login(session, code, now) is None
        session.commit()
    with sessions() as session:  # the same code again, still inside its window
        assert _login(session, code, now + dt.timedelta(seconds=10)) == "auth.totp_reused"
        session.commit()
    with sessions() as session:  # the previous step's code is older still
        assert _login(session, totp.at(now - dt.timedelta(seconds=30)), now) == "auth.totp_reused"
        session.commit()
    with sessions() as session:  # each refusal counts towards the lockout
        assert session.scalar(select(Staff.failed_logins)) == 2
    later = now + dt.timedelta(seconds=30)
    with sessions() as session:  # the next code works
        assert _login(session, totp.at(later), later) is None
        session.commit()
    window = {totp.at(later + dt.timedelta(seconds=30 * i)) for i in (-1, 0, 1)}
    wrong = next(c for c in ("000000", "111111", "222222", "333333") if c not in window)
    with sessions() as session:  # and a wrong one is only wrong
        assert _login(session, wrong, later) == "auth.login_failed"
        session.commit()
    with sessions() as session:
        stored = session.scalars(select(Staff).where(Staff.email == "tanaka@city.example.jp")).one()
        assert stored.totp_last_step == totp.timecode(later)
        actions = session.scalars(select(AuditEvent.action).order_by(AuditEvent.id)).all()
    assert actions.count("login.totp_reused") == 2
    assert actions.count("login") == 2


def test_two_logins_with_one_code_cannot_both_win(sessions: sessionmaker[Session]) -> None:
    """Two nodes check the same code at once: the second waits for the first's row and then
    finds the step taken (PostgreSQL: the row lock; SQLite: the database write lock)."""
    with transaction(sessions) as session:
        staff = _staff(session)
        enable_totp(session=session, staff=staff, issuer="開発市", actor=staff.email)
        secret = staff.totp_secret
    assert secret
    now = dt.datetime(2026, 4, 1, 9, 0, 5, tzinfo=dt.UTC)
    code = pyotp.TOTP(secret).at(now)
    first = sessions()
    assert _login(first, code, now) is None  # not committed yet: holds the row
    outcome: list[str | None] = []

    def second() -> None:
        with sessions() as session:
            outcome.append(_login(session, code, now))
            session.commit()

    thread = threading.Thread(target=second)
    thread.start()
    thread.join(timeout=1.5)
    assert thread.is_alive() and outcome == []  # waiting for the first login's transaction
    first.commit()
    first.close()
    thread.join(timeout=30)
    assert outcome == ["auth.totp_reused"]


CSV = (
    "name,department,email,roles,scope\n"
    "田中 一郎,契約課,tanaka@city.example.jp,sender;signer,department\n"
    "佐藤 花子,土木課,sato@city.example.jp,admin,all\n"
)


def test_import_dry_run_then_apply(sessions: sessionmaker[Session]) -> None:
    with transaction(sessions) as session:
        add_staff(
            session=session,
            name="田中 一郎",
            email="tanaka@city.example.jp",
            roles="sender",
            scope="own",
            department="契約課",
            actor="t",
        )
        add_staff(
            session=session,
            name="退職 者",
            email="gone@city.example.jp",
            roles="signer",
            scope="own",
            actor="t",
        )
    with sessions() as session:
        plan, lines = plan_import(session=session, data=CSV.encode("cp932"), disable_missing=True)
    assert [c["email"] for c in plan.created] == ["sato@city.example.jp"]
    assert plan.created[0]["line"] == 3
    assert plan.updated == [
        {
            "line": 2,
            "email": "tanaka@city.example.jp",
            "changes": {
                "roles": {"from": "sender", "to": "sender,signer"},
                "scope": {"from": "own", "to": "department"},
            },
        }
    ]
    assert plan.disabled == [{"email": "gone@city.example.jp", "name": "退職 者"}]
    with transaction(sessions) as session:
        apply_import(session=session, plan=plan, lines=lines, actor="t")
    with sessions() as session:
        rows = {s.email: s for s in session.scalars(select(Staff))}
        assert rows["sato@city.example.jp"].scope is VisibilityScope.ALL
        assert rows["gone@city.example.jp"].disabled
        again, _ = plan_import(
            session=session, data=("\ufeff" + CSV).encode(), disable_missing=True
        )
    assert (again.created, again.updated, again.disabled, again.unchanged) == ([], [], [], 2)


def test_a_bad_line_blocks_the_import_unless_skipped(sessions: sessionmaker[Session]) -> None:
    data = (
        CSV + "名無し,契約課,not-an-address,sender,own\n"
        "鈴木,契約課,suzuki@city.example.jp,boss,own\n"
    ).encode()
    with sessions() as session:
        plan, lines = plan_import(session=session, data=data)
    assert [(e["line"], e["code"]) for e in plan.errors] == [
        (4, "staff.bad_email"),
        (5, "staff.unknown_role"),
    ]
    with pytest.raises(StaffError) as caught, transaction(sessions) as session:
        apply_import(session=session, plan=plan, lines=lines, actor="t")
    assert caught.value.code == "staff.import_invalid"
    with sessions() as session:
        assert session.scalars(select(Staff)).all() == []
    with transaction(sessions) as session:
        apply_import(session=session, plan=plan, lines=lines, actor="t", skip_bad_lines=True)
    with sessions() as session:
        assert len(session.scalars(select(Staff)).all()) == 2


def test_import_header_and_encoding_errors(session: Session) -> None:
    with pytest.raises(StaffError) as caught:
        plan_import(session=session, data=b"name,email\nx,y@z.jp\n")
    assert caught.value.code == "staff.import_header"
    with pytest.raises(StaffError) as caught:
        plan_import(session=session, data=b"\x82\xa0\xff\xfe\x81")
    assert caught.value.code == "staff.import_encoding"


def test_a_password_or_second_factor_set_for_someone_names_who_set_it(session: Session) -> None:
    staff = _staff(session)  # its password set by admin@city.example.jp
    enable_totp(session=session, staff=staff, issuer="開発市", actor="cli:root")
    session.commit()
    events = {
        e.action: e
        for e in session.scalars(
            select(AuditEvent).where(
                AuditEvent.action.in_(["staff.password_set", "staff.totp_enabled"])
            )
        )
    }
    assert events["staff.password_set"].actor == "admin@city.example.jp"
    assert events["staff.totp_enabled"].actor == "cli:root"
    assert {e.detail["email"] for e in events.values()} == {"tanaka@city.example.jp"}
