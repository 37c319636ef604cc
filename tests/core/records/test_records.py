"""The records-law facts of a concluded envelope: filled from 締結日 and the contractor when not
given, chained in the audit trail, a recorded correction passes and a silent edit is named."""

from __future__ import annotations

import datetime as dt
from decimal import Decimal

from sqlalchemy import update
from sqlalchemy.orm import Session, sessionmaker

from core.envelopes.creation import DocumentInput, PartyInput, create_envelope
from core.envelopes.lifecycle import send_envelope
from core.model import Envelope
from core.records.audit import verify_chain
from core.records.facts import correct_record_facts, verify_record_facts
from core.runtime import Runtime
from core.states import PartyRole
from core.timezone import JST
from tests.fixtures.envelopes import complete_parties, give_access_codes
from tests.fixtures.pdfs import make_pdf


def _concluded(sessions: sessionmaker[Session], runtime: Runtime) -> str:
    with sessions() as session:
        envelope = create_envelope(
            session=session,
            runtime=runtime,
            title="物品購入契約",
            creator="開発市 契約課",
            documents=[DocumentInput("契約書.pdf", make_pdf(pages=1))],
            parties=[
                PartyInput(PartyRole.APPROVER, "契約 花子", "kacho@city.example.jp", "開発市"),
                PartyInput(PartyRole.SIGNER, "署名者 一郎", "s1@example.jp", "株式会社一"),
                PartyInput(PartyRole.SIGNER, "市長", "shicho@city.example.jp", "開発市"),
            ],
            amount=Decimal("1200000"),
        )
        give_access_codes(session, envelope)
        session.commit()
        send_envelope(session=session, runtime=runtime, envelope_id=envelope.id, actor="開発市")
        session.commit()
        complete_parties(session, runtime, envelope.id)
        return envelope.id


def test_missing_facts_are_filled_at_completion_and_chained(
    sessions: sessionmaker[Session], dev_runtime: Runtime
) -> None:
    envelope_id = _concluded(sessions, dev_runtime)
    with sessions() as session:
        envelope = session.get_one(Envelope, envelope_id)
        assert envelope.completed_at is not None
        assert envelope.transaction_date == envelope.completed_at.astimezone(JST).date()
        assert envelope.counterparty == "株式会社一"  # the contractor, not the buyer's signer
        report = verify_record_facts(session=session)
        assert report.ok and report.checked == 1 and report.unrecorded == 0


def test_a_recorded_correction_passes_and_a_silent_edit_is_named(
    sessions: sessionmaker[Session], dev_runtime: Runtime
) -> None:
    envelope_id = _concluded(sessions, dev_runtime)
    with sessions() as session:
        correct_record_facts(
            session=session,
            envelope_id=envelope_id,
            actor="admin@city.example.jp",
            reason="契約書記載の金額に訂正",
            amount=Decimal("1250000"),
            transaction_date=dt.date(2026, 4, 1),
        )
        session.commit()
        assert verify_record_facts(session=session).ok
        assert verify_chain(session=session).ok
        session.execute(
            update(Envelope).where(Envelope.id == envelope_id).values(counterparty="別会社")
        )
        session.commit()
        report = verify_record_facts(session=session)
    assert not report.ok
    [problem] = report.problems
    assert problem["envelope_id"] == envelope_id
    assert problem["changed"] == {"counterparty": {"recorded": "株式会社一", "now": "別会社"}}
