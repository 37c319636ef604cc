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

Renewal by evidence: a due document is renewed only when the timestamp made now would expire
at least ``min_extension`` later than its newest one (a TSA certificate served today that lapses
at the same moment proves nothing new and costs a paid stamp and ~8 KB per night), or when the
newest timestamp is flagged (a digest algorithm or a TSA certificate the operator no longer
trusts). Otherwise the document is reported as "nothing to extend". When the TSA certificate
itself is within the margin of its end, the run raises an alert: logged, kept in
``archive_checks`` for ``/healthz`` and ``/metrics``. Each renewal tells the observers that
implement :class:`RenewalObserver` (push-back: the renewed copy goes to the sinks that took
the document) inside the renewal's transaction.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, selectinload

from core.envelopes.documents import read_document, store_revision
from core.errors import GatewayError, NotFoundError, StateError
from core.model import ArchiveCheck, Document, Envelope, utcnow
from core.records.audit import record_event
from core.runtime import Runtime
from core.signing import TimestampFacts
from core.states import EnvelopeState
from core.timezone import JST

__all__ = [
    "PlannedRenewal",
    "RenewalObserver",
    "RenewalPlan",
    "RenewalPolicy",
    "RenewalReport",
    "backfill_timestamp_expiry",
    "latest_check",
    "list_documents_due",
    "plan_renewals",
    "renew_document_timestamp",
    "renew_due_timestamps",
    "request_current_copy",
]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RenewalPolicy:
    """When a document is renewed: due within ``margin``, and either the new timestamp extends
    its validity by at least ``min_extension`` or its newest timestamp is flagged (a digest
    algorithm in ``flagged_algorithms``, e.g. ``sha1``, or a TSA certificate whose SHA-256
    fingerprint is in ``flagged_certificates``)."""

    margin: dt.timedelta
    min_extension: dt.timedelta = dt.timedelta(days=30)
    flagged_algorithms: frozenset[str] = frozenset()
    flagged_certificates: frozenset[str] = frozenset()

    def flag(self, facts: TimestampFacts | None) -> str | None:
        """Why the newest timestamp must be replaced whatever it extends; None when it need not."""
        if facts is None:
            return None
        if facts.digest_algorithm.lower() in self.flagged_algorithms:
            return f"algorithm {facts.digest_algorithm}"
        if facts.tsa_certificate_sha256.lower() in self.flagged_certificates:
            return f"TSA certificate {facts.tsa_certificate_sha256[:16]}"
        return None


@runtime_checkable
class RenewalObserver(Protocol):
    """Told of each archive timestamp inside the renewal's transaction (the push-back adds
    the deliveries of the renewed copy)."""

    def document_renewed(
        self, *, session: Session, envelope: Envelope, document: Document, version: int
    ) -> None:
        """React to one renewal; ``version`` counts the document's archive timestamps (1, 2…)."""


@dataclass(frozen=True)
class PlannedRenewal:
    """One due document and what a run would do with it."""

    document_id: str
    envelope_id: str
    management_number: str
    document: str
    expires_at: dt.datetime
    action: str  # renew | flagged | nothing_to_extend
    reason: str


@dataclass
class RenewalPlan:
    """What a run would do now: the due documents and their verdicts, how long a timestamp made
    now would last, and the next wave (when the next documents become due, and how many)."""

    tsa_expires_at: dt.datetime | None
    documents: list[PlannedRenewal] = field(default_factory=list)
    next_wave_due_at: dt.datetime | None = None
    next_wave_expires_at: dt.datetime | None = None
    next_wave_documents: int = 0
    alert: str | None = None

    @property
    def to_stamp(self) -> list[PlannedRenewal]:
        """The documents that would be stamped."""
        return [p for p in self.documents if p.action != "nothing_to_extend"]

    def as_dict(self) -> dict[str, object]:
        """JSON-ready form (times in JST)."""
        return {
            "tsa_expires_at": _jst(self.tsa_expires_at),
            "would_stamp": len(self.to_stamp),
            "documents": [
                {
                    "document_id": p.document_id,
                    "envelope_id": p.envelope_id,
                    "management_number": p.management_number,
                    "document": p.document,
                    "expires_at": _jst(p.expires_at),
                    "action": p.action,
                    "reason": p.reason,
                }
                for p in self.documents
            ],
            "next_wave": {
                "due_at": _jst(self.next_wave_due_at),
                "expires_at": _jst(self.next_wave_expires_at),
                "documents": self.next_wave_documents,
            },
            "alert": self.alert,
        }


