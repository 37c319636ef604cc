"""Retention through the gateway: after the purge, the staff pages and the API answer 410 with
the coded Japanese error; `keiyaku retention --dry-run` lists and deletes nothing; the settings
guard against a typo; and the log file rotates at midnight JST, keeping a year of files."""

from __future__ import annotations

import datetime as dt
import json
import logging
import shutil
import socket
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from sqlalchemy import select, update

from core.envelopes.lifecycle import send_envelope
from core.errors import ConfigError, GatewayError
from core.model import AuditEvent, Envelope
from core.records.retention import envelope_blob_ids, purge_documents
from core.signing.devpki import DevPki
from core.timezone import JST
from gateway import ops
from gateway.app import build_mail_handler
from gateway.mailer import MailDispatcher
from gateway.ops_http import JsonFormatter, JstDailyFileHandler
from gateway.runtime import Gateway
from gateway.server import _log_options, run_server
from gateway.settings import load_settings
from tests.fixtures.envelopes import one_signer_envelope
from tests.fixtures.gateway import (
    SECRETS,
    complete_by_services,
    envelope_request,
    load_test_settings,
    open_test_gateway,
    run_keiyaku,
    write_config,
)
from tests.gateway.conftest import LiveGateway
from tests.gateway.test_admin_pages import _login, _staff

ROOT = Path(__file__).resolve().parents[2]
RETENTION = "retention:\n  documents_years: 5\n"
LONG_AGO = dt.datetime(2015, 6, 1, 10, 0, tzinfo=JST)  # fiscal 2015: kept until 2021-03-31


def _completed_long_ago(gateway: object, envelope_id: str) -> None:
    complete_by_services(gateway, envelope_id)  # type: ignore[arg-type]
    with gateway.sessions() as session:  # type: ignore[attr-defined]
        session.execute(
            update(Envelope).where(Envelope.id == envelope_id).values(completed_at=LONG_AGO)
        )
        session.commit()


def test_purged_documents_answer_410_on_the_staff_pages_and_the_api(
    live_gateway: Callable[..., LiveGateway],
) -> None:
    live = live_gateway(extra=RETENTION)
    _staff(live, "tanaka@city.example.jp", "契約課")
    token = live.token("e-bid")
    with live.client(token) as api:
        envelope_id = api.post("/api/v1/envelopes", json=envelope_request(send=True)).json()["id"]
    _completed_long_ago(live.gateway, envelope_id)
    with live.gateway.sessions() as session:  # visible to the clerk's department
        session.execute(
            update(Envelope).where(Envelope.id == envelope_id).values(department="契約課")
        )
        session.commit()
    with live.client(token) as api:  # before: the documents are there
        assert api.get(f"/api/v1/envelopes/{envelope_id}/documents/0").status_code == 200
    # the completion mail (with the PDFs) is not sent yet: nothing is deleted before it is
    report = ops.run_retention(live.gateway.settings, live.gateway)
    assert report is not None and report.purged == []
    assert [(e.envelope_id, e.held) for e in report.held] == [(envelope_id, "outbox")]
    mailer = MailDispatcher(live.gateway.sessions, build_mail_handler(live.gateway), 1)
    while mailer.run_once().delivered:
        pass

    report = ops.run_retention(live.gateway.settings, live.gateway)
    assert report is not None and report.purged == [envelope_id]

    with live.client(token) as api:
        for path in ("documents/0", "documents/1", "certificate"):
            answer = api.get(f"/api/v1/envelopes/{envelope_id}/{path}")
            assert answer.status_code == 410, answer.text
            error = answer.json()["error"]
            assert error["code"] == "document.purged"
            assert error["message_ja"].startswith("保存期間の満了により文書は削除されました（")
            assert error["message_ja"].endswith(" JST）")
        status = api.get(f"/api/v1/envelopes/{envelope_id}").json()
        assert status["documents_purged_at"] is not None and status["state"] == "completed"
        assert status["title"] == "市道１号線舗装補修工事"  # the facts stay
    with live.client() as client:
        assert _login(client, "tanaka@city.example.jp").status_code == 303
        detail = client.get(f"/admin/envelopes/{envelope_id}")
        assert detail.status_code == 200
        assert 'id="documents-purged"' in detail.text and "保存期間の満了により" in detail.text
        assert f"/admin/envelopes/{envelope_id}/documents/" not in detail.text  # no links
        assert 'id="certificate"' not in detail.text
        assert "工事請負契約書.pdf" in detail.text  # the names stay
        for path in ("documents/0", "certificate"):
            page = client.get(f"/admin/envelopes/{envelope_id}/{path}")
            assert page.status_code == 410
            assert "保存期間の満了により文書は削除されました" in page.text
            assert "document.purged" in page.text


