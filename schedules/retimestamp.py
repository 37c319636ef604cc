"""The re-timestamping job: archive timestamps on documents whose timestamp chain is expiring,
when the renewal extends their validity (see :mod:`core.records.archive`)."""

from __future__ import annotations

import datetime as dt

from sqlalchemy.orm import Session, sessionmaker

from core.records.archive import RenewalPolicy, RenewalReport, renew_due_timestamps
from core.runtime import Runtime

__all__ = ["JOB_ID", "run"]

JOB_ID = "retimestamp"


def run(
    *,
    sessions: sessionmaker[Session],
    runtime: Runtime,
    margin: dt.timedelta | None = None,
    policy: RenewalPolicy | None = None,
    batch_size: int = 100,
    now: dt.datetime | None = None,
) -> RenewalReport:
    """Renew the documents due (up to ``batch_size`` per run) whose renewal extends their
    validity; ``margin`` alone means the default policy with that margin."""
    with sessions() as session:
        return renew_due_timestamps(
            session=session,
            runtime=runtime,
            margin=margin,
            policy=policy,
            now=now,
            limit=batch_size,
        )
