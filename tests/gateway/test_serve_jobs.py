"""`keiyaku serve` runs the scheduled jobs itself (server.run_jobs), each tick once."""

from __future__ import annotations

import time
from collections import Counter
from pathlib import Path

from sqlalchemy import Engine, select

from core.model import JobRun
from core.signing.devpki import DevPki
from gateway.app import create_app
from gateway.server import serve_in_thread
from tests.fixtures.gateway import open_test_gateway, write_config

SCHEDULES = """
schedules:
  nightly_pull: null
  deadlines: "* * * * * *"
  retimestamp: null
  backup: null
"""


def _config(tmp_path: Path, devpki: DevPki, db_engine: Engine) -> Path:
    """A config on the test database whose one job fires every second."""
    return write_config(
        tmp_path,
        devpki,
        database_url=db_engine.url.render_as_string(hide_password=False),
        extra=SCHEDULES,
    )


def test_two_served_apps_run_each_tick_of_a_job_once(
    tmp_path: Path, devpki: DevPki, db_engine: Engine
) -> None:
    config = _config(tmp_path, devpki, db_engine)
    gateways = [open_test_gateway(config) for _ in range(2)]
    servers = [serve_in_thread(create_app(g, run_mailer=False, run_jobs=True)) for g in gateways]
    try:
        for server in servers:
            server.__enter__()
        time.sleep(3.5)
    finally:
        for server in servers:
            server.__exit__(None, None, None)
        for gateway in gateways:
            gateway.close()
    with gateways[0].sessions() as session:
        runs = session.scalars(select(JobRun).where(JobRun.job_id == "deadlines")).all()
    ticks = Counter(run.fire_time for run in runs)
    assert len(ticks) >= 2  # the job ran on several ticks...
    assert set(ticks.values()) == {1}  # ...and each tick on one node only
    assert all(run.status == "succeeded" for run in runs)


def test_run_jobs_is_off_in_create_app_unless_asked(
    tmp_path: Path, devpki: DevPki, db_engine: Engine
) -> None:
    config = _config(tmp_path, devpki, db_engine)
    gateway = open_test_gateway(config)
    server = serve_in_thread(create_app(gateway, run_mailer=False))
    try:
        server.__enter__()
        time.sleep(1.5)
    finally:
        server.__exit__(None, None, None)
        gateway.close()
    with gateway.sessions() as session:
        assert session.scalars(select(JobRun)).all() == []
