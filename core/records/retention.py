"""Document retention: once the buyer's retention period of a finished envelope has ended, delete
its documents and keep its record.

Deleted: the bytes of every document revision, the completion certificate, the award's staged
copies of the contract PDFs and the guarantee notices. Kept: the envelope's facts (title,
counterparty, amount, dates, parties, the documents' names and revision rows) and the audit
trail, which gains one ``retention.purged`` event naming each document with its SHA-256, so the
records show what existed. ``envelopes.documents_purged_at`` marks the envelope; every reader of
documents then answers ``document.purged`` (:func:`core.envelopes.documents.check_documents_kept`).

The period counts from completion (締結日) or, for a cancelled, declined or expired envelope,
from its last change; either from that day itself or, as most 文書管理規程 say, from April 1
after its fiscal year (翌年度4月1日起算). Nothing is deleted early:

- an envelope with an undelivered outbox row (pending, leased, or dead for a sink) is held until
  the push-back delivered it; a dead *mail* does not hold it (mail is a notification, the
  document-management sink is the record);
- an original is held while one of its amendments (変更契約) still has its documents.

Several nodes may run this at once: each envelope is claimed with a compare-and-set ``UPDATE``
(which repeats every condition above), and the claim, its audit event and the marker commit
together *before* any blob is deleted. A crash after that commit leaves blobs behind, which the
next run deletes (:func:`purge_documents` sweeps the envelopes purged in the last 30 days), so
running it again is always safe.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from sqlalchemy import ColumnElement, and_, delete, exists, func, or_, select, update
from sqlalchemy.orm import Session, aliased, selectinload

from core.envelopes.deadlines import NOTICE_TARGET
from core.envelopes.documents import read_document
from core.envelopes.notify import MAIL_TARGET
from core.errors import ConfigError, GatewayError
from core.model import (
    Amendment,
    Award,
    AwardDocument,
    Delivery,
    Document,
    Envelope,
    GuaranteeReference,
    StagedBlob,
    utcnow,
)
from core.records.audit import record_event
from core.runtime import Runtime
from core.states import DeliveryState, EnvelopeState
from core.timezone import JST

__all__ = [
    "FINAL_STATES",
    "ExpiredEnvelope",
    "PurgeReport",
    "RetentionPolicy",
    "envelope_blob_ids",
    "find_expired",
    "purge_documents",
    "purged_blob_ids",
]

log = logging.getLogger(__name__)

FINAL_STATES = frozenset(
    {
        EnvelopeState.COMPLETED,
        EnvelopeState.DECLINED,
        EnvelopeState.CANCELLED,
        EnvelopeState.EXPIRED,
    }
)
# Targets whose dead deliveries do not hold a purge: notifications, not the record.
_NOTIFICATION_TARGETS = (MAIL_TARGET, NOTICE_TARGET)
# How far back a run looks for purges a crash interrupted between commit and blob deletion.
_SWEEP = dt.timedelta(days=30)


def _shift_years(day: dt.date, years: int, *, feb29_to: tuple[int, int]) -> dt.date:
    try:
        return day.replace(year=day.year + years)
    except ValueError:  # 29 February in a year without one
        return dt.date(day.year + years, *feb29_to)


def _fiscal_year(day: dt.date) -> int:
    return day.year if day.month >= 4 else day.year - 1


@dataclass(frozen=True)
class RetentionPolicy:
    """How long documents are kept: ``years`` counted from the basis day (``date``) or from
    April 1 after the basis day's fiscal year (``next_fiscal_year``)."""

    years: int
    count_from: Literal["next_fiscal_year", "date"] = "next_fiscal_year"

    def __post_init__(self) -> None:
        if self.years < 1:
            raise ConfigError(
                "config.retention_years",
                f"a document retention of {self.years} years would delete documents at once",
                "文書の保存期間は1年以上である必要があります。",
            )

    def ends_on(self, basis: dt.datetime) -> dt.date:
        """The first JST day on which documents whose period starts at ``basis`` may go.

        ``date``: the period runs from the day after the basis (民法 140条) to the same day
        ``years`` later, or the month's last day when there is none (143条).
        """
        day = basis.astimezone(JST).date()
        if self.count_from == "next_fiscal_year":
            return dt.date(_fiscal_year(day) + 1 + self.years, 4, 1)
        return _shift_years(day, self.years, feb29_to=(2, 28)) + dt.timedelta(days=1)

    def cutoff(self, now: dt.datetime) -> dt.datetime:
        """The moment (JST midnight) before which a basis must lie for its period to have ended
        by ``now``: exactly the envelopes whose :meth:`ends_on` is today or earlier."""
        today = now.astimezone(JST).date()
        if self.count_from == "next_fiscal_year":
            day = dt.date(_fiscal_year(today) - self.years, 4, 1)
        else:
            day = _shift_years(today, -self.years, feb29_to=(3, 1))
        return dt.datetime.combine(day, dt.time(), JST)


