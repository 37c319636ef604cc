"""A dropped database connection, as PostgreSQL does it (a restart, a failover, an admin's
pg_terminate_backend), against the served app: idle pooled connections that died are replaced
without the caller noticing; a request whose connection dies in the middle answers 503 with the
API's error JSON and Retry-After, leaves nothing half-written (no envelope, no orphan document),
and the same request retried with its Idempotency-Key then succeeds once."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

import httpx
import pytest
from sqlalchemy import create_engine, func, select, text

from core.model import Envelope
from tests.fixtures.gateway import envelope_request
from tests.gateway.conftest import LiveGateway

pytestmark = pytest.mark.parametrize("db_engine", ["postgresql"], indirect=True)

OTHERS = "datname = current_database() AND pid <> pg_backend_pid()"


def _blobs(live: LiveGateway) -> int:
    root = live.gateway.runtime.blobs.root
    return sum(1 for p in root.rglob("*") if p.is_file() and not p.name.startswith("."))


def _envelopes(live: LiveGateway) -> int:
    with live.gateway.sessions() as session:
        return session.scalar(select(func.count()).select_from(Envelope)) or 0


def test_connections_dropped_while_idle_are_replaced_unnoticed(
    live_gateway: Callable[..., LiveGateway],
) -> None:
    live = live_gateway()
    url = live.gateway.settings.database.url
    with live.client(live.token("e-bid")) as api:
        assert api.post("/api/v1/envelopes", json=envelope_request()).status_code == 201
        admin = create_engine(url, isolation_level="AUTOCOMMIT")
        try:
            with admin.connect() as conn:
                killed = conn.execute(text(f"SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE {OTHERS}")).all()  # fmt: skip
            assert killed, "the app held no connection to drop"
            # Every pooled connection is dead; each request still answers as before.
            for _ in range(3):
                listed = api.get("/api/v1/envelopes")
                assert listed.status_code == 200, listed.text
                assert listed.json()["total"] == 1
            assert api.post("/api/v1/envelopes", json=envelope_request()).status_code == 201
        finally:
            admin.dispose()


def test_a_connection_dropped_mid_request_is_a_503_and_leaves_nothing_half_done(
    live_gateway: Callable[..., LiveGateway],
) -> None:
    live = live_gateway()
    url = live.gateway.settings.database.url
    before_blobs = _blobs(live)
    admin = create_engine(url, isolation_level="AUTOCOMMIT")
    holder = create_engine(url)
    answer: list[httpx.Response] = []
    try:
        with live.client(live.token("e-bid")) as api:
            body = envelope_request(send=True)
            headers = {"Idempotency-Key": "fault-0001"}
            with holder.connect() as lock:
                # Hold the envelopes table so the create waits inside its transaction ...
                lock.execute(text("LOCK TABLE envelopes IN ACCESS EXCLUSIVE MODE"))
                worker = threading.Thread(
                    target=lambda: answer.append(
                        api.post("/api/v1/envelopes", json=body, headers=headers)
                    )
                )
                worker.start()
                # ... and drop its connection while it waits.
                waiting: list[object] = []
                deadline = time.monotonic() + 30
                with admin.connect() as conn:
                    while not waiting and time.monotonic() < deadline:
                        waiting = list(conn.execute(text(f"SELECT pid FROM pg_stat_activity WHERE {OTHERS} AND wait_event_type = 'Lock'")).scalars())  # fmt: skip
                        time.sleep(0.05)
                    assert waiting, "the create never waited for the lock"
                    for pid in waiting:
                        conn.execute(text("SELECT pg_terminate_backend(:pid)"), {"pid": pid})
                worker.join(60)
                lock.rollback()
            (dropped,) = answer
            assert dropped.status_code == 503, dropped.text
            error = dropped.json()["error"]
            assert error["code"] == "database.unavailable"
            assert "データベース" in error["message_ja"]
            assert dropped.headers.get("Retry-After")
            # Nothing of it stayed: no envelope, no stored document, no mail.
            assert _envelopes(live) == 0
            assert _blobs(live) == before_blobs
            # The client retries the same request: created once.
            retried = api.post("/api/v1/envelopes", json=body, headers=headers)
            assert retried.status_code == 201, retried.text
            again = api.post("/api/v1/envelopes", json=body, headers=headers)
            assert again.json()["id"] == retried.json()["id"]
            assert _envelopes(live) == 1
            assert retried.json()["state"] == "sent"
    finally:
        admin.dispose()
        holder.dispose()
