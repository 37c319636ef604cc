"""The records-law facts of a concluded envelope (電子帳簿保存法 施行規則4条): transaction date,
amount, counterparty, and the department that owns it.

At completion the facts that were not given are filled where the contract itself says them: the
transaction date from 締結日 (the conclusion date in JST) and the counterparty from the
contractor (its registered name, else the company of the first contractor-side signer). The
facts are then written into the ``envelope.completed`` audit event, so they are part of the hash
chain: :func:`verify_record_facts` compares each concluded envelope's columns with the facts its
newest facts event recorded and names an envelope whose amount (or date, counterparty,
department) was edited directly in the database. A correction made through
:func:`correct_record_facts` records the old and the new facts as ``envelope.facts_corrected``
(corrections are recorded, never silent).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from core.errors import InputError, NotFoundError
from core.model import AuditEvent, Envelope
from core.records.audit import record_event
from core.states import EnvelopeState, PartyRole
from core.timezone import JST

__all__ = [
    "FACTS_EVENTS",
    "FactsReport",
    "correct_record_facts",
    "fill_record_facts",
    "record_facts",
    "require_amount",
    "verify_record_facts",
]

# Audit events whose detail["facts"] is the envelope's record as of that event.
FACTS_EVENTS = ("envelope.completed", "envelope.facts_corrected")
FACT_KEYS = ("transaction_date", "amount", "counterparty", "department")


def record_facts(envelope: Envelope) -> dict[str, str | None]:
    """The indexed facts as text, as they are chained in the audit trail."""
    return {
        "transaction_date": (
            envelope.transaction_date.isoformat() if envelope.transaction_date else None
        ),
        "amount": format(envelope.amount, "f") if envelope.amount is not None else None,
        "counterparty": envelope.counterparty,
        "department": envelope.department,
    }


def require_amount(envelope: Envelope) -> None:
    """Refuse to send an envelope without its amount (取引金額): unlike the date and the
    counterparty, nothing at completion can supply it, and a concluded envelope must be found
    by amount. A unit-price contract (単価契約) gives its estimated total (予定総額); a contract
    with no consideration (無償の協定など) gives 0."""
    if envelope.amount is None:
        raise InputError(
            "envelope.amount_required",
            "an envelope needs its amount before it is sent (a unit-price contract gives its "
            "estimated total, a contract without consideration 0)",
            "契約金額(取引金額)を入力してください。電子帳簿保存法の検索要件のため、金額のない"
            "契約は送信できません。単価契約は予定総額を、無償の契約は 0 円を入力します。",
            details={"field": "amount"},
        )


def fill_record_facts(
    *, envelope: Envelope, concluded_at: dt.datetime, buyer_name: str
) -> list[str]:
    """Fill the transaction date (締結日, JST) and the counterparty (the contractor: its
    registered name, else the company of the first signer not of the buyer) where they were
    not given; returns the names of the facts filled."""
    filled: list[str] = []
    if envelope.transaction_date is None:
        envelope.transaction_date = concluded_at.astimezone(JST).date()
        filled.append("transaction_date")
    if not envelope.counterparty:
        name = envelope.contractor.name if envelope.contractor is not None else None
        if not name:
            name = next(
                (
                    p.company
                    for p in envelope.parties
                    if p.role is PartyRole.SIGNER and p.company and p.company != buyer_name
                ),
                None,
            )
        if name:
            envelope.counterparty = name
            filled.append("counterparty")
    return filled


def correct_record_facts(
    *,
    session: Session,
    envelope_id: str,
    actor: str,
    reason: str,
    transaction_date: dt.date | None = None,
    amount: Decimal | None = None,
    counterparty: str | None = None,
    department: str | None = None,
) -> Envelope:
    """Correct facts of a concluded envelope, recording the old and the new facts and why
    (``envelope.facts_corrected``). Does not commit."""
    envelope = session.get(Envelope, envelope_id)
    if envelope is None:
        raise NotFoundError(
            "not_found.envelope", f"no envelope {envelope_id}", "指定された封筒が見つかりません。"
        )
    if not reason.strip():
        raise InputError(
            "records.reason_required",
            "a correction needs a reason",
            "訂正には理由の入力が必要です。",
        )
    before = record_facts(envelope)
    if transaction_date is not None:
        envelope.transaction_date = transaction_date
    if amount is not None:
        envelope.amount = amount
    if counterparty is not None:
        envelope.counterparty = counterparty.strip() or envelope.counterparty
    if department is not None:
        envelope.department = department.strip() or None
    record_event(
        session=session,
        action="envelope.facts_corrected",
        actor=actor,
        envelope_id=envelope.id,
        detail={"before": before, "facts": record_facts(envelope), "reason": reason.strip()},
    )
    return envelope


@dataclass
class FactsReport:
    """What :func:`verify_record_facts` found: envelopes whose facts differ from the recorded
    ones, and concluded envelopes with no recorded facts (concluded before they were chained)."""

    checked: int = 0
    unrecorded: int = 0
    problems: list[dict[str, Any]] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """True when every recorded envelope still holds the facts the chain recorded."""
        return not self.problems


def _recorded(session: Session) -> Iterator[tuple[str, dict[str, Any]]]:
    rows = session.execute(
        select(AuditEvent.envelope_id, AuditEvent.detail)
        .where(AuditEvent.action.in_(FACTS_EVENTS), AuditEvent.envelope_id.is_not(None))
        .order_by(AuditEvent.id)
    )
    for envelope_id, detail in rows:
        facts = (detail or {}).get("facts")
        if envelope_id is not None and isinstance(facts, dict):
            yield envelope_id, facts


def verify_record_facts(*, session: Session) -> FactsReport:
    """Compare every concluded envelope's facts with the newest facts its audit events record
    (the events themselves are checked by :func:`core.records.audit.verify_chain`)."""
    recorded: dict[str, dict[str, Any]] = {}
    for envelope_id, chained in _recorded(session):
        recorded[envelope_id] = chained  # the newest wins (ordered by id)
    report = FactsReport()
    envelopes = session.scalars(
        select(Envelope)
        .where(Envelope.state == EnvelopeState.COMPLETED.value)
        .order_by(Envelope.completed_at, Envelope.id)
    )
    for envelope in envelopes:
        facts = recorded.get(envelope.id)
        if facts is None:
            report.unrecorded += 1
            continue
        report.checked += 1
        now = record_facts(envelope)
        changed = {
            key: {"recorded": facts.get(key), "now": now[key]}
            for key in FACT_KEYS
            if facts.get(key) != now[key]
        }
        if changed:
            report.problems.append(
                {
                    "problem": "facts_edited",
                    "envelope_id": envelope.id,
                    "management_number": envelope.management_number,
                    "changed": changed,
                }
            )
    return report
