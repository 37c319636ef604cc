"""Buyer-side parties bound to staff accounts: binding at creation, the refusal to send an
envelope a party cannot authenticate in, re-authentication at signing, and the recorded method."""

from __future__ import annotations

import datetime as dt
from decimal import Decimal

import pyotp
import pytest
from sqlalchemy.orm import Session, sessionmaker

from core.envelopes.approvals import record_approval
from core.envelopes.creation import DocumentInput, PartyInput, create_envelope
from core.envelopes.lifecycle import get_envelope, send_envelope
from core.errors import AuthError, StateError
from core.model import Envelope, Staff
from core.records.audit import list_events
from core.runtime import Runtime
from core.signing.staff_signing import approve_as_staff, get_staff_party, list_awaiting
from core.signing.worker import process_until_idle
from core.staff.accounts import PasswordPolicy
from core.states import EnvelopeState, PartyRole, PartyState
from tests.fixtures.envelopes import STAFF_PASSWORD, ensure_staff, give_access_codes
from tests.fixtures.pdfs import make_pdf

POLICY = PasswordPolicy(max_failures=3)


def _envelope(session: Session, runtime: Runtime, *, staff: bool = True) -> Envelope:
    envelope = create_envelope(
        session=session,
        runtime=runtime,
        title="庁舎清掃業務委託",
        amount=Decimal("1000000"),
        creator="開発市 契約課",
        documents=[DocumentInput("契約書.pdf", make_pdf(pages=1))],
        parties=[
            PartyInput(PartyRole.SIGNER, "髙橋 一郎", "ichiro@example.co.jp", "株式会社髙橋"),
            PartyInput(
                PartyRole.SIGNER, "開発市長 開発 太郎", "SHICHO@city.example.jp", staff=staff
            ),
        ],
    )
    session.commit()
    return envelope


def test_a_party_is_bound_to_the_staff_account_with_its_email(
    session: Session, dev_runtime: Runtime
) -> None:
    shicho = ensure_staff(session, "shicho@city.example.jp", "開発 太郎")
    envelope = _envelope(session, dev_runtime)
    contractor, official = envelope.parties
    assert contractor.staff_id is None
    assert official.staff_id == shicho.id and official.email == "shicho@city.example.jp"


def test_binding_to_an_unknown_or_disabled_account_is_refused(
    session: Session, dev_runtime: Runtime
) -> None:
    with pytest.raises(StateError) as info:
        _envelope(session, dev_runtime)
    assert info.value.code == "envelope.party_not_staff"
    assert info.value.details["party"] == 2
    ensure_staff(session, "shicho@city.example.jp").disabled = True
    session.flush()
    with pytest.raises(StateError) as info:
        _envelope(session, dev_runtime)
    assert info.value.code == "envelope.party_not_staff"


def test_an_envelope_whose_party_cannot_authenticate_is_not_sent(
    session: Session, dev_runtime: Runtime
) -> None:
    envelope = _envelope(session, dev_runtime, staff=False)  # official without code or account
    with pytest.raises(StateError) as info:
        send_envelope(session=session, runtime=dev_runtime, envelope_id=envelope.id, actor="s")
    assert info.value.code == "envelope.party_cannot_authenticate"
    assert info.value.details == {"routing_order": 1}
    session.rollback()
    give_access_codes(session, envelope)
    session.commit()
    send_envelope(session=session, runtime=dev_runtime, envelope_id=envelope.id, actor="s")
    assert get_envelope(session=session, envelope_id=envelope.id).state is EnvelopeState.SENT

    # A staff account without a password cannot log in, so cannot sign either.
    staff = ensure_staff(session, "shicho@city.example.jp")
    staff.password_hash = None
    other = _envelope(session, dev_runtime)
    give_access_codes(session, other)
    with pytest.raises(StateError) as info:
        send_envelope(session=session, runtime=dev_runtime, envelope_id=other.id, actor="s")
    assert info.value.code == "envelope.party_cannot_authenticate"
    assert info.value.details == {"routing_order": 2}


