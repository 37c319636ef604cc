"""`keiyaku retimestamp` through its user's surfaces: the dry run lists what would be stamped
and when the next wave is due; a run whose TSA serves the same certificate stamps nothing and
says so; the alert shows on /healthz and /metrics of the served app."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from core.model import Document
from tests.fixtures.gateway import SECRETS, complete_by_services, envelope_request
from tests.gateway.conftest import LiveGateway

ROOT = Path(__file__).resolve().parents[2]
# ten years: every document the development TSA (ten-year certificate) sealed is due at once
ARCHIVE = "archive:\n  renew_margin_days: 3650\n  min_extension_days: 30\n"


def _cli(config: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("KEIYAKU_")}
    return subprocess.run(
        [sys.executable, "-m", "gateway.cli", "--config", str(config), *args],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env={**env, **SECRETS},
        timeout=300,
    )


def test_dry_run_then_a_run_with_the_same_tsa_certificate_stamps_nothing_and_alerts(
    live_gateway: Callable[..., LiveGateway],
) -> None:
    live = live_gateway(extra=ARCHIVE)
    with live.client(live.token("e-bid")) as api:
        envelope_id = api.post("/api/v1/envelopes", json=envelope_request(send=True)).json()["id"]
    complete_by_services(live.gateway, envelope_id)
    with live.gateway.sessions() as session:
        sizes = {d.id: d.size for d in session.query(Document).filter_by(envelope_id=envelope_id)}

    dry = _cli(live.config, "retimestamp", "--dry-run", "--json")
    assert dry.returncode == 0, dry.stderr
    plan = json.loads(dry.stdout)
    assert plan["would_stamp"] == 0
    assert {d["document_id"] for d in plan["documents"]} == set(sizes)
    assert {d["action"] for d in plan["documents"]} == {"nothing_to_extend"}
    assert plan["documents"][0]["expires_at"].endswith("+09:00")
    assert plan["next_wave"] == {"due_at": None, "expires_at": None, "documents": 0}
    assert "no newer one" in plan["alert"]
    text = _cli(live.config, "retimestamp", "--dry-run")
    assert "would stamp: 0, nothing to extend: 2" in text.stdout, text.stdout
    assert "next wave: none" in text.stdout and "ALERT:" in text.stdout

    run = _cli(live.config, "retimestamp")
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
    dry = _cli(live.config, "retimestamp", "--dry-run", "--json")
    plan = json.loads(dry.stdout)
    assert plan["documents"] == [] and plan["alert"] is None
    assert plan["next_wave"]["documents"] == 2  # both documents, sealed under one certificate
    assert plan["next_wave"]["due_at"] < plan["next_wave"]["expires_at"]
    assert plan["next_wave"]["due_at"].endswith("+09:00")
