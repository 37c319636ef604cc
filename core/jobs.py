"""Once per fire time, cluster-wide: a scheduled job claims its tick by inserting a row.

``job_runs`` is unique on (job id, fire time). Every node's scheduler fires the same tick; the
node whose insert commits first runs the job, the others see the unique violation and skip. A
node killed mid-job leaves its row ``running``; that tick is not run again (the next one is),
which suits idempotent jobs such as the nightly pull.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from core.model import JobRun, utcnow

__all__ = ["claim_job_run", "finish_job_run", "list_job_runs"]


def claim_job_run(
    *, session: Session, job_id: str, fire_time: dt.datetime, node: str
) -> JobRun | None:
    """Claim one tick of a job and commit; None when another node already has it."""
    run = JobRun(
        job_id=job_id,
        fire_time=fire_time.astimezone(dt.UTC),
        node=node[:100],
        status="running",
        started_at=utcnow(),
    )
    session.add(run)
    try:
        session.commit()
    except IntegrityError:
        session.rollback()
        return None
    return run


def finish_job_run(
    *, session: Session, job_run: JobRun, status: str, message: str | None = None
) -> None:
    """Record how a claimed tick ended, and commit."""
    job_run.status = status
    job_run.finished_at = utcnow()
    job_run.message = message[:4000] if message else None
    session.commit()


def list_job_runs(
    *, session: Session, job_id: str | None = None, limit: int = 50
) -> Sequence[JobRun]:
    """Job runs, newest first."""
    query = select(JobRun).order_by(JobRun.fire_time.desc(), JobRun.id.desc()).limit(limit)
    if job_id is not None:
        query = query.where(JobRun.job_id == job_id)
    return session.scalars(query).all()