def test_cli_dry_run_lists_then_the_run_purges(tmp_path: Path, devpki: DevPki) -> None:
    # SQLite only: the purge itself runs on both databases in tests/core/records/test_retention.py
    url = f"sqlite:///{tmp_path / 'keiyaku.db'}"
    config = write_config(tmp_path, devpki, database_url=url, extra=RETENTION)
    gateway = open_test_gateway(config)
    try:
        with gateway.sessions() as session:
            envelope_id = one_signer_envelope(session, gateway.runtime, "物品購入契約").id
            send_envelope(
                session=session, runtime=gateway.runtime, envelope_id=envelope_id, actor="契約課"
            )
            session.commit()
        _completed_long_ago(gateway, envelope_id)
    finally:
        gateway.close()

    held = run_keiyaku(config, "retention", "--dry-run")
    assert "held: an outbox delivery is not delivered yet" in held.stdout, held.stdout
    assert "0 would be deleted, 1 held" in held.stdout
    mailed = run_keiyaku(config, "send-mail")  # the signing request and the completion mail
    assert "mail: 2 sent, 0 to retry, 0 failed" in mailed.stdout, mailed.stdout + mailed.stderr
    dry = run_keiyaku(config, "retention", "--dry-run", "--json")
    assert dry.returncode == 0, dry.stderr
    listed = json.loads(dry.stdout)
    assert listed["dry_run"] is True and listed["purged"] == []
    assert [e["envelope_id"] for e in listed["expired"]] == [envelope_id]
    assert listed["expired"][0]["retention_ended_on"] == "2021-04-01"
    assert listed["expired"][0]["held"] is None
    gateway = open_test_gateway(config)
    try:
        with gateway.sessions() as session:
            assert session.get_one(Envelope, envelope_id).documents_purged_at is None
    finally:
        gateway.close()

    run = run_keiyaku(config, "retention")
    assert run.returncode == 0, run.stderr
    assert "purged: 1, held: 0, failed: 0" in run.stdout
    gateway = open_test_gateway(config)
    try:
        with gateway.sessions() as session:
            assert session.get_one(Envelope, envelope_id).documents_purged_at is not None
            event = session.scalars(
                select(AuditEvent).where(AuditEvent.action == "retention.purged")
            ).one()
            assert event.actor == "cli" and event.detail["documents"][0]["name"] == "契約書.pdf"
    finally:
        gateway.close()


def test_retention_settings_refuse_a_typo_and_the_job_runs_only_when_set(
    tmp_path: Path, devpki: DevPki
) -> None:
    def settings(extra: str) -> object:
        config = write_config(tmp_path, devpki, database_url="sqlite://", extra=extra)
        return load_test_settings(config)

    for typo in ("documents_years: 0", "documents_years: 3"):
        with pytest.raises(ConfigError, match="documents_years"):
            settings(f"retention:\n  {typo}\n")
    short = settings("retention:\n  documents_years: 3\n  allow_short: true\n")
    assert short.retention.documents_years == 3  # type: ignore[attr-defined]
    kept = settings("")
    assert kept.retention.documents_years is None  # type: ignore[attr-defined]
    assert ops.retention_policy(kept) is None  # type: ignore[arg-type]
    assert "retention" not in [s.id for s in ops.jobs(kept, object())]  # type: ignore[arg-type]
    on = settings(RETENTION)
    assert "retention" in [s.id for s in ops.jobs(on, object())]  # type: ignore[arg-type]
    off = settings(RETENTION + "schedules:\n  retention: null\n")
    assert "retention" not in [s.id for s in ops.jobs(off, object())]  # type: ignore[arg-type]


