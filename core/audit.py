"""The audit trail: one inserted row per operation, never updated or deleted."""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from core.model import AuditEvent, utcnow


def record_event(
    *,
    session: Session,
    action: str,
    actor: str,
    envelope_id: str | None = None,
    party_id: str | None = None,
    ip: str | None = None,
    at: dt.datetime | None = None,
    detail: dict[str, Any] | None = None,
) -> AuditEvent:
    """Add one audit event to the session's transaction (it commits with the change it records)."""
    event = AuditEvent(
        action=action,
        actor=actor,
        envelope_id=envelope_id,
        party_id=party_id,
        ip=ip,
        at=at or utcnow(),
        detail=detail or {},
    )
    session.add(event)
    return event


def list_events(*, session: Session, envelope_id: str) -> Sequence[AuditEvent]:
    """Every audit event of one envelope, oldest first."""
    return session.scalars(
        select(AuditEvent)
        .where(AuditEvent.envelope_id == envelope_id)
        .order_by(AuditEvent.at, AuditEvent.id)
    ).all()
