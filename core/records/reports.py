"""The monthly report: contracts concluded per month and per department (JST month boundaries)."""

from __future__ import annotations

import datetime as dt
import re
from dataclasses import dataclass, field
from decimal import Decimal

from sqlalchemy import select
from sqlalchemy.orm import Session

from core.errors import StaffError
from core.model import Envelope, Staff
from core.staff.access import scope_for
from core.states import EnvelopeState
from core.timezone import JST

__all__ = ["MonthRow", "month_bounds", "monthly_report", "parse_month", "previous_months"]

NO_DEPARTMENT = "(未設定)"


def parse_month(text: str) -> tuple[int, int]:
    """``YYYY-MM`` as (year, month)."""
    match = re.fullmatch(r"(\d{4})-(\d{2})", text.strip())
    if not match or not 1 <= int(match.group(2)) <= 12:
        raise StaffError(
            "staff.bad_month",
            f"not a month (YYYY-MM): {text!r}",
            "月は YYYY-MM で指定してください。",
        )
    return int(match.group(1)), int(match.group(2))


def month_bounds(year: int, month: int) -> tuple[dt.datetime, dt.datetime]:
    """The first instant of the JST month and of the next one, in UTC."""
    start = dt.datetime(year, month, 1, tzinfo=JST)
    end = dt.datetime(year + (month == 12), month % 12 + 1, 1, tzinfo=JST)
    return start.astimezone(dt.UTC), end.astimezone(dt.UTC)


def previous_months(year: int, month: int, count: int) -> list[tuple[int, int]]:
    """``count`` months ending with (year, month), oldest first."""
    index = year * 12 + month - 1
    return [((i // 12), i % 12 + 1) for i in range(index - count + 1, index + 1)]


@dataclass
class MonthRow:
    """Contracts concluded in one month, in total and per department."""

    month: str
    count: int = 0
    amount: Decimal = Decimal(0)
    departments: dict[str, dict[str, int | Decimal]] = field(default_factory=dict)

    def as_dict(self) -> dict[str, object]:
        """JSON-ready (amounts as integers of yen)."""
        return {
            "month": self.month,
            "count": self.count,
            "amount": int(self.amount),
            "departments": {
                k: {"count": v["count"], "amount": int(v["amount"])}
                for k, v in sorted(self.departments.items())
            },
        }


def monthly_report(
    *, session: Session, year: int, month: int, months: int = 1, staff: Staff | None = None
) -> list[MonthRow]:
    """Concluded (completed) contracts of ``months`` months ending with year-month, by JST
    completion date; inside ``staff``'s scope when given."""
    wanted = previous_months(year, month, months)
    start, _ = month_bounds(*wanted[0])
    _, end = month_bounds(*wanted[-1])
    rows = {f"{y:04d}-{m:02d}": MonthRow(f"{y:04d}-{m:02d}") for y, m in wanted}
    statement = select(Envelope.completed_at, Envelope.department, Envelope.amount).where(
        Envelope.state == EnvelopeState.COMPLETED,
        Envelope.completed_at >= start,
        Envelope.completed_at < end,
    )
    if staff is not None:
        statement = statement.where(scope_for(session=session, staff=staff))
    for completed_at, department, amount in session.execute(statement):
        if completed_at is None:  # excluded by the WHERE; keeps the type checker informed
            continue
        key = completed_at.astimezone(JST).strftime("%Y-%m")
        row = rows[key]
        row.count += 1
        row.amount += amount or 0
        entry = row.departments.setdefault(
            department or NO_DEPARTMENT, {"count": 0, "amount": Decimal(0)}
        )
        entry["count"] = int(entry["count"]) + 1
        entry["amount"] = Decimal(entry["amount"]) + (amount or 0)
    return list(rows.values())
