"""The re-timestamping job: archive timestamps on documents whose timestamp chain is expiring."""

from __future__ import annotations

import datetime as dt

from sqlalchemy.orm import Session, sessionmaker

from core.archive import RenewalReport, renew_due_timestamps
from core.envelopes import Runtime

JOB_ID = "retimestamp"


def run(
    *,
    sessions: sessionmaker[Session],
    runtime: Runtime,
    margin: dt.timedelta,
    batch_size: int = 100,
    now: dt.datetime | None = None,
) -> RenewalReport:
    """Renew the documents due within ``margin`` (up to ``batch_size`` per run)."""
    with sessions() as session:
        return renew_due_timestamps(
            session=session, runtime=runtime, margin=margin, now=now, limit=batch_size
        )
