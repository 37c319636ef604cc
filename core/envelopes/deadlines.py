"""Deadline checks in business days: the usage request (2 business days after the award, by
default) and the signing (5). Each check adds notices to the outbox, once per object, kind and
due date (the idempotency key), so running the check twice on one day sends nothing twice.

A notice is a self-contained mail (recipients, Japanese subject and body) for the outbox
target ``notice``: reminders go to the contractor or the party whose turn it is on the due day,
overdue notices to the contract office afterwards.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session, selectinload

from core.business_days import BusinessCalendar
from core.intake.awards import amount_text
from core.intake.contractors import contractor_emails
from core.model import Award, AwardState, Envelope
from core.pushback.outbox import enqueue
from core.states import ACTIONABLE_PARTY_STATES, EnvelopeState

__all__ = ["NOTICE_TARGET", "DeadlineReport", "check_deadlines"]

NOTICE_TARGET = "notice"


@dataclass
class DeadlineReport:
    """What one check found (award ids ``source:award_id``, envelope ids)."""

    usage_request_due: list[str] = field(default_factory=list)
    usage_request_overdue: list[str] = field(default_factory=list)
    signing_due: list[str] = field(default_factory=list)
    signing_overdue: list[str] = field(default_factory=list)
    notices: int = 0


def _date_ja(day: dt.date) -> str:
    return f"{day.year}年{day.month}月{day.day}日"


def _notice(
    session: Session,
    *,
    target: str,
    key: str,
    to: list[str],
    subject: str,
    body: str,
    envelope_id: str | None = None,
    extra: dict[str, Any] | None = None,
) -> bool:
    if not to:
        return False
    enqueue(
        session=session,
        target=target,
        idempotency_key=key,
        payload={
            "kind": "deadline_notice",
            "to": to,
            "subject": subject,
            "body": body,
            **(extra or {}),
        },
        envelope_id=envelope_id,
    )
    return True


def check_deadlines(
    *,
    session: Session,
    calendar: BusinessCalendar,
    today: dt.date,
    buyer_name: str,
    office_email: str | None = None,
    target: str = NOTICE_TARGET,
) -> DeadlineReport:
    """Find awards and envelopes due today or overdue and add their notices (the caller
    commits). Nothing is sent on a closed day: the office is not there to follow up."""
    report = DeadlineReport()
    if not calendar.is_business_day(today):
        return report
    office = [office_email] if office_email else []
    waiting = session.scalars(
        select(Award).where(
            Award.state == AwardState.WAITING_USAGE_REQUEST.value,
            Award.usage_request_due.is_not(None),
            Award.usage_request_due <= today,
        )
    ).all()
    for award in waiting:
        due = award.usage_request_due
        assert due is not None
        label = f"{award.source}:{award.award_id}"
        if due == today:
            report.usage_request_due.append(label)
            to = contractor_emails(session=session, contractor_id=award.contractor_id or "")
            sent = _notice(
                session,
                target=target,
                key=f"deadline:usage_request_due:{award.id}:{due.isoformat()}",
                to=to,
                subject=f"【{buyer_name}】電子契約利用申出書のご提出について({award.title})",
                body=(
                    f"{award.counterparty or ''} 御中\n\n"
                    f"案件「{award.title}」(落札金額 {amount_text(award.amount)})について、"
                    f"電子契約利用申出書の提出期限は本日{_date_ja(due)}です。"
                    "提出がお済みでない場合は、契約担当課へご提出ください。\n"
                ),
                extra={"award": label, "notice": "usage_request_due"},
            )
        else:
            report.usage_request_overdue.append(label)
            sent = _notice(
                session,
                target=target,
                key=f"deadline:usage_request_overdue:{award.id}:{due.isoformat()}",
                to=office,
                subject=f"【期限超過】電子契約利用申出書が未提出です({award.title})",
                body=(
                    f"案件「{award.title}」(受注者: {award.counterparty or ''})の"
                    f"電子契約利用申出書が提出期限({_date_ja(due)})を過ぎても届いていません。\n"
                ),
                extra={"award": label, "notice": "usage_request_overdue"},
            )
        report.notices += int(sent)
    envelopes = session.scalars(
        select(Envelope)
        .where(
            Envelope.state == EnvelopeState.SENT.value,
            Envelope.deadline.is_not(None),
            Envelope.deadline <= today,
        )
        .options(selectinload(Envelope.parties))
    ).all()
    for envelope in envelopes:
        due = envelope.deadline
        assert due is not None
        current = [p for p in envelope.parties if p.state in ACTIONABLE_PARTY_STATES]
        if due == today:
            report.signing_due.append(envelope.id)
            sent = _notice(
                session,
                target=target,
                key=f"deadline:signing_due:{envelope.id}:{due.isoformat()}",
                to=[p.email for p in current],
                subject=f"【{buyer_name}】本日が署名期限です({envelope.title})",
                body=(
                    f"「{envelope.title}」(管理番号 {envelope.management_number})の"
                    f"署名期限は本日{_date_ja(due)}です。"
                    "先にお送りした署名依頼メールのリンクから手続きをお願いします。\n"
                ),
                envelope_id=envelope.id,
                extra={"notice": "signing_due"},
            )
        else:
            report.signing_overdue.append(envelope.id)
            to = office or ([envelope.creator_email] if envelope.creator_email else [])
            sent = _notice(
                session,
                target=target,
                key=f"deadline:signing_overdue:{envelope.id}:{due.isoformat()}",
                to=to,
                subject=f"【期限超過】署名が完了していません({envelope.title})",
                body=(
                    f"「{envelope.title}」(管理番号 {envelope.management_number})は"
                    f"署名期限({_date_ja(due)})を過ぎています。"
                    f"現在の署名者: {', '.join(p.name for p in current) or 'なし'}\n"
                ),
                envelope_id=envelope.id,
                extra={"notice": "signing_overdue"},
            )
        report.notices += int(sent)
    return report