@dataclass(frozen=True)
class ExpiredEnvelope:
    """A finished envelope whose retention ended; ``held`` says why it is kept for now
    (``outbox``: an undelivered delivery; ``amendment``: an amendment still has documents)."""

    envelope_id: str
    management_number: str
    title: str
    state: EnvelopeState
    basis_at: dt.datetime
    ends_on: dt.date
    held: str | None = None

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready form (times in JST)."""
        return {
            "envelope_id": self.envelope_id,
            "management_number": self.management_number,
            "title": self.title,
            "state": self.state.value,
            "basis_at": self.basis_at.astimezone(JST).isoformat(),
            "retention_ended_on": self.ends_on.isoformat(),
            "held": self.held,
        }


@dataclass
class PurgeReport:
    """One retention run: what had expired, what was purged (nothing in a dry run), what failed."""

    dry_run: bool
    cutoff: dt.datetime
    expired: list[ExpiredEnvelope] = field(default_factory=list)
    purged: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)
    blobs_deleted: int = 0

    @property
    def held(self) -> list[ExpiredEnvelope]:
        """Expired envelopes kept for now (undelivered outbox rows, amendments)."""
        return [e for e in self.expired if e.held is not None]

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready form (times in JST)."""
        return {
            "dry_run": self.dry_run,
            "cutoff": self.cutoff.astimezone(JST).isoformat(),
            "expired": [e.as_dict() for e in self.expired],
            "purged": self.purged,
            "failed": self.failed,
            "blobs_deleted": self.blobs_deleted,
        }


def _basis() -> ColumnElement[Any]:
    # Only completed envelopes have completed_at; the others count from their last change.
    return func.coalesce(Envelope.completed_at, Envelope.updated_at)


def _undelivered() -> ColumnElement[bool]:
    return exists().where(
        Delivery.envelope_id == Envelope.id,
        or_(
            Delivery.state.in_([DeliveryState.PENDING.value, DeliveryState.LEASED.value]),
            and_(
                Delivery.state == DeliveryState.DEAD.value,
                Delivery.target.not_in(_NOTIFICATION_TARGETS),
            ),
        ),
    )


def _amendment_kept() -> ColumnElement[bool]:
    amending = aliased(Envelope)
    return exists().where(
        Amendment.original_id == Envelope.id,
        amending.id == Amendment.envelope_id,
        amending.documents_purged_at.is_(None),
    )


def _expired(cutoff: dt.datetime) -> ColumnElement[bool]:
    return and_(
        Envelope.state.in_(sorted(s.value for s in FINAL_STATES)),
        Envelope.documents_purged_at.is_(None),
        _basis() < cutoff,
    )


def find_expired(
    *,
    session: Session,
    policy: RetentionPolicy,
    now: dt.datetime | None = None,
    limit: int | None = None,
) -> list[ExpiredEnvelope]:
    """Finished envelopes still holding documents whose retention ended by ``now``, oldest
    first, each with the reason it is held, if any. Reads only."""
    cutoff = policy.cutoff(now or utcnow())
    query = (
        select(
            Envelope.id,
            Envelope.management_number,
            Envelope.title,
            Envelope.state,
            _basis().label("basis"),
            _undelivered().label("outbox"),
            _amendment_kept().label("amendment"),
        )
        .where(_expired(cutoff))
        .order_by(_basis(), Envelope.id)
        .limit(limit)
    )
    found = []
    for row in session.execute(query):
        held = "outbox" if row.outbox else "amendment" if row.amendment else None
        found.append(
            ExpiredEnvelope(
                envelope_id=row.id,
                management_number=row.management_number,
                title=row.title,
                state=row.state,
                basis_at=row.basis,
                ends_on=policy.ends_on(row.basis),
                held=held,
            )
        )
    return found


