"""`keiyaku retimestamp` through its user's surfaces: the dry run lists what would be stamped
and when the next wave is due; a run whose TSA serves the same certificate stamps nothing and
says so; the alert shows on /healthz and /metrics of the served app. And staff send a party the
current copy (with the renewals so far) through a fresh download link."""

from __future__ import annotations

import email
import email.policy
import json
import mailbox
import re
from collections.abc import Callable
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from core.envelopes.documents import read_document
from core.model import Document, Envelope, VisibilityScope
from core.records.audit import list_events
from gateway.app import build_mail_handler
from gateway.mailer import MailDispatcher
from tests.e2e.conftest import body_of
from tests.fixtures.gateway import complete_by_services, envelope_request, run_keiyaku
from tests.gateway.conftest import LiveGateway
from tests.gateway.test_admin_pages import _csrf, _login, _staff

# ten years: every document the development TSA (ten-year certificate) sealed is due at once
ARCHIVE = "archive:\n  renew_margin_days: 3650\n  min_extension_days: 30\n"


def test_dry_run_then_a_run_with_the_same_tsa_certificate_stamps_nothing_and_alerts(
    live_gateway: Callable[..., LiveGateway],
) -> None:
    live = live_gateway(extra=ARCHIVE)
    with live.client(live.token("e-bid")) as api:
        envelope_id = api.post("/api/v1/envelopes", json=envelope_request(send=True)).json()["id"]
    complete_by_services(live.gateway, envelope_id)
    with live.gateway.sessions() as session:
        sizes = {d.id: d.size for d in session.query(Document).filter_by(envelope_id=envelope_id)}

    dry = run_keiyaku(live.config, "retimestamp", "--dry-run", "--json")
    assert dry.returncode == 0, dry.stderr
    plan = json.loads(dry.stdout)
    assert plan["would_stamp"] == 0
    assert {d["document_id"] for d in plan["documents"]} == set(sizes)
    assert {d["action"] for d in plan["documents"]} == {"nothing_to_extend"}
    assert plan["documents"][0]["expires_at"].endswith("+09:00")
    assert plan["next_wave"] == {"due_at": None, "expires_at": None, "documents": 0}
    assert "no newer one" in plan["alert"]
    text = run_keiyaku(live.config, "retimestamp", "--dry-run")
    assert "would stamp: 0, nothing to extend: 2" in text.stdout, text.stdout
    assert "next wave: none" in text.stdout and "ALERT:" in text.stdout

    run = run_keiyaku(live.config, "retimestamp")
    assert run.returncode == 0, run.stderr
    assert "re-timestamped: 0, nothing to extend: 2, failed: 0" in run.stdout, run.stdout
    assert "ALERT:" in run.stdout
    with live.gateway.sessions() as session:
        after = {d.id: d.size for d in session.query(Document).filter_by(envelope_id=envelope_id)}
    assert after == sizes  # nothing appended, nothing paid for

    with live.client() as client:
        health = client.get("/healthz").json()
        metrics = client.get("/metrics").text
    assert health["status"] == "degraded"
    archive = health["checks"]["archive"]
    assert archive["status"] == "down" and "2 nothing to extend" in archive["detail"]
    assert "ALERT" in archive["detail"]
    samples = {s.name: s.value for f in text_string_to_metric_families(metrics) for s in f.samples}
    assert samples["keiyaku_archive_alert"] == 1
    assert samples["keiyaku_archive_nothing_to_extend"] == 2
    assert samples["keiyaku_tsa_certificate_expiry_timestamp_seconds"] > 0


def test_the_dry_run_names_the_next_wave(live_gateway: Callable[..., LiveGateway]) -> None:
    live = live_gateway(extra="archive:\n  renew_margin_days: 30\n")
    with live.client(live.token("e-bid")) as api:
        envelope_id = api.post("/api/v1/envelopes", json=envelope_request(send=True)).json()["id"]
    complete_by_services(live.gateway, envelope_id)
    with live.gateway.sessions() as session:
        expiry = session.query(Document).filter_by(envelope_id=envelope_id).first()
        assert expiry is not None and expiry.timestamp_expires_at is not None
    dry = run_keiyaku(live.config, "retimestamp", "--dry-run", "--json")
    plan = json.loads(dry.stdout)
    assert plan["documents"] == [] and plan["alert"] is None
    assert plan["next_wave"]["documents"] == 2  # both documents, sealed under one certificate
    assert plan["next_wave"]["due_at"] < plan["next_wave"]["expires_at"]
    assert plan["next_wave"]["due_at"].endswith("+09:00")


def test_staff_send_a_party_the_current_copy_through_a_fresh_link(
    live_gateway: Callable[..., LiveGateway], tmp_path: Path
) -> None:
    live = live_gateway(mail="  maildir: outgoing\n  sender: keiyaku@city.example.jp\n")
    _staff(live, "keiyaku@city.example.jp", "契約課", scope=VisibilityScope.ALL)
    with live.client(live.token("e-bid")) as api:
        envelope_id = api.post("/api/v1/envelopes", json=envelope_request(send=True)).json()["id"]
    complete_by_services(live.gateway, envelope_id)
    dispatcher = MailDispatcher(live.gateway.sessions, build_mail_handler(live.gateway), 1)
    while dispatcher.run_once().delivered:
        pass
    box = mailbox.Maildir(str(tmp_path / "outgoing"), create=False)
    before = {key for key in box.keys()}
    with live.gateway.sessions() as session:
        envelope = session.get_one(Envelope, envelope_id)
        contractor = envelope.parties[1]
        party_id, contractor_email = contractor.id, contractor.email
        current = read_document(runtime=live.gateway.runtime, document=envelope.documents[0])

    with live.client() as client:
        assert _login(client, "keiyaku@city.example.jp").status_code == 303
        page = client.get(f"/admin/envelopes/{envelope_id}")
        assert 'id="send-copy"' in page.text
        sent = client.post(
            f"/admin/envelopes/{envelope_id}/copy",
            data={"csrf_token": _csrf(page.text), "party_id": party_id},
            follow_redirects=False,
        )
        assert sent.status_code == 303, sent.text
    assert len(dispatcher.run_once().delivered) == 1
    box = mailbox.Maildir(str(tmp_path / "outgoing"), create=False)
    (new,) = [box[key] for key in box.keys() if key not in before]
    message = email.message_from_bytes(new.as_bytes(), policy=email.policy.default)
    assert [a.addr_spec for a in message["To"].addresses] == [contractor_email]
    body = body_of(message)  # type: ignore[arg-type]
    match = re.search(r"http://testserver(/download/[A-Za-z0-9_-]+)", body)
    assert match, body
    with live.client() as client:
        assert client.get(match.group(1)).status_code == 200
        download = client.get(f"{match.group(1)}/documents/0")
        assert download.status_code == 200 and download.content == current
    with live.gateway.sessions() as session:
        events = [e.action for e in list_events(session=session, envelope_id=envelope_id)]
    assert "envelope.copy_requested" in events
