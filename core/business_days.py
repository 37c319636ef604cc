"""Business days of a Japanese public office (閉庁日 excluded).

Closed: Saturdays, Sundays, national holidays (``jpholiday``, which follows the Cabinet Office's
list including substitute holidays), the year-end closure 12/29–1/3, and any extra closed days
the buyer configures. Deadlines count business days after the starting day: "within 2 business
days of the award" on a Friday award means the following Tuesday.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable
from dataclasses import dataclass, field

import jpholiday

__all__ = ["BusinessCalendar"]


def _year_end(day: dt.date) -> bool:
    return (day.month == 12 and day.day >= 29) or (day.month == 1 and day.day <= 3)


@dataclass(frozen=True)
class BusinessCalendar:
    """Which days the office is open."""

    extra_closed: frozenset[dt.date] = field(default_factory=frozenset)
    year_end_closure: bool = True
    _open: dict[dt.date, bool] = field(
        default_factory=dict, init=False, repr=False, compare=False, hash=False
    )

    @classmethod
    def with_closed_days(
        cls, days: Iterable[dt.date], *, year_end_closure: bool = True
    ) -> BusinessCalendar:
        """A calendar with these extra closed days."""
        return cls(extra_closed=frozenset(days), year_end_closure=year_end_closure)

    def is_business_day(self, day: dt.date) -> bool:
        """True when the office is open on ``day``."""
        known = self._open.get(day)
        if known is None:
            known = not (
                day.weekday() >= 5
                or day in self.extra_closed
                or (self.year_end_closure and _year_end(day))
                or jpholiday.is_holiday(day)
            )
            self._open[day] = known
        return known

    def next_business_day(self, day: dt.date) -> dt.date:
        """``day`` itself when open, else the next open day (a deadline on a closed day moves)."""
        while not self.is_business_day(day):
            day += dt.timedelta(days=1)
        return day

    def add_business_days(self, start: dt.date, days: int) -> dt.date:
        """The ``days``-th business day after ``start`` (``start`` itself is not counted)."""
        if days < 0:
            raise ValueError("days must not be negative")
        day = start
        counted = 0
        while counted < days:
            day += dt.timedelta(days=1)
            if self.is_business_day(day):
                counted += 1
        return day if days else self.next_business_day(start)

    def business_days_between(self, start: dt.date, end: dt.date) -> int:
        """Business days after ``start`` up to and including ``end`` (0 when end <= start)."""
        count = 0
        day = start
        while day < end:
            day += dt.timedelta(days=1)
            if self.is_business_day(day):
                count += 1
        return count
