"""Operations wiring: the re-timestamping and backup jobs, and checking a restored gateway."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import select, text
from sqlalchemy.orm import selectinload

from core.archive import RenewalReport
from core.audit import verify_chain
from core.backup import BackupResult, backup
from core.envelopes import read_document
from core.model import Document, Envelope
from core.signing import verify_pdf
from core.states import EnvelopeState
from gateway.runtime import Gateway, load_trust_roots
from gateway.settings import Settings
from schedules import retimestamp
from schedules.runner import JobSpec

BACKUP_JOB_ID = "backup"


def run_backup(settings: Settings) -> BackupResult:
    """One backup as configured: database generation plus new blobs."""
    return backup(
        database_url=settings.database_url,
        blob_root=settings.path(settings.blobs.path),
        directory=settings.path(settings.backup.directory),
        generations=settings.backup.generations,
        pg_dump=settings.backup.pg_dump,
    )


def run_retimestamp(settings: Settings, gateway: Gateway) -> RenewalReport:
    """One re-timestamping run as configured."""
    return retimestamp.run(
        sessions=gateway.sessions,
        runtime=gateway.runtime,
        margin=dt.timedelta(days=settings.archive.renew_margin_days),
        batch_size=settings.archive.batch_size,
    )


def jobs(settings: Settings, gateway: Gateway) -> list[JobSpec]:
    """The re-timestamping and backup jobs, where scheduled."""
    specs: list[JobSpec] = []
    if settings.schedules.retimestamp:
        specs.append(
            JobSpec(
                retimestamp.JOB_ID,
                settings.schedules.retimestamp,
                lambda: run_retimestamp(settings, gateway),
            )
        )
    if settings.schedules.backup:
        specs.append(
            JobSpec(BACKUP_JOB_ID, settings.schedules.backup, lambda: run_backup(settings))
        )
    return specs


@dataclass
class RestoreCheck:
    """What a restored gateway holds and whether all of it verifies."""

    envelopes: int = 0
    documents: int = 0
    documents_ok: int = 0
    failures: list[str] = field(default_factory=list)
    audit_chain_ok: bool = False
    database_ok: bool = False

    @property
    def ok(self) -> bool:
        """The database is sound, the audit chain intact and every document verifies."""
        return self.database_ok and self.audit_chain_ok and not self.failures

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return {
            "ok": self.ok,
            "envelopes": self.envelopes,
            "documents": self.documents,
            "documents_ok": self.documents_ok,
            "failures": self.failures,
            "audit_chain_ok": self.audit_chain_ok,
            "database_ok": self.database_ok,
        }


def check_restored(gateway: Gateway) -> RestoreCheck:
    """Verify every completed document (``verify_pdf``) and the database after a restore."""
    check = RestoreCheck()
    roots = load_trust_roots(gateway.settings)
    with gateway.sessions() as session:
        if gateway.engine.dialect.name == "sqlite":
            result = session.execute(text("PRAGMA integrity_check")).scalar()
            check.database_ok = result == "ok"
        else:
            session.execute(text("SELECT 1"))
            check.database_ok = True
        check.audit_chain_ok = verify_chain(session=session).ok
        check.envelopes = len(session.scalars(select(Envelope.id)).all())
        documents = session.scalars(
            select(Document)
            .join(Envelope, Envelope.id == Document.envelope_id)
            .where(Envelope.state == EnvelopeState.COMPLETED.value)
            .options(selectinload(Document.revisions))
            .order_by(Document.id)
        ).all()
        for document in documents:
            check.documents += 1
            try:
                data = read_document(runtime=gateway.runtime, document=document)
            except Exception as exc:  # a missing or damaged blob is a failure to report
                check.failures.append(f"{document.id} {document.name}: {exc}")
                continue
            report = verify_pdf(data, trust_roots=roots)
            if report.ok:
                check.documents_ok += 1
            else:
                check.failures.append(f"{document.id} {document.name}: verification failed")
    return check
