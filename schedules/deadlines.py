"""The daily deadline check: reminders on the due day, notices once overdue (business days)."""

from __future__ import annotations

import datetime as dt

from sqlalchemy.orm import Session, sessionmaker

from core.business_days import BusinessCalendar
from core.envelopes.deadlines import NOTICE_TARGET, DeadlineReport, check_deadlines
from core.timezone import JST

__all__ = ["JOB_ID", "run"]

JOB_ID = "deadlines"


def run(
    *,
    sessions: sessionmaker[Session],
    calendar: BusinessCalendar,
    buyer_name: str,
    office_email: str | None = None,
    today: dt.date | None = None,
    target: str = NOTICE_TARGET,
) -> DeadlineReport:
    """Check today's deadlines (JST) and commit the notices."""
    with sessions() as session:
        report = check_deadlines(
            session=session,
            calendar=calendar,
            today=today or dt.datetime.now(JST).date(),
            buyer_name=buyer_name,
            office_email=office_email,
            target=target,
        )
        session.commit()
    return report
