"""The REST sink: multipart, Idempotency-Key, and an HMAC over exactly the bytes sent."""

from __future__ import annotations

import hashlib
import hmac

import httpx
import pytest

from connectors.http import RestSink, signature
from connectors.outbound import ContentSpec, RecordSpec, render_outbound
from core.errors import GatewayError
from tests.contract.test_sinks import content
from tests.fixtures.http_sink import RestSinkServer

SPEC = ContentSpec(
    record=RecordSpec(format="csv", fields={"no": "management_number"}, encoding="cp932")
)


def test_the_signature_covers_the_exact_body(rest_sink_server: RestSinkServer) -> None:
    sink = RestSink(name="dms", url=rest_sink_server.url, hmac_secret=rest_sink_server.secret)
    out = render_outbound(content(1), SPEC, "dms:1")
    request = sink.build_request(out)
    body = request.content
    timestamp = request.headers["X-Keiyaku-Timestamp"]
    expected = hmac.new(rest_sink_server.secret, timestamp.encode() + b"." + body, hashlib.sha256)
    assert request.headers["X-Keiyaku-Signature"] == "sha256=" + expected.hexdigest()
    assert request.headers["Idempotency-Key"] == "dms:1"
    assert request.headers["Content-Type"].startswith("multipart/form-data; boundary=")
    # What goes on the wire is what was signed: the server checks it and accepts.
    sink.push(out)
    got = rest_sink_server.applied["dms:1"]
    assert got.record == {"no": "KG-20261122-0001"}
    assert set(got.files) == {f.name for f in out.files}
    assert rest_sink_server.bad_signatures == 0
    # One changed byte (or another secret) and the receiver refuses it.
    tampered = httpx.post(
        rest_sink_server.url,
        content=body.replace(b"KG-20261122-0001", b"KG-20261122-0009"),
        headers={k: v for k, v in request.headers.items() if k.lower() != "content-length"},
    )
    assert tampered.status_code == 401 and rest_sink_server.bad_signatures == 1
    assert (
        signature(b"other-secret-123456", timestamp, body) != request.headers["X-Keiyaku-Signature"]
    )
    sink.close()


def test_refusals_are_final_outages_are_retried(rest_sink_server: RestSinkServer) -> None:
    rest_sink_server.reject = lambda record: (
        "unknown contract" if record["no"].endswith("2") else None
    )
    sink = RestSink(
        name="dms", url=rest_sink_server.url, hmac_secret=rest_sink_server.secret, attempts=1
    )
    with pytest.raises(GatewayError) as info:
        sink.push(render_outbound(content(2), SPEC, "dms:2"))
    assert info.value.code == "http.rejected" and not info.value.retriable
    assert "422" in info.value.message_en and "unknown contract" in info.value.message_en
    rest_sink_server.down = True
    with pytest.raises(GatewayError) as info:
        sink.push(render_outbound(content(3), SPEC, "dms:3"))
    assert info.value.code == "http.unavailable" and info.value.retriable
    sink.close()


def test_a_short_secret_is_refused() -> None:
    with pytest.raises(ValueError, match="16 bytes"):
        RestSink(name="dms", url="http://127.0.0.1:9", hmac_secret=b"short")


def test_nothing_listening_is_an_outage(rest_sink_server: RestSinkServer) -> None:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    sink = RestSink(
        name="dms", url=f"http://127.0.0.1:{port}/", hmac_secret=rest_sink_server.secret, attempts=1
    )
    with pytest.raises(GatewayError) as info:
        sink.push(render_outbound(content(4), SPEC, "dms:4"))
    assert info.value.code == "http.unreachable" and info.value.retriable
    assert info.value.message_en.startswith("dms: ConnectError: ")
    assert info.value.message_ja == "REST連携先に接続できません。"
    sink.close()