@dataclass
class RenewalReport:
    """What one renewal run did: documents renewed, those left alone because a renewal would
    extend nothing, those that failed with their code, and the alert if any."""

    renewed: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)
    nothing_to_extend: list[str] = field(default_factory=list)
    backfilled: int = 0
    tsa_expires_at: dt.datetime | None = None
    alert: str | None = None


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
    version = sum(1 for r in document.revisions if r.reason == "archive")
    envelope = session.get_one(Envelope, document.envelope_id)
    for observer in runtime.observers:
        if isinstance(observer, RenewalObserver):
            observer.document_renewed(
                session=session, envelope=envelope, document=document, version=version
            )
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
            "version": version,
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


def _alert(tsa_expiry: dt.datetime | None, now: dt.datetime, margin: dt.timedelta) -> str | None:
    if tsa_expiry is not None and tsa_expiry <= now + margin:
        return (
            f"the TSA certificate chain expires {_jst(tsa_expiry)}, within the renewal margin, "
            "and no newer one is served: renewals cannot extend validity until the TSA "
            "certificate is renewed"
        )
    return None


def _next_wave(session: Session, horizon: dt.datetime) -> tuple[dt.datetime | None, int]:
    """The earliest expiry after ``horizon`` and how many documents share it (documents stamped
    under one TSA certificate expire together: that is a wave)."""
    live = (
        Envelope.state == EnvelopeState.COMPLETED.value,
        Envelope.documents_purged_at.is_(None),
    )
    first = session.scalar(
        select(func.min(Document.timestamp_expires_at))
        .join(Envelope, Envelope.id == Document.envelope_id)
        .where(*live, Document.timestamp_expires_at > horizon)
    )
    if first is None:
        return None, 0
    count = session.scalar(
        select(func.count(Document.id))
        .join(Envelope, Envelope.id == Document.envelope_id)
        .where(*live, Document.timestamp_expires_at == first)
    )
    return first, count or 0


def plan_renewals(
    *,
    session: Session,
    runtime: Runtime,
    policy: RenewalPolicy,
    now: dt.datetime | None = None,
    limit: int = 100,
) -> RenewalPlan:
    """What a run would do now, without stamping: each due document's verdict (renew, flagged,
    or nothing to extend), how long a timestamp made now would last, and the next wave. Asks
    the TSA for one probe token (to read its certificate) when anything is due."""
    now = now or utcnow()
    due = list_documents_due(session=session, margin=policy.margin, now=now, limit=limit)
    plan = RenewalPlan(tsa_expires_at=None)
    if due:
        plan.tsa_expires_at = runtime.signing.new_timestamp_expiry()
    for document in due:
        current = document.timestamp_expires_at
        assert current is not None  # list_documents_due selects documents with an expiry
        facts = runtime.signing.timestamp_facts(read_document(runtime=runtime, document=document))
        flagged = policy.flag(facts)
        envelope = session.get_one(Envelope, document.envelope_id)
        if flagged is not None:
            action, reason = "flagged", flagged
        elif plan.tsa_expires_at is not None and (
            plan.tsa_expires_at - current >= policy.min_extension
        ):
            action = "renew"
            reason = f"extends validity to {_jst(plan.tsa_expires_at)}"
        else:
            action = "nothing_to_extend"
            reason = (
                f"a new timestamp would expire {_jst(plan.tsa_expires_at)}, "
                f"less than {policy.min_extension.days} days after {_jst(current)}"
            )
        plan.documents.append(
            PlannedRenewal(
                document_id=document.id,
                envelope_id=document.envelope_id,
                management_number=envelope.management_number,
                document=document.name,
                expires_at=current,
                action=action,
                reason=reason,
            )
        )
    wave, count = _next_wave(session, now + policy.margin)
    if wave is not None:
        plan.next_wave_expires_at = wave
        plan.next_wave_due_at = wave - policy.margin
        plan.next_wave_documents = count
    plan.alert = _alert(plan.tsa_expires_at, now, policy.margin)
    return plan


def latest_check(*, session: Session) -> ArchiveCheck | None:
    """The newest re-timestamping run's findings; None before the first run."""
    return session.scalars(
        select(ArchiveCheck).order_by(ArchiveCheck.checked_at.desc(), ArchiveCheck.id.desc())
    ).first()


