"""Documents no row refers to: found, reported, then deleted after a grace period.

Every blob is written before the row that refers to it commits (a document must be on disk
before the database points at it), so a crash or a refused request between the two leaves a
blob nobody refers to. Requests clean up after themselves where they can; what a killed process
left is found here. A blob younger than the grace period is never touched: its row may be about
to commit. Temporary files a killed writer left (``.<id>.tmp``) are swept the same way.
"""

from __future__ import annotations

import datetime as dt
import logging
from dataclasses import dataclass, field
from pathlib import Path

from sqlalchemy import CompoundSelect, select, union
from sqlalchemy.orm import Session

from core.blobs import BlobStore, blob_path
from core.model import AwardDocument, Document, DocumentRevision, Envelope, GuaranteeReference
from core.records.audit import record_event

__all__ = ["OrphanBlob", "SweepReport", "referenced_blob_ids", "sweep_orphans"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class OrphanBlob:
    """One file in the store that no row refers to."""

    name: str
    path: Path
    size: int
    modified_at: dt.datetime


@dataclass
class SweepReport:
    """What one sweep found (and, unless a dry run, deleted)."""

    orphans: list[OrphanBlob] = field(default_factory=list)
    deleted: int = 0
    kept_young: int = 0  # unreferenced but within the grace period


def referenced_blob_ids(*, session: Session) -> set[str]:
    """Every blob id a row refers to: revisions, originals, certificates, award copies,
    guarantee notices."""
    query: CompoundSelect[tuple[str | None]] = union(
        select(DocumentRevision.blob_id),
        select(Document.original_blob_id),
        select(Envelope.certificate_blob_id).where(Envelope.certificate_blob_id.is_not(None)),
        select(AwardDocument.blob_id),
        select(GuaranteeReference.notice_blob_id).where(
            GuaranteeReference.notice_blob_id.is_not(None)
        ),
    )
    return {str(row[0]) for row in session.execute(query)}


def sweep_orphans(
    *,
    session: Session,
    blobs: BlobStore,
    grace: dt.timedelta,
    now: dt.datetime | None = None,
    dry_run: bool = False,
    actor: str = "system",
) -> SweepReport:
    """Find the store's files no row refers to and older than ``grace``; delete them (and
    their backup-mirror copies) unless ``dry_run``. An audit event records what was deleted."""
    now = now or dt.datetime.now(dt.UTC)
    # Listed before the referenced ids are read: a blob written after this listing is not
    # looked at, and one written before it whose row commits meanwhile is in the ids.
    files = [p for p in blobs.root.glob("??/*") if p.is_file()]
    referenced = referenced_blob_ids(session=session)
    session.rollback()
    report = SweepReport()
    for path in files:
        # A temporary file (".<id>.tmp") is what a killed writer left: never referenced.
        if not path.name.startswith(".") and path.name in referenced:
            continue
        try:
            stat = path.stat()
        except FileNotFoundError:
            continue
        modified = dt.datetime.fromtimestamp(stat.st_mtime, dt.UTC)
        if now - modified < grace:
            report.kept_young += 1
            continue
        report.orphans.append(OrphanBlob(path.name, path, stat.st_size, modified))
    if dry_run or not report.orphans:
        return report
    for orphan in report.orphans:
        orphan.path.unlink(missing_ok=True)
        if blobs.mirror is not None and not orphan.name.startswith("."):
            blob_path(blobs.mirror, orphan.name).unlink(missing_ok=True)
        report.deleted += 1
        log.warning("deleted orphan blob %s (%d bytes)", orphan.name, orphan.size)
    record_event(
        session=session,
        action="blobs.swept",
        actor=actor,
        detail={
            "deleted": report.deleted,
            "bytes": sum(o.size for o in report.orphans),
            "grace_hours": grace.total_seconds() / 3600,
        },
    )
    session.commit()
    return report
