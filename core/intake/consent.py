"""Contract types and the contractor's prior consent (建設業法19条3項).

A construction contract (建設工事) may be concluded electronically only with the contractor's
prior consent to the 電磁的措置 used (建設業法施行令5条の5, 施行規則13条の4). The consent is the
usage request (電子契約利用申出書 / 承諾書, :class:`~core.model.UsageRequest`): its date, the
measures agreed to, and, once withdrawn, when and by whom. Every envelope carries a contract
type; one of type ``construction`` is neither created nor sent without a consent in force, on
every path (intake, API, compose page). A withdrawn consent stops new envelopes to that
contractor.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from core.errors import InputError, NotFoundError, StateError
from core.model import Contractor, UsageRequest, utcnow
from core.records.audit import record_event
from core.timezone import JST

__all__ = [
    "CONSTRUCTION",
    "CONTRACT_TYPES",
    "CONTRACT_TYPE_JA",
    "check_contract_type",
    "consent_json",
    "consented_on",
    "current_consent",
    "get_consent",
    "has_withdrawn",
    "list_consents",
    "measures_of",
    "require_consent",
    "withdraw_consent",
]

CONSTRUCTION = "construction"
CONTRACT_TYPES = (CONSTRUCTION, "other")
CONTRACT_TYPE_JA = {CONSTRUCTION: "建設工事", "other": "建設工事以外"}
# What the gateway itself does, when the consent does not name the measures.
DEFAULT_MEASURES = "電子契約サービス(立会人型電子署名・タイムスタンプ)による契約書面の交付"


def check_contract_type(contract_type: str | None) -> str:
    """The contract type, or ``envelope.contract_type`` when it is missing or unknown."""
    if contract_type not in CONTRACT_TYPES:
        raise InputError(
            "envelope.contract_type",
            f"contract_type must be one of {', '.join(CONTRACT_TYPES)}",
            "契約種別(建設工事/建設工事以外)を指定してください。",
        )
    return contract_type


def consented_on(consent: UsageRequest) -> dt.date:
    """The date of the consent: the one on the form, else the day it was received (JST)."""
    if consent.consented_on is not None:
        return consent.consented_on
    return consent.created_at.astimezone(JST).date()


def measures_of(consent: UsageRequest) -> str:
    """The 電磁的措置 the contractor agreed to."""
    return consent.measures or DEFAULT_MEASURES


def consent_json(consent: UsageRequest | None) -> dict[str, Any] | None:
    """A consent as the API and pages show it (None: no consent recorded)."""
    if consent is None:
        return None
    return {
        "id": consent.id,
        "contractor_id": consent.contractor_id,
        "consented_on": consented_on(consent).isoformat(),
        "measures": measures_of(consent),
        "signer_name": consent.signer_name,
        "signer_email": consent.signer_email,
        "withdrawn_at": consent.withdrawn_at.isoformat() if consent.withdrawn_at else None,
        "withdrawn_by": consent.withdrawn_by,
        "withdrawal_reason": consent.withdrawal_reason,
    }


def _refuse_without_consent() -> InputError:
    return InputError(
        "consent.required",
        "a construction contract needs the contractor's recorded prior consent "
        "(建設業法19条3項) before it is created or sent",
        "建設工事の請負契約は、受注者の事前の承諾(建設業法第19条第3項、承諾日の記録)が"
        "なければ作成・送信できません。電子契約利用申出書(承諾書)を登録してください。",
    )


def require_consent(
    *, session: Session, contract_type: str | None, consent_id: str | None
) -> UsageRequest | None:
    """For a construction contract, the consent in force it is made on, or
    ``consent.required`` / ``consent.withdrawn``; other types need none."""
    if contract_type != CONSTRUCTION:
        return None
    consent = session.get(UsageRequest, consent_id) if consent_id else None
    if consent is None:
        raise _refuse_without_consent()
    if consent.withdrawn_at is not None:
        raise InputError(
            "consent.withdrawn",
            f"the contractor withdrew its consent {consent.id}",
            "受注者が電子契約の承諾を撤回しているため、この建設工事の契約は作成・送信できません。",
            details={"consent": consent.id},
        )
    return consent


def current_consent(*, session: Session, contractor_id: str) -> UsageRequest | None:
    """The contractor's consent in force that covers all its contracts (newest first)."""
    return session.scalars(
        select(UsageRequest)
        .where(
            UsageRequest.contractor_id == contractor_id,
            UsageRequest.withdrawn_at.is_(None),
            UsageRequest.award_ref.is_(None),
        )
        .order_by(UsageRequest.updated_at.desc(), UsageRequest.id)
        .limit(1)
    ).first()


def has_withdrawn(*, session: Session, contractor_id: str) -> bool:
    """Whether the contractor withdrew a consent and has none in force: no new envelopes."""
    rows = session.scalars(
        select(UsageRequest.withdrawn_at).where(UsageRequest.contractor_id == contractor_id)
    ).all()
    return bool(rows) and all(at is not None for at in rows)


def list_consents(
    *, session: Session, contractor_id: str | None = None, limit: int = 100
) -> Sequence[UsageRequest]:
    """Consents (usage requests), newest first."""
    query = select(UsageRequest).order_by(UsageRequest.updated_at.desc()).limit(limit)
    if contractor_id is not None:
        query = query.where(UsageRequest.contractor_id == contractor_id)
    return session.scalars(query).all()


def get_consent(*, session: Session, consent_id: str) -> UsageRequest:
    """One consent, or ``not_found.consent``."""
    consent = session.get(UsageRequest, consent_id)
    if consent is None:
        raise NotFoundError(
            "not_found.consent", f"no consent {consent_id}", "承諾の記録が見つかりません。"
        )
    return consent


def withdraw_consent(
    *, session: Session, consent_id: str, actor: str, reason: str, ip: str | None = None
) -> UsageRequest:
    """Record the contractor's withdrawal of its consent (audited): no new envelope is made or
    sent on it; envelopes already sent are left to staff."""
    if not reason.strip():
        raise StateError("state.reason_required", "give a reason", "理由を入力してください。")
    consent = get_consent(session=session, consent_id=consent_id)
    if consent.withdrawn_at is None:
        consent.withdrawn_at = utcnow()
        consent.withdrawn_by = actor[:200]
        consent.withdrawal_reason = reason[:2000]
        consent.updated_at = consent.withdrawn_at
        contractor = session.get(Contractor, consent.contractor_id)
        record_event(
            session=session,
            action="consent.withdrawn",
            actor=actor,
            ip=ip,
            detail={
                "consent": consent.id,
                "contractor": consent.contractor_id,
                "contractor_name": contractor.name if contractor else None,
                "reason": reason,
            },
        )
    return consent
