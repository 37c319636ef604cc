"""The retention job: delete the documents of finished envelopes whose retention period ended."""

from __future__ import annotations

import datetime as dt

from sqlalchemy.orm import Session, sessionmaker

from core.records.retention import PurgeReport, RetentionPolicy, purge_documents
from core.runtime import Runtime

__all__ = ["JOB_ID", "run"]

JOB_ID = "retention"


def run(
    *,
    sessions: sessionmaker[Session],
    runtime: Runtime,
    policy: RetentionPolicy,
    dry_run: bool = False,
    actor: str = "system",
    now: dt.datetime | None = None,
) -> PurgeReport:
    """Purge (or, with ``dry_run``, list) every envelope whose documents' retention ended."""
    with sessions() as session:
        return purge_documents(
            session=session, runtime=runtime, policy=policy, now=now, dry_run=dry_run, actor=actor
        )
