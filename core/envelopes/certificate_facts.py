"""What a completion certificate states, gathered from the envelope and its audit trail.

Each line of the certificate says what really happened, from what was recorded when it happened:

* creation and sending name the surface that did them (``via`` in the ``envelope.created`` /
  ``envelope.sent`` events, see :func:`operation_via`): a staff member logged in to the staff
  pages (by name), an API client (by name), or intake from a named source;
* each approval names the authentication its party used (``method`` in ``party.approved``);
* each forward (転送) names the original addressee, the new one, the reason and the time;
* each document is listed with the SHA-256 of the concluded file;
* the status line is the result of verifying those files (:func:`check_document`), not fixed text;
* a construction contract shows the contractor's prior consent (its date and 電磁的措置).

:func:`issue_certificate` renders the certificate and signs it with the gateway key and a
timestamp, so the stored file is itself verifiable.
"""

from __future__ import annotations

import datetime as dt
import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from core.envelopes.amendments import amended_by, describe, original_of
from core.envelopes.certificate import (
    CertificateConsent,
    CertificateData,
    CertificateDocument,
    CertificateForward,
    CertificateOperation,
    render_certificate,
)
from core.intake.consent import CONSTRUCTION, CONTRACT_TYPE_JA, consented_on, measures_of
from core.model import AuditEvent, Envelope, Staff
from core.records.audit import list_events
from core.signing import SigningEngine, VerificationReport
from core.timezone import JST

if TYPE_CHECKING:
    from core.runtime import Runtime

__all__ = [
    "DocumentCheck",
    "certificate_data",
    "check_document",
    "issue_certificate",
    "operation_via",
    "status_line",
]

CERTIFICATE_REASON = "電子契約締結証明書の発行"
_TIMESTAMP_METHOD = "ドキュメントタイムスタンプ(RFC 3161)"

_ACTION_JA = {
    "envelope.created": "作成",
    "envelope.sent": "送信",
    "party.forwarded": "転送",
    "party.approved": "承認",
    "party.declined": "却下",
    "envelope.completed": "タイムスタンプ付与・締結",
}


@dataclass(frozen=True)
class DocumentCheck:
    """One concluded document as the certificate lists it, with the verification of its file."""

    name: str
    sha256: str
    signatures: int
    report: VerificationReport


def check_document(engine: SigningEngine, *, name: str, data: bytes) -> DocumentCheck:
    """Hash and verify one concluded document (offline, from its embedded data)."""
    report = engine.verify(data)
    approvals = sum(1 for s in report.signatures if s.kind == "approval")
    return DocumentCheck(
        name=name, sha256=hashlib.sha256(data).hexdigest(), signatures=approvals, report=report
    )


def operation_via(
    *, session: Session, actor: str, source: str | None = None
) -> dict[str, str | None]:
    """How an envelope was created or sent, from its actor: ``api:NAME`` is an API client,
    ``intake`` (or a ``source``) is intake, a staff account's e-mail is a logged-in staff member.
    Stored in the event, so the certificate never has to guess later."""
    if source is not None or actor == "intake":
        return {"method": "intake", "source": source}
    if actor.startswith("api:"):
        return {"method": "api", "client": actor.removeprefix("api:")}
    staff = session.scalar(select(Staff).where(func.lower(Staff.email) == actor.strip().lower()))
    if staff is not None:
        return {"method": "staff", "staff_name": staff.name, "staff_email": staff.email}
    return {"method": "other", "actor": actor}


def _jst(value: dt.datetime) -> str:
    return value.astimezone(JST).strftime("%Y/%m/%d %H:%M:%S")


def status_line(checks: Sequence[DocumentCheck], at: dt.datetime) -> str:
    """The certificate's status line: what the verification of the concluded files found."""
    when = f"{_jst(at)} (JST)"
    if not checks:
        return f"{when}時点で検証できる文書がありません。"
    failed = [c for c in checks if not c.report.ok]
    if failed:
        names = "、".join(c.name for c in failed)
        return (
            f"{when}に行った検証で、次の文書の電子署名またはタイムスタンプを有効と"
            f"確認できませんでした: {names}"
        )
    signatures = sum(c.signatures for c in checks)
    stamps = sum(1 for c in checks for s in c.report.signatures if s.kind == "document_timestamp")
    return (
        f"{when}に全{len(checks)}文書の電子署名{signatures}件・ドキュメントタイムスタンプ"
        f"{stamps}件を検証し、すべて有効(改ざんなし・信頼できる証明書・長期検証情報あり)"
        "であることを確認しました。"
    )


def _via(session: Session, event: AuditEvent, intake_source: str | None) -> Mapping[str, object]:
    via = event.detail.get("via")
    if isinstance(via, dict):
        if via.get("method") == "intake" and not via.get("source"):
            return {**via, "source": intake_source}
        return via
    # Recorded before the events carried ``via``: read it from the actor.
    return operation_via(session=session, actor=event.actor, source=None) | (
        {"source": intake_source} if event.actor == "intake" else {}
    )


