"""schedules: the jobs (nightly pull, deadline checks) and how they run once per tick.

Each job module exposes ``JOB_ID`` and ``run(...)``; :func:`build_scheduler` wires them to cron
expressions, and :func:`run_once` guards each tick across nodes.
"""

from schedules.intake import IntakeResult, SourceSpec, accept_record, take_in_source
from schedules.runner import JobSpec, build_scheduler, run_once

__all__ = [
    "IntakeResult",
    "JobSpec",
    "SourceSpec",
    "accept_record",
    "build_scheduler",
    "run_once",
    "take_in_source",
]
