"""Links and access codes: hashing, lockout counted in the database across processes,
forwarding, and what an expired, replaced or forwarded link says."""

from __future__ import annotations

import datetime as dt
import multiprocessing
import secrets
from collections.abc import Callable
from dataclasses import replace
from decimal import Decimal
from pathlib import Path

import pytest
from sqlalchemy import Engine, select
from sqlalchemy.orm import Session

from core.blobs import BlobStore
from core.envelopes.creation import DocumentInput, PartyInput, create_envelope
from core.envelopes.lifecycle import send_envelope
from core.envelopes.links import (
    AccessCodePolicy,
    check_access_code,
    forward_party,
    issue_link,
    open_link,
    set_access_code,
)
from core.envelopes.notify import MailObserver
from core.errors import AuthError, StateError
from core.model import Delivery, Envelope, LinkPurpose, SigningLink, utcnow
from core.records.audit import list_events
from core.runtime import Runtime
from core.states import PartyRole
from core.storage import create_database_engine, make_session_factory
from tests.fixtures.pdfs import make_pdf

PEPPER = b"p" * 32
POLICY = AccessCodePolicy(pepper=PEPPER)


def test_codes_are_salted_peppered_and_checked() -> None:
    stored = POLICY.hash("1234")
    assert "1234" not in stored and stored.startswith("scrypt-hmac$1024$8$1$")
    assert POLICY.hash("1234") != stored  # salted
    assert POLICY.matches("1234", stored) and not POLICY.matches("1235", stored)
    other_pepper = AccessCodePolicy(pepper=b"q" * 32)
    assert not other_pepper.matches("1234", stored)  # a database copy alone is not enough
    assert not POLICY.matches("1234", "garbage")
    assert POLICY.check_format(" 0042 ") == "0042"
    assert POLICY.check_format("12345678") == "12345678"
    for bad in ("123", "12 4", "１２３４", "12-4", "x" * 65):
        with pytest.raises(StateError, match="party.bad_access_code"):
            POLICY.check_format(bad)
    with pytest.raises(ValueError):
        AccessCodePolicy(pepper=b"short")


@pytest.fixture
def mail_runtime(dev_runtime: Runtime) -> Runtime:
    return replace(dev_runtime, observers=(MailObserver(),))


@pytest.fixture
def sent_envelope(session: Session, mail_runtime: Runtime) -> Callable[[], Envelope]:
    def make() -> Envelope:
        envelope = create_envelope(
            session=session,
            runtime=mail_runtime,
            title="請書",
            amount=Decimal("1000000"),
            creator="開発市 契約課",
            creator_email="sender@city.example.jp",
            documents=[DocumentInput("請書.pdf", make_pdf(pages=1))],
            parties=[
                PartyInput(PartyRole.SIGNER, "髙橋 一郎", "ichiro@example.co.jp", "髙橋建設"),
                PartyInput(PartyRole.SIGNER, "開発 太郎", "shicho@city.example.jp"),
            ],
        )
        for party in envelope.parties:
            set_access_code(session=session, party_id=party.id, code_hash=POLICY.hash("2468"))
        send_envelope(session=session, runtime=mail_runtime, envelope_id=envelope.id, actor="staff")
        session.commit()
        return envelope

    return make


def _link(session: Session, envelope: Envelope, **kw: object) -> tuple[SigningLink, str]:
    party = envelope.parties[0]
    args: dict = {
        "session": session,
        "envelope_id": envelope.id,
        "party_id": party.id,
        "email": party.email,
        "purpose": LinkPurpose.SIGN,
        "valid_for": dt.timedelta(days=30),
        "issued_for": f"mail:test:{secrets.token_hex(4)}",
    }
    args.update(kw)
    link, token = issue_link(**args)
    session.commit()
    return link, token