@pytest.fixture
def root_logging() -> Iterator[logging.Logger]:
    """The root logger, with its handlers and level put back afterwards."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    try:
        yield root
    finally:
        for handler in list(root.handlers):
            if handler not in handlers:
                handler.close()
                root.removeHandler(handler)
        for handler in handlers:
            if handler not in root.handlers:
                root.addHandler(handler)
        root.setLevel(level)


def test_log_file_gets_json_lines_and_rotates_at_jst_midnight_keeping_a_year(
    tmp_path: Path, devpki: DevPki, root_logging: logging.Logger
) -> None:
    extra = "logging:\n  file: logs/keiyaku.log\n"
    config = write_config(tmp_path, devpki, database_url="sqlite://", extra=extra)
    settings = load_test_settings(config)
    assert settings.logging.retention_days == 365
    assert _log_options(settings) == {"log_config": None, "access_log": False}
    handler, copy = [h for h in root_logging.handlers if isinstance(h, JstDailyFileHandler)]
    assert isinstance(handler.formatter, JsonFormatter)
    assert handler.backupCount == 365 and handler.when == "MIDNIGHT"
    log_file = tmp_path / "logs" / "keiyaku.log"
    assert handler.baseFilename == str(log_file)
    # every line is written to the backup folder as well, per host, kept the same way
    backup_log = tmp_path / "backups" / "logs" / socket.gethostname() / "keiyaku.log"
    assert copy.baseFilename == str(backup_log) and copy.backupCount == 365
    assert isinstance(copy.formatter, JsonFormatter)

    # the next rollover is the next midnight JST, whatever the host's time zone
    rollover = dt.datetime.fromtimestamp(handler.rolloverAt, JST)
    assert (rollover.hour, rollover.minute) == (0, 0)
    assert dt.timedelta(0) < rollover - dt.datetime.now(JST) <= dt.timedelta(days=1)

    logging.getLogger("keiyaku.test").warning("契約 %s", "一件目", extra={"envelope_id": "e1"})
    handler.flush()
    copy.flush()
    line = json.loads(log_file.read_text(encoding="utf-8").splitlines()[-1])
    assert line["message"] == "契約 一件目" and line["envelope_id"] == "e1"
    assert line["level"] == "WARNING" and line["time"].endswith("+09:00")
    assert json.loads(backup_log.read_text(encoding="utf-8").splitlines()[-1]) == line

    # a year of rotated files is there; the rollover of 2026-05-02 00:00 JST adds May 1's file
    # and deletes the oldest, leaving 365
    first = dt.date(2025, 5, 1)
    for day in range(365):
        (log_file.parent / f"keiyaku.log.{first + dt.timedelta(days=day)}").write_text("old\n")
    handler.rolloverAt = int(dt.datetime(2026, 5, 2, 0, 0, tzinfo=JST).timestamp())
    handler.doRollover()
    rotated = sorted(p.name for p in log_file.parent.glob("keiyaku.log.*"))
    assert len(rotated) == 365
    assert rotated[-1] == "keiyaku.log.2026-05-01" and "契約 一件目" in (
        log_file.parent / rotated[-1]
    ).read_text(encoding="utf-8")
    assert rotated[0] == "keiyaku.log.2025-05-02"  # 2025-05-01, the oldest, is gone
    logging.getLogger("keiyaku.test").warning("二件目")
    handler.flush()
    assert "二件目" in log_file.read_text(encoding="utf-8")  # a fresh file for May 2


def test_a_missing_backup_mount_does_not_stop_the_log_file(
    tmp_path: Path, devpki: DevPki, root_logging: logging.Logger
) -> None:
    extra = "logging:\n  file: logs/keiyaku.log\nbackup:\n  directory: backup-disk\n"
    config = write_config(tmp_path, devpki, database_url="sqlite://", extra=extra)
    (tmp_path / "backup-disk").write_text("not mounted")
    _log_options(load_test_settings(config))
    (handler,) = [h for h in root_logging.handlers if isinstance(h, JstDailyFileHandler)]
    logging.getLogger("keiyaku.test").warning("一件目")
    handler.flush()
    text = (tmp_path / "logs" / "keiyaku.log").read_text(encoding="utf-8")
    assert "log lines are not copied to" in text and "一件目" in text


def test_serve_refuses_a_log_file_shared_by_several_workers(tmp_path: Path, devpki: DevPki) -> None:
    extra = "logging:\n  file: logs/keiyaku.log\n"
    config = write_config(tmp_path, devpki, database_url="sqlite://", extra=extra)
    settings = load_settings(config, environ=SECRETS)
    with pytest.raises(GatewayError, match="server.log_file_workers"):
        run_server(settings, workers=2, config_path=config)


def test_backups_forget_purged_documents_once_no_kept_generation_predates_the_purge(
    tmp_path: Path, devpki: DevPki
) -> None:
    """A purged contract must not live on in the backup folder: its copies stay while a kept
    generation from before the purge may be restored, then the backup deletes them; a restore
    of what is left verifies every document still kept."""
    url = f"sqlite:///{tmp_path / 'keiyaku.db'}"
    config = write_config(tmp_path, devpki, database_url=url, extra=RETENTION)
    settings = load_test_settings(config)
    purged_at = dt.datetime.now(dt.UTC) - dt.timedelta(days=20)
    gateway = open_test_gateway(config)
    try:
        old_id, kept_id = _send_two(gateway)
        _completed_long_ago(gateway, old_id)
        complete_by_services(gateway, kept_id)
        mailer = MailDispatcher(gateway.sessions, build_mail_handler(gateway), 1)
        while mailer.run_once().delivered:
            pass
        old_blobs, kept_blobs = _blob_ids(gateway, old_id), _blob_ids(gateway, kept_id)
        copies = settings.path(settings.backup.directory) / "blobs"

        first = ops.run_backup(settings, gateway.engine, now=purged_at - dt.timedelta(days=1))
        assert first.purged_blobs_deleted == 0
        assert all((copies / b[:2] / b).exists() for b in old_blobs + kept_blobs)
        policy = ops.retention_policy(settings)
        assert policy is not None
        with gateway.sessions() as session:
            report = purge_documents(
                session=session, runtime=gateway.runtime, policy=policy, now=purged_at
            )
        assert report.purged == [old_id]
        # seven more daily generations: the one from before the purge is still kept (8)
        for day in range(1, 8):
            later = ops.run_backup(settings, gateway.engine, now=purged_at + dt.timedelta(days=day))
            assert later.purged_blobs_deleted == 0
        assert all((copies / b[:2] / b).exists() for b in old_blobs)
    finally:
        gateway.close()

    # today's backup drops that generation: nothing kept predates the purge any more
    out = run_keiyaku(config, "backup")
    assert out.returncode == 0, out.stderr
    assert f"purged documents: {len(old_blobs)} copies deleted" in out.stdout, out.stdout
    assert not any((copies / b[:2] / b).exists() for b in old_blobs)
    assert all((copies / b[:2] / b).exists() for b in kept_blobs)
    again = run_keiyaku(config, "backup")
    assert "purged documents" not in again.stdout  # looked for, none left: said nothing

    # the disk is lost; the newest generation comes back without the purged documents
    (tmp_path / "keiyaku.db").unlink()
    shutil.rmtree(settings.path(settings.blobs.path))
    restored = run_keiyaku(
        config, "restore", str(settings.path(settings.backup.directory)), "--json"
    )
    assert restored.returncode == 0, restored.stdout + restored.stderr
    check = json.loads(restored.stdout)
    assert check["ok"] is True
    assert check["documents_purged"] == 1 and check["documents_ok"] == check["documents"] >= 1


def _send_two(gateway: Gateway) -> tuple[str, str]:
    ids = []
    with gateway.sessions() as session:
        for title in ("物品購入契約", "業務委託契約"):
            envelope_id = one_signer_envelope(session, gateway.runtime, title).id
            send_envelope(
                session=session, runtime=gateway.runtime, envelope_id=envelope_id, actor="契約課"
            )
            session.commit()
            ids.append(envelope_id)
    return ids[0], ids[1]


def _blob_ids(gateway: Gateway, envelope_id: str) -> list[str]:
    with gateway.sessions() as session:
        return envelope_blob_ids(session=session, envelope_id=envelope_id)
