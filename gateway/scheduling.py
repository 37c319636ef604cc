"""The scheduled jobs: one registry for the scheduler (`keiyaku jobs start`, `keiyaku serve`), the
settings validator (``schedules.<job id>`` is that job's cron expression) and `keiyaku jobs run`.

Each (job, fire time) runs once across all nodes (``core.jobs``' unique row per tick), so every
node may run the scheduler.

This module is imported by the settings and by the CLI at load time, so it imports nothing heavy
there: each job's wiring imports what it calls when it is built.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from zoneinfo import ZoneInfo

if TYPE_CHECKING:
    from gateway.runtime import Gateway
    from gateway.settings import Settings
    from schedules.runner import JobSpec

__all__ = [
    "JOBS",
    "JOB_IDS",
    "ScheduledJob",
    "node_scheduler",
    "scheduled_jobs",
    "timezone",
]


@dataclass(frozen=True)
class ScheduledJob:
    """One job the gateway schedules: its id (also the name of its cron setting under
    ``schedules:``) and how to wire it to a gateway."""

    id: str
    # What one tick calls, or None when the config leaves nothing for the job to do (retention
    # with no retention period).
    wire: Callable[[Settings, Gateway], Callable[[], Any] | None]


def _nightly_pull(settings: Settings, gateway: Gateway) -> Callable[[], Any]:
    from gateway import intake
    from gateway.runtime import access_code_policy
    from schedules import nightly_pull

    names = intake.pulled_sources(settings)
    access_codes = access_code_policy(settings)

    def pull() -> Any:
        return nightly_pull.run(
            sessions=gateway.sessions,
            runtime=gateway.runtime,
            policy=intake.policy(settings, access_codes=access_codes),
            sources=[intake.source_spec(settings, n) for n in names],
            authorities=intake.authorities(settings),
            batch_size=settings.intake.batch_size,
        )

    return pull


def _deadlines(settings: Settings, gateway: Gateway) -> Callable[[], Any]:
    from gateway import intake
    from schedules import deadlines

    def check() -> Any:
        return deadlines.run(
            sessions=gateway.sessions,
            calendar=intake.calendar(settings),
            buyer_name=settings.buyer.name,
            office_email=settings.intake.creator_email,
            target=settings.schedules.notice_target,
        )

    return check


def _retimestamp(settings: Settings, gateway: Gateway) -> Callable[[], Any]:
    from gateway.ops import run_retimestamp

    return lambda: run_retimestamp(settings, gateway)


def _backup(settings: Settings, gateway: Gateway) -> Callable[[], Any]:
    from gateway.ops import run_backup

    return lambda: run_backup(settings, gateway.engine)


def _retention(settings: Settings, gateway: Gateway) -> Callable[[], Any] | None:
    from gateway.ops import retention_policy, run_retention

    if retention_policy(settings) is None:
        return None
    return lambda: run_retention(settings, gateway)


# In the order the scheduler lists them. The ids are the schedules/ modules' JOB_IDs (backup has
# no module of its own); tests/gateway/test_scheduling.py checks that they and the settings agree.
JOBS: tuple[ScheduledJob, ...] = (
    ScheduledJob("nightly_pull", _nightly_pull),
    ScheduledJob("deadlines", _deadlines),
    ScheduledJob("retimestamp", _retimestamp),
    ScheduledJob("backup", _backup),
    ScheduledJob("retention", _retention),
)
JOB_IDS: tuple[str, ...] = tuple(job.id for job in JOBS)


def scheduled_jobs(
    settings: Settings, gateway: Gateway, *, only: frozenset[str] | None = None
) -> list[JobSpec]:
    """The jobs the config schedules (a cron expression under ``schedules:``), wired to
    ``gateway``; ``only`` keeps those ids."""
    from schedules.runner import JobSpec

    specs = []
    for job in JOBS:
        cron = getattr(settings.schedules, job.id)
        if not cron or (only is not None and job.id not in only):
            continue
        run = job.wire(settings, gateway)
        if run is not None:
            specs.append(JobSpec(job.id, cron, run))
    return specs


def node_scheduler(gateway: Gateway, scheduler: Any) -> Any:
    """``scheduler`` (an APScheduler 3 scheduler, not started) loaded with every configured job."""
    from schedules.runner import build_scheduler

    settings = gateway.settings
    return build_scheduler(
        sessions=gateway.sessions,
        jobs=scheduled_jobs(settings, gateway),
        timezone=settings.schedules.timezone,
        misfire_grace_seconds=settings.schedules.misfire_grace_seconds,
        scheduler=scheduler,
    )


def timezone(gateway: Gateway) -> ZoneInfo:
    """The time zone cron expressions are read in (Asia/Tokyo by default)."""
    return ZoneInfo(gateway.settings.schedules.timezone)
