"""Amendments (変更契約): an envelope that changes a contract concluded earlier.

Changes are made electronically only to originals that were themselves concluded electronically
(Tosu City's briefing), so the original must be a completed envelope. Both completion
certificates show the link: the amendment's names its original, and the original's certificate
is issued again, listing its amendments, when an amendment is concluded.
"""

from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy import select
from sqlalchemy.orm import Session

from core.errors import InputError, NotFoundError, StateError
from core.model import Amendment, Envelope, utcnow
from core.records.audit import record_event
from core.states import EnvelopeState

__all__ = ["amended_by", "describe", "original_of", "record_amendment"]


def record_amendment(
    *, session: Session, envelope: Envelope, original_id: str, actor: str
) -> Amendment:
    """Mark ``envelope`` (not yet sent) as amending ``original_id``, which must be completed."""
    original = session.get(Envelope, original_id)
    if original is None:
        raise NotFoundError(
            "not_found.original",
            f"no envelope {original_id} to amend",
            "変更元の契約(原契約)が見つかりません。",
        )
    if original.id == envelope.id:
        raise InputError(
            "envelope.amends_itself",
            "an envelope cannot amend itself",
            "自身を原契約にはできません。",
        )
    if original.state is not EnvelopeState.COMPLETED:
        raise StateError(
            "state.original_not_completed",
            "only a contract concluded electronically can be amended",
            "変更契約の原契約は、電子契約で締結済みの契約である必要があります。",
            details={"original_state": original.state.value},
        )
    amendment = Amendment(envelope_id=envelope.id, original_id=original.id, created_at=utcnow())
    session.add(amendment)
    record_event(
        session=session,
        action="envelope.amends",
        actor=actor,
        envelope_id=envelope.id,
        detail={"original": original.id, "management_number": original.management_number},
    )
    return amendment


def original_of(*, session: Session, envelope_id: str) -> Envelope | None:
    """The envelope that ``envelope_id`` amends, if any."""
    return session.scalar(
        select(Envelope)
        .join(Amendment, Amendment.original_id == Envelope.id)
        .where(Amendment.envelope_id == envelope_id)
    )


def amended_by(
    *, session: Session, envelope_id: str, completed_only: bool = True
) -> Sequence[Envelope]:
    """The envelopes that amend ``envelope_id``, oldest first (by default only concluded ones)."""
    query = (
        select(Envelope)
        .join(Amendment, Amendment.envelope_id == Envelope.id)
        .where(Amendment.original_id == envelope_id)
        .order_by(Amendment.created_at, Envelope.id)
    )
    if completed_only:
        query = query.where(Envelope.state == EnvelopeState.COMPLETED.value)
    return session.scalars(query).all()


def describe(envelope: Envelope) -> str:
    """One line naming an envelope on a certificate: title, management number, certificate ID."""
    return (
        f"{envelope.title}(管理番号 {envelope.management_number}、"
        f"締結証明書ID {envelope.certificate_id})"
    )