def _guess(url: str, link_id: str, blob_dir: str, attempts: int) -> list[str]:
    """One process guessing wrong codes on its own connection."""
    engine = create_database_engine(url)
    runtime = Runtime(
        blobs=BlobStore(Path(blob_dir), secrets.token_bytes(32)),
        signing=None,  # type: ignore[arg-type]  # not used by code checks
        buyer_name="開発市",
        observers=(MailObserver(),),
    )
    outcomes = []
    with make_session_factory(engine)() as session:
        for _ in range(attempts):
            try:
                check_access_code(
                    session=session, runtime=runtime, link_id=link_id, code="0000", policy=POLICY
                )
                outcomes.append("ok")
            except AuthError as exc:
                outcomes.append(exc.code)
    engine.dispose()
    return outcomes


def test_five_wrong_codes_lock_the_link_across_processes(
    session: Session,
    db_engine: Engine,
    sent_envelope: Callable[[], Envelope],
    mail_runtime: Runtime,
    tmp_path: Path,
) -> None:
    envelope = sent_envelope()
    link, _token = _link(session, envelope)
    url = db_engine.url.render_as_string(hide_password=False)
    spawn = multiprocessing.get_context("spawn")
    with spawn.Pool(2) as pool:
        results = pool.starmap(_guess, [(url, link.id, str(tmp_path), 6)] * 2)
    outcomes = [o for r in results for o in r]
    assert outcomes.count("link.code_wrong") == 4
    assert outcomes.count("link.locked") == 8  # the 5th wrong one and every later try
    events = list_events(session=session, envelope_id=envelope.id)
    failed = [e for e in events if e.action == "party.code_failed"]
    assert len(failed) == 5 and [e.action for e in events].count("party.locked") == 1
    session.expire_all()
    assert session.get(SigningLink, link.id).locked_at is not None  # type: ignore[union-attr]
    notices = [
        d for d in session.scalars(select(Delivery)) if d.payload["kind"] == "lockout_notice"
    ]
    assert [d.payload["to"] for d in notices] == ["sender@city.example.jp"]
    # The right code does not open a locked link, and the page says so.
    with pytest.raises(AuthError, match="link.locked"):
        check_access_code(
            session=session, runtime=mail_runtime, link_id=link.id, code="2468", policy=POLICY
        )
    with pytest.raises(AuthError, match="link.locked"):
        open_link(session=session, token=_token, purpose=LinkPurpose.SIGN)


def test_right_code_gives_its_attempt_back(
    session: Session, sent_envelope: Callable[[], Envelope], mail_runtime: Runtime
) -> None:
    envelope = sent_envelope()
    link, _ = _link(session, envelope)
    for _ in range(4):
        with pytest.raises(AuthError, match="link.code_wrong"):
            check_access_code(
                session=session, runtime=mail_runtime, link_id=link.id, code="1", policy=POLICY
            )
    party = check_access_code(
        session=session, runtime=mail_runtime, link_id=link.id, code="2468", policy=POLICY
    )
    assert party.email == "ichiro@example.co.jp"
    session.expire_all()
    assert session.get(SigningLink, link.id).failed_attempts == 4  # type: ignore[union-attr]


def test_open_link_tells_why_it_does_not_open(
    session: Session, sent_envelope: Callable[[], Envelope]
) -> None:
    envelope = sent_envelope()
    _link_row, token = _link(session, envelope)
    assert open_link(session=session, token=token, purpose=LinkPurpose.SIGN).id == _link_row.id
    with pytest.raises(AuthError, match="link.not_found"):
        open_link(session=session, token=token, purpose=LinkPurpose.DOWNLOAD)
    with pytest.raises(AuthError, match="link.not_found"):
        open_link(session=session, token=token + "x", purpose=LinkPurpose.SIGN)
    with pytest.raises(AuthError, match="link.expired"):
        open_link(
            session=session,
            token=token,
            purpose=LinkPurpose.SIGN,
            now=utcnow() + dt.timedelta(days=31),
        )
    # A retried mail replaces the link made by the failed try.
    _again, newer = _link(session, envelope, issued_for=_link_row.issued_for)
    with pytest.raises(AuthError, match="link.revoked"):
        open_link(session=session, token=token, purpose=LinkPurpose.SIGN)
    assert open_link(session=session, token=newer, purpose=LinkPurpose.SIGN)


