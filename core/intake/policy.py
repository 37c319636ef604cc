"""How awards become envelopes: who creates them, whether they are sent at once, the
deadlines in business days and the access-code policy.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from core.business_days import BusinessCalendar
from core.envelopes.links import AccessCodePolicy

__all__ = [
    "IntakePolicy",
]


@dataclass(frozen=True)
class IntakePolicy:
    """How awards become envelopes: who creates them, whether they are sent at once, and the
    deadlines in business days (usage request within 2, signing within 5, by default)."""

    creator: str = "自動取込"
    creator_email: str | None = None
    auto_send: bool = False
    calendar: BusinessCalendar = field(default_factory=BusinessCalendar)
    usage_request_business_days: int = 2
    signing_business_days: int = 5
    access_codes: AccessCodePolicy | None = None
