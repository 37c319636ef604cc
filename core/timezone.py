"""The one time zone the gateway's dates are in: Japan Standard Time.

Conclusion dates, deadlines in business days, report months, file-name dates and the times shown
to people are all JST, whatever zone the server runs in; every module imports :data:`JST` from
here rather than building its own ``ZoneInfo``. The scheduler's default zone is the same name.
"""

from __future__ import annotations

from datetime import datetime
from zoneinfo import ZoneInfo

JST_NAME = "Asia/Tokyo"
JST = ZoneInfo(JST_NAME)

__all__ = ["JST", "JST_NAME", "jst_stamp"]


def jst_stamp(moment: datetime) -> str:
    """An aware moment as the CLI and logs show it to an operator: ``2026-12-07 09:30:00 JST``."""
    return moment.astimezone(JST).strftime("%Y-%m-%d %H:%M:%S JST")
