"""/healthz per dependency, /metrics in the Prometheus format, request ids in JSON log lines."""

from __future__ import annotations

import json
import logging
import socket
from collections.abc import Callable, Iterator
from decimal import Decimal

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from core.envelopes.approvals import approve
from core.envelopes.creation import DocumentInput, PartyInput, create_envelope
from core.envelopes.lifecycle import send_envelope
from core.states import PartyRole
from gateway.ops_http import JsonFormatter, RequestIdFilter
from tests.fixtures.envelopes import give_access_codes
from tests.fixtures.pdfs import make_pdf

from .conftest import LiveGateway


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    found = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            found[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return found


@pytest.fixture
def captured() -> Iterator[list[dict]]:
    """JSON lines written by the access logger while the test runs."""
    lines: list[dict] = []

    class ListHandler(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            lines.append(json.loads(self.format(record)))

    handler = ListHandler()
    handler.addFilter(RequestIdFilter())
    handler.setFormatter(JsonFormatter())
    logger = logging.getLogger("keiyaku.access")
    logger.addHandler(handler)
    level = logger.level
    logger.setLevel(logging.INFO)
    try:
        yield lines
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)


def test_healthz_reports_each_dependency(live_gateway: Callable[..., LiveGateway]) -> None:
    live = live_gateway()
    with live.client() as client:
        body = client.get("/healthz").json()
    assert body["status"] == "ok" and body["database"] == "ok"
    checks = body["checks"]
    assert checks["database"]["status"] == "ok"
    assert checks["blobs"]["status"] == "ok"
    assert checks["tsa"]["status"] == "ok"  # the in-process development TSA
    assert checks["smtp"]["status"] == "disabled"  # maildir transport
    assert checks["document_mirror"] == {
        "status": "ok",
        "detail": str(live.config.parent / "backups" / "blobs"),
    }


def test_healthz_is_degraded_when_smtp_is_unreachable(
    live_gateway: Callable[..., LiveGateway],
) -> None:
    port = _closed_port()
    live = live_gateway(
        mail=f"  transport: smtp\n  sender: keiyaku@city.example.jp\n"
        f"  smtp:\n    host: 127.0.0.1\n    port: {port}\n    starttls: false\n"
    )
    with live.client() as client:
        response = client.get("/healthz")
    assert response.status_code == 200
    body = response.json()
    assert body["status"] == "degraded"
    assert body["checks"]["smtp"] == {
        "status": "down",
        "detail": f"127.0.0.1:{port}: ConnectionRefusedError",
    }


def test_a_lost_backup_folder_degrades_health_and_is_counted_but_documents_are_stored(
    live_gateway: Callable[..., LiveGateway],
) -> None:
    live = live_gateway(extra="backup:\n  directory: backup-disk\n")
    (live.config.parent / "backup-disk").write_text("the backup disk is not mounted")
    blob_id = live.gateway.runtime.blobs.put(b"%PDF signed")  # as signing stores a revision
    assert live.gateway.runtime.blobs.get(blob_id) == b"%PDF signed"
    with live.client() as client:
        health = client.get("/healthz")
        metrics = _samples(client.get("/metrics").text)
    assert health.status_code == 200
    body = health.json()
    assert body["status"] == "degraded"
    mirror = body["checks"]["document_mirror"]
    assert mirror["status"] == "down" and "1 copies failed in this process" in mirror["detail"]
    assert metrics[("keiyaku_document_mirror_failures_total", ())] == 1.0


def test_healthz_fails_when_the_blob_store_is_gone(
    live_gateway: Callable[..., LiveGateway],
) -> None:
    live = live_gateway()
    root = live.gateway.runtime.blobs.root
    root.mkdir(parents=True, exist_ok=True)
    root.rename(root.with_name("blobs-moved"))
    root.write_text("not a folder")
    with live.client() as client:
        response = client.get("/healthz")
    assert response.status_code == 503
    error = response.json()["error"]
    assert error["code"] == "health.blobs"


def test_metrics_and_request_ids(
    live_gateway: Callable[..., LiveGateway], captured: list[dict]
) -> None:
    live = live_gateway()
    gateway = live.gateway
    with gateway.sessions() as session:
        envelope = create_envelope(
            session=session,
            runtime=gateway.runtime,
            title="計測用",
            amount=Decimal("1000000"),
            creator="開発市 契約課",
            documents=[DocumentInput("契約書.pdf", make_pdf(pages=1))],
            parties=[
                PartyInput(PartyRole.APPROVER, "契約 花子", "kacho@city.example.jp", "開発市"),
                PartyInput(PartyRole.SIGNER, "署名者", "s@example.jp", "株式会社一"),
            ],
            fields=[],
        )
        give_access_codes(session, envelope)
        session.commit()
        party = send_envelope(
            session=session, runtime=gateway.runtime, envelope_id=envelope.id, actor="開発市"
        )
        session.commit()
        approve(
            session=session,
            runtime=gateway.runtime,
            envelope_id=envelope.id,
            party_id=party.id,
            values={},
            auth_method="email+access_code",
            ip="192.0.2.1",
        )
    with live.client() as client:
        response = client.get("/metrics", headers={"X-Request-ID": "probe-123"})
        generated = client.get("/healthz")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    assert response.headers["x-request-id"] == "probe-123"
    assert len(generated.headers["x-request-id"]) == 32  # one was made up
    samples = _samples(response.text)
    assert samples[("keiyaku_envelopes", (("state", "sent"),))] == 1
    assert samples[("keiyaku_signing_seconds_count", (("operation", "approval"),))] == 1
    assert ("keiyaku_documents_timestamp_expiring", ()) in samples
    assert any(name == "keiyaku_deliveries" for name, _ in samples)

    lines = [line for line in captured if line.get("path") == "/metrics"]
    assert lines and lines[0]["request_id"] == "probe-123"
    assert lines[0]["status"] == 200 and lines[0]["time"].endswith("+09:00")
    # a bad id from outside is not trusted: a new one is made
    with httpx.Client(base_url=live.url) as client:
        odd = client.get("/healthz", headers={"X-Request-ID": "bad id; drop"})
    assert len(odd.headers["x-request-id"]) == 32
