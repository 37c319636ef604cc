"""`keiyaku jobs start` stopped (SIGTERM, as systemd stops it) while a job runs lets that job
finish before it exits: a tick is claimed once, by one node, and never run again by another,
so a scheduler killed mid-tick left the run 'running' for good and its work undone."""

from __future__ import annotations

import signal
import subprocess
import time
from pathlib import Path

import pytest
from sqlalchemy import select, text
from sqlalchemy.orm import Session

from core.model import JobRun
from core.signing.devpki import DevPki
from core.storage import create_database_engine, migrate
from tests.fixtures.gateway import keiyaku, write_config

# Only the deadlines check, every two seconds (a six-field cron: seconds first).
SCHEDULES = """schedules:
  nightly_pull: null
  deadlines: "*/2 * * * * *"
  retimestamp: null
  backup: null
"""


def _runs(session: Session) -> list[JobRun]:
    return list(session.scalars(select(JobRun).where(JobRun.job_id == "deadlines")))


@pytest.mark.postgres
def test_a_job_running_at_sigterm_finishes_before_the_scheduler_exits(
    tmp_path: Path, devpki: DevPki, postgres_url: str
) -> None:
    config = write_config(tmp_path, devpki, database_url=postgres_url, extra=SCHEDULES)
    engine = create_database_engine(postgres_url)
    migrate(engine)
    # The deadlines check reads awards first: while this lock is held, a tick waits inside
    # its job (well within database.lock_timeout_seconds).
    blocker = engine.connect()
    blocker.execute(text("LOCK TABLE awards IN ACCESS EXCLUSIVE MODE"))
    scheduler = keiyaku(config, "jobs", "start", stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 120
        with Session(engine) as session:
            while not [r for r in _runs(session) if r.status == "running"]:
                assert scheduler.poll() is None, "keiyaku jobs start exited"
                assert time.monotonic() < deadline, "no deadlines tick was claimed"
                session.rollback()
                time.sleep(0.2)
        scheduler.send_signal(signal.SIGTERM)
        time.sleep(1.5)
        assert scheduler.poll() is None, "the scheduler exited with its job still running"
        blocker.rollback()  # the lock goes: the job finishes, then the scheduler stops
        _, stderr = scheduler.communicate(timeout=60)
        assert scheduler.returncode == 0, stderr
        assert "scheduler stopped" in stderr
    finally:
        if scheduler.poll() is None:
            scheduler.kill()
            scheduler.communicate()
        blocker.close()
    with Session(engine) as session:
        runs = _runs(session)
    engine.dispose()
    assert runs, "no deadlines run recorded"
    assert [r.status for r in runs] == ["succeeded"] * len(runs)
