"""Push-back: finished envelopes become outbox deliveries, and deliveries become content.

:class:`PushbackObserver` is an :class:`~core.runtime.EnvelopeObserver`: when an envelope is
completed (or declined or cancelled, for sinks that ask for those) it adds one delivery per
subscribed sink in the very transaction of the state change, keyed
``"{sink}:{envelope_id}:{event}"`` so the same event can never make two deliveries for one sink. A renewal of a document's archive
timestamp (:mod:`core.records.archive`) adds one delivery of the renewed copy to each sink that takes
renewals and took the document at completion, keyed per document and renewal version.

:func:`assemble_content` is what a dispatcher calls at push time: the envelope's facts (contract
number, contractor, amount, conclusion date in JST, department, contract type and the
contractor's prior consent (date and 電磁的措置) ...), its guarantee references
with their decrypted keys, the signed PDFs and the completion certificate. Which of these a sink
receives, in which format and under which names, is the sink's configuration (``connectors``).
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Collection, Iterable, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session, joinedload

from core.envelopes.documents import read_document
from core.envelopes.guarantees import KIND_JA, authentication_key, list_guarantees
from core.envelopes.sealing import completion_certificate
from core.errors import NotFoundError
from core.intake.consent import CONTRACT_TYPE_JA, consented_on, measures_of
from core.model import (
    Award,
    Delivery,
    Document,
    Envelope,
    GuaranteeReference,
    Party,
    UsageRequest,
)
from core.outbound_types import FACT_NAMES, GuaranteeRecord, PushContent, PushDocument
from core.pushback.outbox import enqueue
from core.runtime import Runtime
from core.states import DeliveryState, EnvelopeState
from core.timezone import JST

__all__ = [
    "ContentRows",
    "PushbackObserver",
    "Subscription",
    "assemble_content",
    "delivery_key",
    "guarantee_update_key",
    "preload_content",
    "renewal_key",
]

log = logging.getLogger(__name__)

# Envelope events a sink can subscribe to, by their short names.
EVENTS: dict[str, str] = {
    "envelope.completed": "completed",
    "envelope.declined": "declined",
    "envelope.cancelled": "cancelled",
}
EVENT_NAMES = frozenset(EVENTS.values())


def delivery_key(target: str, envelope_id: str, event: str) -> str:
    """The stable idempotency key of one event of one envelope for one sink."""
    return f"{target}:{envelope_id}:{event}"


def renewal_key(target: str, envelope_id: str, document_id: str, version: int) -> str:
    """The idempotency key of one renewed copy (archive timestamp ``version`` of one document)
    for one sink: a new key per renewal, the same key for the same renewal."""
    return f"{target}:{envelope_id}:renewed:{document_id}:{version}"


def guarantee_update_key(target: str, envelope_id: str, change: str) -> str:
    """The idempotency key of one guarantee change after completion for one sink."""
    return f"{target}:{envelope_id}:guarantees:{change}"


@dataclass(frozen=True)
class Subscription:
    """One sink and the events (short names: completed, declined, cancelled) it receives;
    ``renewals``: it also receives each renewed copy of a document it took at completion;
    ``guarantee_updates``: each change of the guarantee references after completion."""

    target: str
    events: frozenset[str] = frozenset({"completed"})
    renewals: bool = False
    guarantee_updates: bool = False


class PushbackObserver:
    """Adds the deliveries an envelope event causes, inside the event's transaction."""

    def __init__(self, subscriptions: Iterable[Subscription]) -> None:
        self.subscriptions = tuple(subscriptions)
        unknown = {e for s in self.subscriptions for e in s.events} - EVENT_NAMES
        if unknown:
            raise ValueError(f"unknown push-back events: {sorted(unknown)}")

    def envelope_event(
        self, *, session: Session, envelope: Envelope, event: str, party: Party | None
    ) -> None:
        """Enqueue one delivery per subscribed sink (an existing key is left as it is)."""
        short = EVENTS.get(event)
        if short is None:
            return
        for subscription in self.subscriptions:
            if short not in subscription.events:
                continue
            enqueue(
                session=session,
                target=subscription.target,
                idempotency_key=delivery_key(subscription.target, envelope.id, short),
                payload={
                    "envelope_id": envelope.id,
                    "event": short,
                    "management_number": envelope.management_number,
                },
                envelope_id=envelope.id,
            )

    def document_renewed(
        self, *, session: Session, envelope: Envelope, document: Document, version: int
    ) -> None:
        """Enqueue the renewed copy for each sink that takes renewals and took the document
        (its completion delivery exists), inside the renewal's transaction."""
        for subscription in self.subscriptions:
            if not subscription.renewals:
                continue
            took = session.scalar(
                select(Delivery.id).where(
                    Delivery.idempotency_key
                    == delivery_key(subscription.target, envelope.id, "completed")
                )
            )
            if took is None:
                continue
            enqueue(
                session=session,
                target=subscription.target,
                idempotency_key=renewal_key(subscription.target, envelope.id, document.id, version),
                payload={
                    "envelope_id": envelope.id,
                    "event": "renewed",
                    "management_number": envelope.management_number,
                    "document_id": document.id,
                    "version": version,
                },
                envelope_id=envelope.id,
            )

    def guarantees_changed(self, *, session: Session, envelope: Envelope, change: str) -> None:
        """Enqueue one update for each sink that takes guarantee updates and whose completion
        delivery has been claimed already (a pending one reads the references fresh when it is
        pushed, so the change reaches the sink once either way)."""
        for subscription in self.subscriptions:
            if not subscription.guarantee_updates:
                continue
            took = session.scalar(
                select(Delivery.state).where(
                    Delivery.idempotency_key
                    == delivery_key(subscription.target, envelope.id, "completed")
                )
            )
            if took is None or took is DeliveryState.PENDING:
                continue
            prefix = guarantee_update_key(subscription.target, envelope.id, "")
            earlier = session.scalar(
                select(func.count(Delivery.id)).where(Delivery.idempotency_key.startswith(prefix))
            )
            enqueue(
                session=session,
                target=subscription.target,
                idempotency_key=guarantee_update_key(subscription.target, envelope.id, change),
                payload={
                    "envelope_id": envelope.id,
                    "event": "guarantee_updated",
                    "management_number": envelope.management_number,
                    "change": change,
                    "version": int(earlier or 0) + 1,
                },
                envelope_id=envelope.id,
            )