def test_auth_method_must_be_one_the_party_can_have_used(
    session: Session, dev_runtime: Runtime
) -> None:
    ensure_staff(session, "shicho@city.example.jp")
    envelope = _envelope(session, dev_runtime)
    give_access_codes(session, envelope)
    session.commit()
    send_envelope(session=session, runtime=dev_runtime, envelope_id=envelope.id, actor="s")
    session.commit()
    contractor = envelope.parties[0]
    for invented in ("staff_login", "api", "link+access_code"):
        with pytest.raises(StateError) as info:
            record_approval(
                session=session,
                envelope_id=envelope.id,
                party_id=contractor.id,
                values={},
                auth_method=invented,
            )
        assert info.value.code == "envelope.bad_auth_method"


def _sent_to_official(session: Session, runtime: Runtime) -> tuple[Envelope, Staff]:
    staff = ensure_staff(session, "shicho@city.example.jp", "開発 太郎")
    envelope = _envelope(session, runtime)
    give_access_codes(session, envelope)
    session.commit()
    send_envelope(session=session, runtime=runtime, envelope_id=envelope.id, actor="s")
    session.commit()
    record_approval(
        session=session,
        envelope_id=envelope.id,
        party_id=envelope.parties[0].id,
        values={},
        auth_method="email+access_code",
    )
    return envelope, staff


def test_staff_signs_after_typing_the_password_again(
    session: Session, sessions: sessionmaker[Session], dev_runtime: Runtime
) -> None:
    envelope, staff = _sent_to_official(session, dev_runtime)
    # Before the contractor's signature is applied it is not the official's turn yet.
    assert list_awaiting(session=session, staff=staff) == []
    process_until_idle(sessions=sessions, runtime=dev_runtime, worker="t")
    (waiting,) = list_awaiting(session=session, staff=staff)
    assert waiting.envelope.id == envelope.id and waiting.party.routing_order == 2

    with pytest.raises(AuthError) as info:
        approve_as_staff(
            session=session,
            staff=staff,
            envelope_id=envelope.id,
            values={},
            password="wrong password",
            policy=POLICY,
            ip="192.0.2.7",
        )
    assert info.value.code == "auth.login_failed"
    session.refresh(staff)
    assert staff.failed_logins == 1  # counts towards the login lockout

    party = approve_as_staff(
        session=session,
        staff=staff,
        envelope_id=envelope.id,
        values={},
        password=STAFF_PASSWORD,
        policy=POLICY,
        ip="192.0.2.7",
    )
    assert party.state is PartyState.SIGNING and party.auth_method == "staff_login"
    process_until_idle(sessions=sessions, runtime=dev_runtime, worker="t")
    done = get_envelope(session=session, envelope_id=envelope.id)
    assert done.state is EnvelopeState.COMPLETED
    actions = [
        (e.action, e.detail.get("method"))
        for e in list_events(session=session, envelope_id=envelope.id)
    ]
    assert ("party.reauth_failed", None) in actions
    assert ("party.authenticated", "staff_login") in actions
    assert get_staff_party(session=session, staff=staff, envelope_id=envelope.id).id == party.id


def test_staff_with_totp_gives_the_one_time_code_too(
    session: Session, sessions: sessionmaker[Session], dev_runtime: Runtime
) -> None:
    envelope, staff = _sent_to_official(session, dev_runtime)
    staff.totp_secret = pyotp.random_base32()
    session.commit()
    process_until_idle(sessions=sessions, runtime=dev_runtime, worker="t")
    kwargs = {
        "session": session,
        "staff": staff,
        "envelope_id": envelope.id,
        "values": {},
        "password": STAFF_PASSWORD,
        "policy": POLICY,
    }
    with pytest.raises(AuthError):
        approve_as_staff(**kwargs)  # type: ignore[arg-type]
    code = pyotp.TOTP(staff.totp_secret).at(dt.datetime.now(dt.UTC))
    party = approve_as_staff(**kwargs, totp_code=code)  # type: ignore[arg-type]
    assert party.auth_method == "staff_login+totp"


def test_someone_elses_envelope_is_not_found(session: Session, dev_runtime: Runtime) -> None:
    envelope, _ = _sent_to_official(session, dev_runtime)
    other = ensure_staff(session, "other@city.example.jp")
    with pytest.raises(Exception) as info:
        get_staff_party(session=session, staff=other, envelope_id=envelope.id)
    assert getattr(info.value, "code", None) == "not_found.envelope"
