"""The job registry (gateway.scheduling.JOBS) is the one job list: the settings, the scheduler
and `keiyaku jobs run` agree with it."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import click
import pytest
from pydantic import ValidationError

from core.signing.devpki import DevPki
from gateway.cli import jobs_run
from gateway.scheduling import JOB_IDS, scheduled_jobs
from gateway.settings import SchedulesSettings
from schedules import deadlines, nightly_pull, retention, retimestamp
from tests.fixtures.gateway import load_test_settings, write_config

ROOT = Path(__file__).resolve().parents[2]
# The schedules settings that are not a job's cron expression.
NOT_JOBS = {"timezone", "misfire_grace_seconds", "notice_target"}


def test_every_job_has_its_cron_setting_and_every_cron_setting_a_job() -> None:
    assert set(SchedulesSettings.model_fields) - NOT_JOBS == set(JOB_IDS)


def test_registry_ids_are_the_job_modules_ids() -> None:
    modules = (nightly_pull, deadlines, retimestamp, retention)
    assert {m.JOB_ID for m in modules} <= set(JOB_IDS)


@pytest.mark.parametrize("job_id", JOB_IDS)
def test_the_settings_validator_checks_every_job(job_id: str) -> None:
    with pytest.raises(ValidationError, match=f"{job_id}: not a cron expression"):
        SchedulesSettings(**{job_id: "every day"})


def test_jobs_run_offers_every_job() -> None:
    choice = next(p.type for p in jobs_run.params if p.name == "job_id")
    assert isinstance(choice, click.Choice)
    assert tuple(choice.choices) == JOB_IDS


def test_the_scheduler_gets_every_job_when_all_are_configured(
    tmp_path: Path, devpki: DevPki
) -> None:
    config = write_config(
        tmp_path, devpki, database_url="sqlite://", extra="retention:\n  documents_years: 5\n"
    )
    settings = load_test_settings(config)
    ids = [s.id for s in scheduled_jobs(settings, object())]  # type: ignore[arg-type]
    assert tuple(ids) == JOB_IDS


def test_loading_the_cli_does_not_import_pyhanko_or_sqlalchemy() -> None:
    # `keiyaku --help` and every command's parsing stay fast: the heavy parts load on use.
    probe = "import sys, gateway.cli; print(sorted({'pyhanko', 'sqlalchemy'} & set(sys.modules)))"
    out = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, cwd=ROOT, check=True
    )
    assert out.stdout.strip() == "[]"
