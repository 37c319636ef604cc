"""Operations wiring: the re-timestamping, backup and retention jobs, and checking a restored
gateway."""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

from sqlalchemy import Engine, func, select, text
from sqlalchemy.orm import selectinload

from core.envelopes.documents import read_document
from core.model import Document, Envelope
from core.records.archive import RenewalPlan, RenewalPolicy, RenewalReport, plan_renewals
from core.records.audit import verify_chain
from core.records.backup import BackupResult, backup, delete_purged_copies
from core.records.retention import PurgeReport, RetentionPolicy, purged_blob_ids
from core.signing import BoundedVerifier, VerifyBudget
from core.states import EnvelopeState
from core.storage import make_session_factory, schema_is_current, schema_revisions
from gateway.runtime import Gateway, load_trust_roots
from gateway.scheduling import scheduled_jobs
from gateway.settings import Settings
from schedules import retention, retimestamp
from schedules.runner import JobSpec

# The jobs of the registry this module wires (the others are intake's).
OPERATIONS_JOBS = frozenset({"retimestamp", "backup", "retention"})


def run_backup(
    settings: Settings, engine: Engine, *, now: dt.datetime | None = None
) -> BackupResult:
    """One backup as configured: database generation plus new blobs, then the copies of
    documents whose retention purge no kept generation predates are deleted, when ``engine``'s
    schema is current (a backup taken before an upgrade has nothing newer to look at)."""
    directory = settings.path(settings.backup.directory)
    result = backup(
        database_url=settings.database_url,
        blob_root=settings.path(settings.blobs.path),
        directory=directory,
        generations=settings.backup.generations,
        pg_dump=settings.backup.pg_dump,
        now=now,
        schema_revisions=schema_revisions(engine),
    )
    if not schema_is_current(engine):
        return result
    sessions = make_session_factory(engine)

    def purged(since: dt.datetime | None, before: dt.datetime) -> list[str]:
        with sessions() as session:
            return purged_blob_ids(session=session, since=since, before=before)

    deleted = delete_purged_copies(directory, purged)
    return replace(result, purged_blobs_deleted=deleted)


def renewal_policy(settings: Settings) -> RenewalPolicy:
    """When documents are renewed, from ``archive`` settings."""
    archive = settings.archive
    return RenewalPolicy(
        margin=dt.timedelta(days=archive.renew_margin_days),
        min_extension=dt.timedelta(days=archive.min_extension_days),
        flagged_algorithms=frozenset(a.lower() for a in archive.flagged_algorithms),
        flagged_certificates=frozenset(archive.flagged_tsa_certificates),
    )


def run_retimestamp(settings: Settings, gateway: Gateway) -> RenewalReport:
    """One re-timestamping run as configured."""
    return retimestamp.run(
        sessions=gateway.sessions,
        runtime=gateway.runtime,
        policy=renewal_policy(settings),
        batch_size=settings.archive.batch_size,
    )


def plan_retimestamp(settings: Settings, gateway: Gateway) -> RenewalPlan:
    """What a re-timestamping run would do now (``--dry-run``)."""
    with gateway.sessions() as session:
        return plan_renewals(
            session=session,
            runtime=gateway.runtime,
            policy=renewal_policy(settings),
            limit=settings.archive.batch_size,
        )


def retention_policy(settings: Settings) -> RetentionPolicy | None:
    """The configured document retention; None while documents are kept for ever."""
    years = settings.retention.documents_years
    if years is None:
        return None
    return RetentionPolicy(years=years, count_from=settings.retention.count_from)


def run_retention(
    settings: Settings, gateway: Gateway, *, dry_run: bool = False, actor: str = "system"
) -> PurgeReport | None:
    """One retention run as configured; None when no retention is configured."""
    policy = retention_policy(settings)
    if policy is None:
        return None
    return retention.run(
        sessions=gateway.sessions,
        runtime=gateway.runtime,
        policy=policy,
        dry_run=dry_run,
        actor=actor,
    )


def jobs(settings: Settings, gateway: Gateway) -> list[JobSpec]:
    """The re-timestamping, backup and retention jobs of :data:`gateway.scheduling.JOBS`, where
    scheduled (retention only once a retention period is configured)."""
    return scheduled_jobs(settings, gateway, only=OPERATIONS_JOBS)


@dataclass
class RestoreCheck:
    """What a restored gateway holds and whether all of it verifies."""

    envelopes: int = 0
    documents: int = 0
    documents_ok: int = 0
    documents_purged: int = 0  # deleted at the end of their retention: nothing to verify
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
            "documents_purged": self.documents_purged,
            "failures": self.failures,
            "audit_chain_ok": self.audit_chain_ok,
            "database_ok": self.database_ok,
        }


def check_restored(
    gateway: Gateway,
    *,
    progress: Callable[[int, int, str, str], None] | None = None,
    budget: VerifyBudget | None = None,
) -> RestoreCheck:
    """Verify every completed document (in a child process, each within ``budget``; those
    deleted at the end of their retention are counted apart) and the database after a restore.
    ``progress(index, total, document name, result)`` is called after each document."""
    check = RestoreCheck()
    roots = load_trust_roots(gateway.settings)
    with (
        gateway.sessions() as session,
        BoundedVerifier(trust_roots=roots, budget=budget) as verifier,
    ):
        if gateway.engine.dialect.name == "sqlite":
            result = session.execute(text("PRAGMA integrity_check")).scalar()
            check.database_ok = result == "ok"
        else:
            session.execute(text("SELECT 1"))
            check.database_ok = True
        check.audit_chain_ok = verify_chain(session=session).ok
        check.envelopes = len(session.scalars(select(Envelope.id)).all())
        purged = Envelope.documents_purged_at.is_not(None)
        check.documents_purged = (
            session.scalar(
                select(func.count(Document.id))
                .join(Envelope, Envelope.id == Document.envelope_id)
                .where(purged)
            )
            or 0
        )
        documents = session.scalars(
            select(Document)
            .join(Envelope, Envelope.id == Document.envelope_id)
            .where(Envelope.state == EnvelopeState.COMPLETED.value, ~purged)
            .options(selectinload(Document.revisions), selectinload(Document.envelope))
            .order_by(Document.id)
        ).all()
        for index, document in enumerate(documents, start=1):
            check.documents += 1
            try:
                data = read_document(runtime=gateway.runtime, document=document)
            except Exception as exc:  # a missing or damaged blob is a failure to report
                check.failures.append(f"{document.id} {document.name}: {exc}")
                if progress is not None:
                    progress(index, len(documents), document.name, "unreadable")
                continue
            report = verifier.verify(data)
            if report.ok:
                check.documents_ok += 1
                result = "ok"
            elif report.unfinished:
                check.failures.append(f"{document.id} {document.name}: {report.error}")
                result = "could not finish"
            else:
                check.failures.append(f"{document.id} {document.name}: verification failed")
                result = "FAILED"
            if progress is not None:
                progress(index, len(documents), document.name, result)
    return check