def test_forward_changes_the_party_revokes_its_links_and_is_audited(
    session: Session, sent_envelope: Callable[[], Envelope], mail_runtime: Runtime
) -> None:
    envelope = sent_envelope()
    first, second = envelope.parties
    set_access_code(session=session, party_id=first.id, code_hash=POLICY.hash("1111"))
    _row, token = _link(session, envelope)
    new_code = POLICY.hash("8642")
    with pytest.raises(StateError, match="state.not_your_turn"):
        forward_party(
            session=session,
            runtime=mail_runtime,
            envelope_id=envelope.id,
            party_id=second.id,
            name="代理",
            email="dairi@example.co.jp",
            reason="担当替え",
            code_hash=new_code,
        )
    session.rollback()
    for name, email, reason, code_hash, code in [
        ("", "dairi@example.co.jp", "担当替え", new_code, "party.forward_name"),
        ("代理 次郎", "not-an-address", "担当替え", new_code, "party.forward_email"),
        ("代理 次郎", "ICHIRO@example.co.jp", "担当替え", new_code, "party.forward_same"),
        ("代理 次郎", "dairi@example.co.jp", "  ", new_code, "party.forward_reason"),
        ("代理 次郎", "dairi@example.co.jp", "担当替え", "", "party.forward_code"),
    ]:
        with pytest.raises(StateError, match=code):
            forward_party(
                session=session,
                runtime=mail_runtime,
                envelope_id=envelope.id,
                party_id=first.id,
                name=name,
                email=email,
                reason=reason,
                code_hash=code_hash,
            )
    forward_party(
        session=session,
        runtime=mail_runtime,
        envelope_id=envelope.id,
        party_id=first.id,
        name="代理 次郎",
        email="dairi@example.co.jp",
        reason="社長不在のため副社長が署名します",
        code_hash=new_code,
        ip="192.0.2.7",
    )
    session.commit()
    with pytest.raises(AuthError, match="link.forwarded"):
        open_link(session=session, token=token, purpose=LinkPurpose.SIGN)
    session.expire_all()
    party = session.get(type(first), first.id)
    assert party is not None and (party.name, party.email) == ("代理 次郎", "dairi@example.co.jp")
    (event,) = [
        e
        for e in list_events(session=session, envelope_id=envelope.id)
        if e.action == "party.forwarded"
    ]
    assert event.ip == "192.0.2.7" and event.detail["from_email"] == "ichiro@example.co.jp"
    assert event.detail["from_name"] == "髙橋 一郎"
    assert event.detail["reason"] == "社長不在のため副社長が署名します"
    # The new person's code is the one the forwarder set; the forwarder's no longer opens it.
    new_row, _new_token = _link(session, envelope)
    assert check_access_code(
        session=session, runtime=mail_runtime, link_id=new_row.id, code="8642", policy=POLICY
    )
    with pytest.raises(AuthError, match="link.code_wrong"):
        check_access_code(
            session=session, runtime=mail_runtime, link_id=new_row.id, code="1111", policy=POLICY
        )
    payloads = [d.payload for d in session.scalars(select(Delivery))]
    kinds = [(p["kind"], p["to"]) for p in payloads]
    assert ("forwarded_request", "dairi@example.co.jp") in kinds
    # The sender is told, naming the forward by its new address.
    (notice,) = [p for p in payloads if p["kind"] == "forward_notice"]
    assert notice["to"] == "sender@city.example.jp"
    assert notice["forwarded_to"] == "dairi@example.co.jp"