def _department(session: Session, envelope: Envelope, default: str | None) -> str | None:
    # The award an envelope was made from knows its department (課所名); hand-made envelopes
    # fall back to the buyer's default department.
    department = session.scalar(
        select(Award.department).where(Award.envelope_id == envelope.id).limit(1)
    )
    return department or default


@dataclass
class ContentRows:
    """The rows :func:`assemble_content` reads, loaded for a batch of envelopes at once
    (:func:`preload_content`): a few queries for the batch instead of four per delivery."""

    envelopes: dict[str, Envelope] = field(default_factory=dict)
    guarantees: dict[str, list[GuaranteeReference]] = field(default_factory=dict)
    departments: dict[str, str | None] = field(default_factory=dict)
    consents: dict[str, UsageRequest] = field(default_factory=dict)


def _envelope_query() -> Any:
    # Only what is pushed (documents with their revisions, the contractor), in one SELECT.
    return (
        select(Envelope)
        .options(
            joinedload(Envelope.documents).joinedload(Document.revisions),
            joinedload(Envelope.contractor),
        )
        .execution_options(populate_existing=True)
    )


def preload_content(*, session: Session, envelope_ids: Collection[str]) -> ContentRows:
    """Load what :func:`assemble_content` reads for these envelopes (not the documents' bytes,
    which are read one delivery at a time) into ``session``, which must stay open while the
    rows are used."""
    ids = sorted(set(envelope_ids))
    rows = ContentRows()
    if not ids:
        return rows
    for envelope in session.scalars(_envelope_query().where(Envelope.id.in_(ids))).unique():
        rows.envelopes[envelope.id] = envelope
        rows.guarantees[envelope.id] = []
        rows.departments[envelope.id] = None
    for reference in session.scalars(
        select(GuaranteeReference)
        .where(GuaranteeReference.envelope_id.in_(ids))
        .order_by(GuaranteeReference.created_at, GuaranteeReference.id)
    ):
        rows.guarantees[reference.envelope_id].append(reference)
    for envelope_id, department in session.execute(
        select(Award.envelope_id, Award.department).where(Award.envelope_id.in_(ids))
    ):
        if envelope_id is not None and rows.departments.get(envelope_id) is None:
            rows.departments[envelope_id] = department
    consent_ids = [e.consent_id for e in rows.envelopes.values() if e.consent_id]
    if consent_ids:
        for consent in session.scalars(
            select(UsageRequest).where(UsageRequest.id.in_(consent_ids))
        ):
            rows.consents[consent.id] = consent
    return rows


