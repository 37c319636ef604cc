"""The scheduled jobs one node runs: the same list for `keiyaku jobs start` and `keiyaku serve`.

Each (job, fire time) runs once across all nodes (``core.jobs``' unique row per tick), so every
node may run the scheduler.
"""

from __future__ import annotations

from typing import Any
from zoneinfo import ZoneInfo

from gateway import intake, ops
from gateway.runtime import Gateway, access_code_policy
from schedules.runner import build_scheduler


def node_scheduler(gateway: Gateway, scheduler: Any) -> Any:
    """``scheduler`` (an APScheduler 3 scheduler, not started) loaded with every configured job."""
    settings = gateway.settings
    return build_scheduler(
        sessions=gateway.sessions,
        jobs=[
            *intake.jobs(settings, gateway, access_codes=access_code_policy(settings)),
            *ops.jobs(settings, gateway),
        ],
        timezone=settings.schedules.timezone,
        misfire_grace_seconds=settings.schedules.misfire_grace_seconds,
        scheduler=scheduler,
    )


def timezone(gateway: Gateway) -> ZoneInfo:
    """The time zone cron expressions are read in (Asia/Tokyo by default)."""
    return ZoneInfo(gateway.settings.schedules.timezone)
