"""Business days: weekends, national holidays (jpholiday), 12/29-1/3 and configured closures."""

from __future__ import annotations

import datetime as dt

from core.business_days import BusinessCalendar

D = dt.date


def test_deadlines_skip_weekends_holidays_and_the_year_end() -> None:
    calendar = BusinessCalendar()
    assert calendar.add_business_days(D(2025, 10, 1), 2) == D(2025, 10, 3)  # Wed → Fri
    assert calendar.add_business_days(D(2025, 10, 10), 2) == D(2025, 10, 15)  # 10/13 スポーツの日
    assert calendar.add_business_days(D(2025, 12, 26), 2) == D(2026, 1, 6)  # 年末年始
    assert calendar.add_business_days(D(2025, 4, 25), 5) == D(2025, 5, 7)  # 昭和の日, GW
    assert calendar.add_business_days(D(2025, 11, 22), 0) == D(2025, 11, 25)  # Sat, 勤労感謝の振替
    assert not calendar.is_business_day(D(2025, 11, 24))  # 振替休日
    assert calendar.business_days_between(D(2025, 10, 1), D(2025, 10, 8)) == 5


def test_configured_closed_days_and_no_year_end_closure() -> None:
    calendar = BusinessCalendar.with_closed_days([D(2025, 10, 2)], year_end_closure=False)
    assert calendar.add_business_days(D(2025, 10, 1), 1) == D(2025, 10, 3)
    assert calendar.is_business_day(D(2025, 12, 29))
    assert calendar.next_business_day(D(2026, 1, 1)) == D(2026, 1, 2)