def renew_due_timestamps(
    *,
    session: Session,
    runtime: Runtime,
    margin: dt.timedelta | None = None,
    policy: RenewalPolicy | None = None,
    now: dt.datetime | None = None,
    limit: int = 100,
) -> RenewalReport:
    """Renew every due document (up to ``limit``) whose renewal extends its validity or whose
    newest timestamp is flagged; report the rest as "nothing to extend". One failure never
    stops the rest (it is logged and reported, and the document stays due for the next run).
    The run's findings are stored (:class:`~core.model.ArchiveCheck`)."""
    if policy is None:
        if margin is None:
            raise ValueError("a margin or a policy is required")
        policy = RenewalPolicy(margin=margin)
    now = now or utcnow()
    report = RenewalReport()
    report.backfilled = backfill_timestamp_expiry(session=session, runtime=runtime)
    try:
        plan = plan_renewals(session=session, runtime=runtime, policy=policy, now=now, limit=limit)
    except GatewayError as exc:
        session.rollback()
        due = list_documents_due(session=session, margin=policy.margin, now=now, limit=limit)
        report.failed = {d.id: exc.code for d in due}
        log.error("re-timestamping: cannot read the TSA certificate: %s", exc)
        _store_check(session, report, due=len(due), now=now)
        return report
    session.rollback()  # nothing was written; release the read snapshot before stamping
    report.tsa_expires_at = plan.tsa_expires_at
    report.alert = plan.alert
    for planned in plan.documents:
        if planned.action == "nothing_to_extend":
            report.nothing_to_extend.append(planned.document_id)
            log.info("document %s: nothing to extend (%s)", planned.document_id, planned.reason)
            continue
        try:
            renew_document_timestamp(
                session=session, runtime=runtime, document_id=planned.document_id
            )
        except GatewayError as exc:
            session.rollback()
            report.failed[planned.document_id] = exc.code
            log.error("re-timestamping document %s failed: %s", planned.document_id, exc)
            continue
        except IntegrityError:
            # another node appended a revision to this document at the same moment
            session.rollback()
            report.failed[planned.document_id] = "archive.concurrent_update"
            continue
        report.renewed.append(planned.document_id)
    if report.alert is not None:
        log.error("re-timestamping alert: %s", report.alert)
    if report.nothing_to_extend:
        log.warning(
            "re-timestamping: %d due document(s) with nothing to extend",
            len(report.nothing_to_extend),
        )
    _store_check(session, report, due=len(plan.documents), now=now)
    return report


def _store_check(session: Session, report: RenewalReport, *, due: int, now: dt.datetime) -> None:
    session.add(
        ArchiveCheck(
            checked_at=now,
            tsa_expires_at=report.tsa_expires_at,
            due=due,
            renewed=len(report.renewed),
            nothing_to_extend=len(report.nothing_to_extend),
            failed=len(report.failed),
            alert=report.alert,
        )
    )
    session.commit()


def request_current_copy(
    *,
    session: Session,
    runtime: Runtime,
    envelope_id: str,
    party_id: str,
    actor: str,
    ip: str | None = None,
) -> None:
    """Send one party of a concluded envelope the current copy (with every archive timestamp
    so far) through a fresh download link: the observers are told ``envelope.copy_requested``
    (the mail observer enqueues the completion mail again). Recorded; not committed."""
    envelope = session.get(Envelope, envelope_id)
    party = next((p for p in envelope.parties if p.id == party_id), None) if envelope else None
    if envelope is None or party is None:
        raise NotFoundError(
            "not_found.party",
            f"no party {party_id} on envelope {envelope_id}",
            "指定された署名者が見つかりません。",
        )
    if envelope.state is not EnvelopeState.COMPLETED or envelope.documents_purged_at is not None:
        raise StateError(
            "state.not_completed",
            "only a concluded envelope whose documents are kept has a copy to send",
            "締結済みで文書が保存されている契約のみ、最新の文書を送付できます。",
        )
    record_event(
        session=session,
        action="envelope.copy_requested",
        actor=actor,
        envelope_id=envelope.id,
        party_id=party.id,
        ip=ip,
        detail={"to": party.email},
    )
    runtime.notify(session, envelope, "envelope.copy_requested", party)