@dataclass
class _Holdings:
    """Everything stored for one envelope: its documents' blobs and the rows naming the rest."""

    envelope: Envelope
    staged: Sequence[Any]  # (name, sha256, blob_id) of the award's staged copies
    notices: Sequence[Any]  # (contract_number, notice_blob_id) of guarantee notices

    @property
    def blob_ids(self) -> list[str]:
        """Every blob, once."""
        envelope = self.envelope
        ids = [doc.original_blob_id for doc in envelope.documents]
        ids += [rev.blob_id for doc in envelope.documents for rev in doc.revisions]
        ids += [envelope.certificate_blob_id] if envelope.certificate_blob_id else []
        ids += [row.blob_id for row in self.staged]
        ids += [row.notice_blob_id for row in self.notices]
        return list(dict.fromkeys(ids))


def _holdings(session: Session, envelope_id: str) -> _Holdings:
    envelope = session.scalars(
        select(Envelope)
        .where(Envelope.id == envelope_id)
        .options(selectinload(Envelope.documents).selectinload(Document.revisions))
        .execution_options(populate_existing=True)
    ).one()
    staged = session.execute(
        select(AwardDocument.name, AwardDocument.sha256, AwardDocument.blob_id)
        .join(Award, Award.id == AwardDocument.award_id)
        .where(Award.envelope_id == envelope_id)
        .order_by(AwardDocument.id)
    ).all()
    notices = session.execute(
        select(GuaranteeReference.contract_number, GuaranteeReference.notice_blob_id)
        .where(
            GuaranteeReference.envelope_id == envelope_id,
            GuaranteeReference.notice_blob_id.is_not(None),
        )
        .order_by(GuaranteeReference.id)
    ).all()
    return _Holdings(envelope, staged, notices)


def _sha256_of(read: Any) -> dict[str, Any]:
    try:
        return {"sha256": hashlib.sha256(read()).hexdigest()}
    except GatewayError as exc:  # a blob already missing or damaged: say so, delete the rest
        return {"sha256": None, "unreadable": exc.code}


def _record(runtime: Runtime, holdings: _Holdings) -> dict[str, Any]:
    """What existed, for the audit trail: each document's name and SHA-256 (of the newest
    revision, and of the upload), the certificate's, the staged copies' and the notices'."""
    envelope = holdings.envelope
    certificate_blob_id = envelope.certificate_blob_id
    return {
        "documents": [
            {
                "name": doc.name,
                "original_sha256": doc.original_sha256,
                **_sha256_of(lambda doc=doc: read_document(runtime=runtime, document=doc)),
                "size": doc.size,
                "revisions": len(doc.revisions),
            }
            for doc in envelope.documents
        ],
        "certificate": (
            _sha256_of(lambda: runtime.blobs.get(certificate_blob_id))
            if certificate_blob_id
            else None
        ),
        "award_documents": [{"name": row.name, "sha256": row.sha256} for row in holdings.staged],
        "guarantee_notices": [
            {
                "contract_number": row.contract_number,
                **_sha256_of(lambda row=row: runtime.blobs.get(row.notice_blob_id)),
            }
            for row in holdings.notices
        ],
    }


def _delete_blobs(runtime: Runtime, blob_ids: Sequence[str]) -> int:
    deleted = 0
    for blob_id in blob_ids:
        try:
            deleted += runtime.blobs.delete(blob_id)
        except GatewayError as exc:  # an id that is no blob's: nothing stored under it
            log.warning("retention: blob id %r skipped: %s", blob_id, exc)
    return deleted