def _creation_line(
    via: Mapping[str, object], envelope: Envelope, buyer: str
) -> tuple[str, str, str | None, str | None]:
    """(method, name, company, email) of a creation or sending."""
    method = via.get("method")
    if method == "staff":
        name = str(via.get("staff_name") or envelope.creator)
        return (
            f"職員ログイン({name})",
            name,
            buyer,
            str(via.get("staff_email") or "") or None,
        )
    if method == "api":
        return (
            f"API連携(クライアント: {via.get('client')})",
            envelope.creator,
            buyer,
            envelope.creator_email,
        )
    if method == "intake":
        source = via.get("source") or "不明"
        return (
            f"落札情報の取込(連携元: {source})",
            envelope.creator,
            buyer,
            envelope.creator_email,
        )
    return (f"その他({via.get('actor', '')})", envelope.creator, buyer, envelope.creator_email)


def certificate_data(
    *,
    session: Session,
    envelope: Envelope,
    now: dt.datetime,
    buyer: str,
    checks: Sequence[DocumentCheck],
    completing: bool = False,
) -> CertificateData:
    """Everything the certificate of ``envelope`` shows, as of ``now``. With ``completing``,
    the envelope is being concluded at ``now`` and its ``envelope.completed`` event is not
    recorded yet: the certificate shows that operation all the same."""
    from core.envelopes.approvals import AUTH_ACCESS_CODE
    from core.envelopes.labels import auth_method_ja

    parties = {p.id: p for p in envelope.parties}
    events = list_events(session=session, envelope_id=envelope.id)
    intake_source = next(
        (
            str(e.detail.get("source"))
            for e in events
            if e.action == "award.envelope_created" and e.detail.get("source")
        ),
        None,
    )
    operations: list[CertificateOperation] = []
    forwards: list[CertificateForward] = []
    for event in events:
        if event.action not in _ACTION_JA:
            continue
        party = parties.get(event.party_id or "")
        note: str | None = None
        if event.action == "envelope.completed":
            name, company, email = "keiyaku-gateway", None, None
            method = _TIMESTAMP_METHOD
        elif event.action in ("envelope.created", "envelope.sent"):
            method, name, company, email = _creation_line(
                _via(session, event, intake_source), envelope, buyer
            )
        elif event.action == "party.forwarded":
            d = event.detail
            company = str(d.get("from_company") or "") or (party.company if party else None)
            forward = CertificateForward(
                at=event.at,
                from_name=str(d.get("from_name", "")),
                from_company=company,
                from_email=str(d.get("from_email", "")),
                to_name=str(d.get("to_name", "")),
                to_email=str(d.get("to_email", "")),
                reason=str(d.get("reason") or "(記録なし)"),
            )
            forwards.append(forward)
            name, email = forward.from_name, forward.from_email
            method = auth_method_ja(AUTH_ACCESS_CODE)
            note = f"転送先: {forward.to_name} ({forward.to_email})\n理由: {forward.reason}"
        elif party is not None:
            name, company, email = party.name, party.company, party.email
            recorded = event.detail.get("method")
            method = auth_method_ja(str(recorded) if recorded else party.auth_method)
        else:
            name, company, email, method = event.actor, None, None, ""
        operations.append(
            CertificateOperation(
                at=event.at,
                ip=event.ip,
                method=method,
                action=_ACTION_JA[event.action],
                name=name,
                company=company,
                email=email,
                note=note,
            )
        )
    if completing and not any(e.action == "envelope.completed" for e in events):
        operations.append(
            CertificateOperation(
                at=now,
                ip=None,
                method=_TIMESTAMP_METHOD,
                action=_ACTION_JA["envelope.completed"],
                name="keiyaku-gateway",
                company=None,
                email=None,
            )
        )
    consent = envelope.consent
    original = original_of(session=session, envelope_id=envelope.id)
    return CertificateData(
        amends=describe(original) if original is not None else None,
        amended_by=[describe(e) for e in amended_by(session=session, envelope_id=envelope.id)],
        certificate_id=envelope.certificate_id,
        title=envelope.title,
        document_names=[d.name for d in envelope.documents],
        management_number=envelope.management_number,
        creator=envelope.creator,
        creator_email=envelope.creator_email,
        buyer_name=buyer,
        status_line=status_line(checks, now),
        operations=operations,
        issued_at=now,
        contract_type=CONTRACT_TYPE_JA.get(envelope.contract_type or ""),
        consent=(
            CertificateConsent(consented_on=consented_on(consent), measures=measures_of(consent))
            if consent is not None
            else None
        ),
        consent_required=envelope.contract_type == CONSTRUCTION,
        documents=[
            CertificateDocument(name=c.name, sha256=c.sha256, signatures=c.signatures)
            for c in checks
        ],
        forwards=forwards,
    )


def issue_certificate(
    *,
    session: Session,
    runtime: Runtime,
    envelope: Envelope,
    now: dt.datetime,
    checks: Sequence[DocumentCheck],
    completing: bool = False,
) -> bytes:
    """The signed completion certificate of ``envelope``: rendered, then signed with the
    gateway key and timestamped (a TSA outage raises the retriable ``signing.tsa_unreachable``).
    ``completing`` as for :func:`certificate_data`."""
    data = certificate_data(
        session=session,
        envelope=envelope,
        now=now,
        buyer=runtime.buyer_name,
        checks=checks,
        completing=completing,
    )
    return runtime.signing.sign_certificate(render_certificate(data), reason=CERTIFICATE_REASON)
