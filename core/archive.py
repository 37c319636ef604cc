"""Long-term validity: renew the document timestamp of finished documents before it lapses.

A sealed document is PAdES B-LTA: its newest document timestamp proves that everything before
it (signatures, certificates, revocation data) existed while still valid. That proof lasts only
as long as the TSA certificate behind the timestamp. Before it expires, an *archive timestamp*
adds the validation data of that timestamp and a fresh timestamp over the whole file
(:meth:`core.signing.SigningEngine.renew_archival_timestamp`), so the chain is extended for
another TSA lifetime; repeated, a contract stays verifiable for the 10+ years the law asks.

``documents.timestamp_expires_at`` holds when the newest timestamp's chain expires (set at seal
and at each renewal), so finding what is due is one indexed query. Each renewal is a new
``archive`` :class:`~core.model.DocumentRevision` (an incremental update, stored as an append)
and one audit event, committed together. Two workers renewing the same document at once cannot
both append: ``(document_id, seq)`` is unique, and the loser's transaction rolls back.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from zoneinfo import ZoneInfo

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, selectinload

from core.audit import record_event
from core.envelopes import Runtime, read_document, store_revision
from core.errors import GatewayError, NotFoundError
from core.model import Document, Envelope, utcnow
from core.states import EnvelopeState

__all__ = [
    "RenewalReport",
    "backfill_timestamp_expiry",
    "list_documents_due",
    "renew_document_timestamp",
    "renew_due_timestamps",
]

log = logging.getLogger(__name__)
JST = ZoneInfo("Asia/Tokyo")


@dataclass
class RenewalReport:
    """What one renewal run did: documents renewed, and those that failed with their code."""

    renewed: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)
    backfilled: int = 0


def _jst(moment: dt.datetime | None) -> str | None:
    return moment.astimezone(JST).isoformat() if moment is not None else None


def backfill_timestamp_expiry(*, session: Session, runtime: Runtime, limit: int = 500) -> int:
    """Read and store the timestamp expiry of completed documents that have none yet (sealed
    before the column existed). Commits; returns how many were filled."""
    documents = session.scalars(
        select(Document)
        .join(Envelope, Envelope.id == Document.envelope_id)
        .where(
            Envelope.state == EnvelopeState.COMPLETED.value,
            Envelope.documents_purged_at.is_(None),
            Document.timestamp_expires_at.is_(None),
        )
        .options(selectinload(Document.revisions), selectinload(Document.envelope))
        .order_by(Document.id)
        .limit(limit)
    ).all()
    filled = 0
    for document in documents:
        data = read_document(runtime=runtime, document=document)
        expiry = runtime.signing.timestamp_expiry(data)
        if expiry is not None:
            document.timestamp_expires_at = expiry
            filled += 1
    session.commit()
    return filled


def list_documents_due(
    *, session: Session, margin: dt.timedelta, now: dt.datetime | None = None, limit: int = 100
) -> Sequence[Document]:
    """Completed documents whose newest timestamp expires within ``margin`` of ``now``,
    soonest first (never those whose retention purge deleted them)."""
    horizon = (now or utcnow()) + margin
    return session.scalars(
        select(Document)
        .join(Envelope, Envelope.id == Document.envelope_id)
        .where(
            Envelope.state == EnvelopeState.COMPLETED.value,
            Envelope.documents_purged_at.is_(None),  # deleted at the end of their retention
            Document.timestamp_expires_at.is_not(None),
            Document.timestamp_expires_at <= horizon,
        )
        .options(selectinload(Document.revisions))
        .order_by(Document.timestamp_expires_at, Document.id)
        .limit(limit)
    ).all()


def renew_document_timestamp(
    *, session: Session, runtime: Runtime, document_id: str, actor: str = "system"
) -> Document:
    """Add an archive timestamp to one document as a new ``archive`` revision, with its audit
    event, and commit. A TSA outage raises the retriable ``signing.tsa_unreachable``."""
    document = session.scalars(
        select(Document).where(Document.id == document_id).options(selectinload(Document.revisions))
    ).one_or_none()
    if document is None:
        raise NotFoundError(
            "not_found.document",
            f"document {document_id} does not exist",
            f"文書 {document_id} は存在しません。",
        )
    previous_expiry = document.timestamp_expires_at
    current = read_document(runtime=runtime, document=document)
    renewed = runtime.signing.renew_archival_timestamp(current)
    expiry = runtime.signing.timestamp_expiry(renewed)
    revision = store_revision(
        runtime=runtime, document=document, previous=current, new=renewed, reason="archive"
    )
    del current, renewed
    now = utcnow()
    document.revisions.append(revision)
    document.size = revision.size
    document.timestamp_expires_at = expiry
    record_event(
        session=session,
        action="document.retimestamped",
        actor=actor,
        envelope_id=document.envelope_id,
        at=now,
        detail={
            "document_id": document.id,
            "document": document.name,
            "revision": revision.seq,
            "previous_expiry": _jst(previous_expiry),
            "expires_at": _jst(expiry),
        },
    )
    session.commit()
    log.info(
        "document %s re-timestamped (revision %d); chain now expires %s",
        document.id,
        revision.seq,
        _jst(expiry),
    )
    return document


def renew_due_timestamps(
    *,
    session: Session,
    runtime: Runtime,
    margin: dt.timedelta,
    now: dt.datetime | None = None,
    limit: int = 100,
) -> RenewalReport:
    """Renew every document due within ``margin`` (up to ``limit``); one failure never stops
    the rest (it is logged and reported, and the document stays due for the next run)."""
    report = RenewalReport()
    report.backfilled = backfill_timestamp_expiry(session=session, runtime=runtime)
    due = [d.id for d in list_documents_due(session=session, margin=margin, now=now, limit=limit)]
    for document_id in due:
        try:
            renew_document_timestamp(session=session, runtime=runtime, document_id=document_id)
        except GatewayError as exc:
            session.rollback()
            report.failed[document_id] = exc.code
            log.error("re-timestamping document %s failed: %s", document_id, exc)
            continue
        except IntegrityError:
            # another node appended a revision to this document at the same moment
            session.rollback()
            report.failed[document_id] = "archive.concurrent_update"
            continue
        report.renewed.append(document_id)
    return report