def _purge_one(
    session: Session,
    runtime: Runtime,
    policy: RetentionPolicy,
    item: ExpiredEnvelope,
    cutoff: dt.datetime,
    now: dt.datetime,
    actor: str,
) -> int | None:
    """Purge one envelope; the number of blobs deleted, or None when it was not claimed."""
    holdings = _holdings(session, item.envelope_id)
    if holdings.envelope.documents_purged_at is not None:
        session.rollback()
        return None
    # Read (and hash) before claiming: no write lock is held while documents are read.
    record, blob_ids = _record(runtime, holdings), holdings.blob_ids
    session.rollback()  # end the read: SQLite cannot turn a stale read into a write
    claimed = session.execute(
        update(Envelope)
        .where(
            Envelope.id == item.envelope_id,
            _expired(cutoff),
            ~_undelivered(),
            ~_amendment_kept(),
        )
        # updated_at stays the last business change (it is the basis of unfinished ones)
        .values(documents_purged_at=now, updated_at=Envelope.updated_at)
        .execution_options(synchronize_session=False)
    )
    if claimed.rowcount != 1:  # type: ignore[attr-defined]
        session.rollback()  # another node has it, or it is held now
        return None
    # a signature blob not yet flushed into the store goes with the marker (no later flush
    # brings its file back)
    session.execute(delete(StagedBlob).where(StagedBlob.blob_id.in_(blob_ids)))
    record_event(
        session=session,
        action="retention.purged",
        actor=actor,
        envelope_id=item.envelope_id,
        at=now,
        detail={
            "retention_years": policy.years,
            "count_from": policy.count_from,
            "basis": "completed" if item.state is EnvelopeState.COMPLETED else "last_update",
            "basis_at": item.basis_at.astimezone(JST).isoformat(),
            "retention_ended_on": item.ends_on.isoformat(),
            **record,
            "blobs": len(blob_ids),
        },
    )
    session.commit()  # the marker first: from now on every reader answers document.purged
    deleted = _delete_blobs(runtime, blob_ids)
    log.info(
        "retention: documents of envelope %s deleted (%d blobs; retention ended %s)",
        item.envelope_id,
        deleted,
        item.ends_on.isoformat(),
    )
    return deleted


def _sweep(session: Session, runtime: Runtime, now: dt.datetime) -> int:
    """Delete what a crash left of recent purges (committed, blobs not yet deleted)."""
    recent = session.scalars(
        select(Envelope.id).where(Envelope.documents_purged_at >= now - _SWEEP)
    ).all()
    deleted = sum(
        _delete_blobs(runtime, _holdings(session, envelope_id).blob_ids) for envelope_id in recent
    )
    session.rollback()
    return deleted


def purged_blob_ids(
    *, session: Session, since: dt.datetime | None, before: dt.datetime
) -> list[str]:
    """Every blob of the envelopes whose documents were purged at or after ``since`` (None: at
    any time) and before ``before``: what a backup may forget once no generation it keeps
    predates the purge (:func:`core.records.backup.delete_purged_copies`)."""
    query = select(Envelope.id).where(Envelope.documents_purged_at < before)
    if since is not None:
        query = query.where(Envelope.documents_purged_at >= since)
    ids: list[str] = []
    for envelope_id in session.scalars(query.order_by(Envelope.id)).all():
        ids += envelope_blob_ids(session=session, envelope_id=envelope_id)
    session.rollback()
    return ids


def envelope_blob_ids(*, session: Session, envelope_id: str) -> list[str]:
    """Every blob stored for one envelope: each document revision, the completion certificate,
    the award's staged copies and the guarantee notices (what its purge deletes)."""
    return _holdings(session, envelope_id).blob_ids


def purge_documents(
    *,
    session: Session,
    runtime: Runtime,
    policy: RetentionPolicy,
    now: dt.datetime | None = None,
    dry_run: bool = False,
    actor: str = "system",
) -> PurgeReport:
    """Delete the documents of every envelope whose retention ended and that nothing holds,
    one envelope per transaction; with ``dry_run``, only list what would go. Commits."""
    now = now or utcnow()
    cutoff = policy.cutoff(now)
    report = PurgeReport(dry_run=dry_run, cutoff=cutoff)
    report.expired = find_expired(session=session, policy=policy, now=now)
    session.rollback()
    if dry_run:
        return report
    report.blobs_deleted += _sweep(session, runtime, now)
    for item in report.expired:
        if item.held is not None:
            continue
        try:
            deleted = _purge_one(session, runtime, policy, item, cutoff, now, actor)
        except GatewayError as exc:
            session.rollback()
            report.failed[item.envelope_id] = exc.code
            log.error("retention: envelope %s not purged: %s", item.envelope_id, exc)
            continue
        if deleted is not None:
            report.purged.append(item.envelope_id)
            report.blobs_deleted += deleted
    return report
