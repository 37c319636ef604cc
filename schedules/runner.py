"""Running jobs: once per fire time across nodes, and on cron expressions (APScheduler 3).

APScheduler's own job stores are per process (its FAQ: a store shared by several processes
gives duplicate or missed runs), so every node runs its own in-memory scheduler and each tick
is claimed in the database first (:func:`core.jobs.claim_job_run`): of the nodes that fire the
same (job, fire time), exactly one runs it.

APScheduler does not hand the scheduled time to the job, so :func:`fire_time_of` works it out
from the trigger: the latest fire time at or before now (a tick starts within the misfire
grace time, which is shorter than any period used here).
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import socket
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any
from zoneinfo import ZoneInfo

from apscheduler.schedulers.background import BackgroundScheduler
from apscheduler.schedulers.base import BaseScheduler
from apscheduler.triggers.cron import CronTrigger
from sqlalchemy.orm import Session, sessionmaker

from core.jobs import claim_job_run, finish_job_run
from core.timezone import JST_NAME

__all__ = [
    "GuardedOutcome",
    "JobSpec",
    "build_scheduler",
    "cron_trigger",
    "default_node_name",
    "fire_time_of",
    "run_once",
]

log = logging.getLogger(__name__)


def default_node_name() -> str:
    """``host:pid``: what a job run row records as the node that ran it."""
    return f"{socket.gethostname()}:{os.getpid()}"


@dataclass(frozen=True)
class JobSpec:
    """One scheduled job: its id, cron expression and what to call (no arguments)."""

    id: str
    cron: str
    run: Callable[[], Any]


@dataclass(frozen=True)
class GuardedOutcome:
    """What happened to one tick on this node."""

    job_id: str
    fire_time: dt.datetime
    ran: bool
    status: str  # succeeded | failed | claimed_elsewhere
    result: Any = None


def run_once(
    *,
    sessions: sessionmaker[Session],
    job_id: str,
    fire_time: dt.datetime,
    node: str,
    job: Callable[[], Any],
) -> GuardedOutcome:
    """Run ``job`` for this tick unless another node claimed it; record how it ended."""
    with sessions() as session:
        claimed = claim_job_run(session=session, job_id=job_id, fire_time=fire_time, node=node)
        if claimed is None:
            log.info("%s at %s: claimed by another node", job_id, fire_time.isoformat())
            return GuardedOutcome(job_id, fire_time, False, "claimed_elsewhere")
        try:
            result = job()
        except Exception as exc:
            session.rollback()
            finish_job_run(
                session=session,
                job_run=claimed,
                status="failed",
                message=f"{type(exc).__name__}: {exc}",
            )
            log.exception("%s at %s failed", job_id, fire_time.isoformat())
            return GuardedOutcome(job_id, fire_time, True, "failed")
        finish_job_run(session=session, job_run=claimed, status="succeeded")
        return GuardedOutcome(job_id, fire_time, True, "succeeded", result)


def cron_trigger(expression: str, timezone: str) -> CronTrigger:
    """A trigger for a five-field cron expression in ``timezone`` (e.g. Asia/Tokyo); six fields
    put a seconds field first (``*/5 * * * * *``: every five seconds), as Quartz does."""
    fields = expression.split()
    if len(fields) == 6:
        second, minute, hour, day, month, day_of_week = fields
        return CronTrigger(
            second=second,
            minute=minute,
            hour=hour,
            day=day,
            month=month,
            day_of_week=day_of_week,
            timezone=ZoneInfo(timezone),
        )
    return CronTrigger.from_crontab(expression, timezone=ZoneInfo(timezone))


def fire_time_of(trigger: CronTrigger, now: dt.datetime, grace: dt.timedelta) -> dt.datetime:
    """The latest fire time of ``trigger`` at or before ``now`` (looking back ``grace``);
    ``now`` to the minute when there is none (a job run by hand)."""
    fire = trigger.get_next_fire_time(None, now - grace)
    if fire is None or fire > now:
        return now.replace(second=0, microsecond=0)
    while True:
        following = trigger.get_next_fire_time(fire, fire + dt.timedelta(seconds=1))
        if following is None or following > now:
            return fire  # type: ignore[no-any-return]
        fire = following


def build_scheduler(
    *,
    sessions: sessionmaker[Session],
    jobs: Sequence[JobSpec],
    timezone: str = JST_NAME,
    node: str | None = None,
    misfire_grace_seconds: int = 600,
    scheduler: BaseScheduler | None = None,
) -> BaseScheduler:
    """A scheduler (not started) with every job guarded by :func:`run_once`."""
    node = node or default_node_name()
    tz = ZoneInfo(timezone)
    scheduler = scheduler or BackgroundScheduler(timezone=tz)
    grace = dt.timedelta(seconds=misfire_grace_seconds)
    for spec in jobs:
        trigger = cron_trigger(spec.cron, timezone)

        def tick(spec: JobSpec = spec, trigger: CronTrigger = trigger) -> GuardedOutcome:
            fire = fire_time_of(trigger, dt.datetime.now(tz), grace)
            return run_once(
                sessions=sessions, job_id=spec.id, fire_time=fire, node=node, job=spec.run
            )

        scheduler.add_job(
            tick,
            trigger=trigger,
            id=spec.id,
            name=spec.id,
            coalesce=True,
            max_instances=1,
            misfire_grace_time=misfire_grace_seconds,
            replace_existing=True,
        )
    return scheduler