def _facts(
    session: Session,
    runtime: Runtime,
    envelope: Envelope,
    event: str,
    department: str | None,
    rows: ContentRows | None,
) -> dict[str, Any]:
    contractor = envelope.contractor
    consent: UsageRequest | None = None
    if envelope.consent_id and rows is not None:
        consent = rows.consents.get(envelope.consent_id)
    elif envelope.consent_id:
        consent = session.get(UsageRequest, envelope.consent_id)
    concluded = envelope.completed_at.astimezone(JST) if envelope.completed_at else None
    amount: Decimal | None = envelope.amount
    transaction_date: dt.date | None = envelope.transaction_date
    facts: dict[str, Any] = {
        "envelope_id": envelope.id,
        "event": event,
        "state": envelope.state.value,
        "management_number": envelope.management_number,
        "title": envelope.title,
        "contractor_name": (contractor.name if contractor else None) or envelope.counterparty,
        "corporate_number": contractor.corporate_number if contractor else None,
        "amount": amount,
        "transaction_date": transaction_date,
        "concluded_at": concluded,
        "concluded_on": concluded.date() if concluded else None,
        "department": (
            (rows.departments.get(envelope.id) or department)
            if rows is not None
            else _department(session, envelope, department)
        ),
        "buyer": runtime.buyer_name,
        "creator": envelope.creator,
        "certificate_id": envelope.certificate_id,
        "document_names": " / ".join(d.name for d in envelope.documents),
        "contract_type": envelope.contract_type,
        "contract_type_ja": CONTRACT_TYPE_JA.get(envelope.contract_type or "", None),
        # The contractor's prior consent the contract was made on (建設業法19条3項 for a
        # construction contract): its date and the 電磁的措置 agreed to; None without one.
        "consent_on": consented_on(consent) if consent is not None else None,
        "consent_measures": measures_of(consent) if consent is not None else None,
    }
    assert tuple(facts) == FACT_NAMES
    return facts


def assemble_content(
    *,
    session: Session,
    runtime: Runtime,
    envelope_id: str,
    event: str,
    documents: bool = True,
    certificate: bool = True,
    guarantee_keys: bool = True,
    department: str | None = None,
    document_ids: Collection[str] | None = None,
    version: int | None = None,
    rows: ContentRows | None = None,
) -> PushContent:
    """What one delivery may send, read fresh from the database and the blob store.

    Documents and the certificate are read only when asked for and only for a completed
    envelope (a declined or cancelled one has nothing concluded to send); ``document_ids``
    limits the documents to those (a renewed copy), ``version`` names the renewal. ``rows``:
    what :func:`preload_content` loaded for a batch (an envelope not in it is read here).
    """
    if rows is not None and envelope_id not in rows.envelopes:
        rows = None
    envelope = (
        rows.envelopes[envelope_id]
        if rows is not None
        else session.scalars(_envelope_query().where(Envelope.id == envelope_id))
        .unique()
        .one_or_none()
    )
    if envelope is None:
        raise NotFoundError(
            "not_found.envelope", f"no envelope {envelope_id}", "指定された封筒が見つかりません。"
        )
    completed = envelope.state is EnvelopeState.COMPLETED
    references = (
        rows.guarantees[envelope.id]
        if rows is not None
        else list_guarantees(session=session, envelope_id=envelope.id)
    )
    guarantees = tuple(
        GuaranteeRecord(
            kind=ref.kind.value,
            kind_ja=KIND_JA[ref.kind],
            contract_number=ref.contract_number,
            issuer=ref.issuer,
            authentication_key=(
                authentication_key(runtime=runtime, reference=ref) if guarantee_keys else ""
            ),
        )
        for ref in references
    )
    docs: Sequence[PushDocument] = ()
    if documents and completed:
        docs = [
            PushDocument(name=doc.name, data=read_document(runtime=runtime, document=doc))
            for doc in envelope.documents
            if document_ids is None or doc.id in document_ids
        ]
    cert = (
        completion_certificate(runtime=runtime, envelope=envelope)
        if certificate and completed
        else None
    )
    return PushContent(
        envelope_id=envelope.id,
        event=event,
        facts=_facts(session, runtime, envelope, event, department, rows),
        guarantees=guarantees,
        documents=tuple(docs),
        certificate=cert,
        version=version,
    )
