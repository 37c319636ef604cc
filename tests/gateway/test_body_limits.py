"""Request bodies are counted as they arrive: an award push or an envelope upload over its limit
is answered 413 with the API's error JSON once the limit is passed, not after reading it all,
even chunked without a Content-Length."""

from __future__ import annotations

import http.client
import json
import select
import socket
from collections.abc import Callable
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from tests.gateway.conftest import LiveGateway
from tests.gateway.test_awards_api import AWARD, _start

MB = 1024 * 1024
_CLEAR_REFS = Path("/proc/self/clear_refs")
_STATUS = Path("/proc/self/status")

pytestmark = pytest.mark.parametrize("db_engine", ["sqlite"], indirect=True)


def _status_kb(field: str) -> int:
    for line in _STATUS.read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise LookupError(field)


def _reset_peak() -> bool:
    """Reset this process's RSS high-water mark (Linux 4.0+); False where that is refused."""
    try:
        _CLEAR_REFS.write_text("5")
    except OSError:
        return False
    return True


def _send_chunked(
    url: str, path: str, headers: dict[str, str], total: int, *, first: bytes = b""
) -> tuple[int, dict[str, str], dict[str, object], int]:
    """POST ``total`` bytes (``first``, then filler) chunked, 64 KB a chunk, with no
    Content-Length; stop sending as soon as the server answers. Returns the status, headers,
    JSON body and how many bytes were sent before the answer came."""
    parts = urlsplit(url)
    sock = socket.create_connection((parts.hostname, parts.port), timeout=60)
    try:
        head = [f"POST {path} HTTP/1.1", f"Host: {parts.netloc}", "Transfer-Encoding: chunked"]
        head += [f"{name}: {value}" for name, value in headers.items()]
        sock.sendall(("\r\n".join(head) + "\r\n\r\n").encode())
        sent = 0
        filler = b"A" * (64 * 1024)
        while sent < total:
            readable, _, _ = select.select([sock], [], [], 0)
            if readable:
                break  # the answer is there: the server stopped reading
            chunk = first[sent : sent + len(filler)] if sent < len(first) else filler
            chunk = chunk[: total - sent]
            try:
                sock.sendall(b"%x\r\n%s\r\n" % (len(chunk), chunk))
            except (BrokenPipeError, ConnectionResetError):
                break
            sent += len(chunk)
        else:
            sock.sendall(b"0\r\n\r\n")
        response = http.client.HTTPResponse(sock)
        response.begin()
        body = json.loads(response.read())
        return response.status, dict(response.getheaders()), body, sent
    finally:
        sock.close()


def _check_refused(
    live: LiveGateway, path: str, headers: dict[str, str], total: int, *, first: bytes = b""
) -> tuple[int, int | None]:
    peak_reset = _reset_peak()
    before_kb = _status_kb("VmRSS")
    status, answer_headers, body, sent = _send_chunked(live.url, path, headers, total, first=first)
    grown = (_status_kb("VmHWM") - before_kb) * 1024 if peak_reset else None
    # The server answered while the client still had most of the body to send.
    assert sent < total // 2, f"{sent} of {total} bytes went out before the answer"
    assert status == 413, body
    error = body["error"]
    assert isinstance(error, dict)
    assert error["code"] == "request.too_large"
    assert "リクエストが大きすぎます" in str(error["message_ja"])
    assert answer_headers.get("connection", answer_headers.get("Connection")) == "close"
    return sent, grown


def test_a_chunked_award_push_over_the_limit_is_refused_as_it_arrives(
    live_gateway: Callable[..., LiveGateway], tmp_path: Path
) -> None:
    live = _start(live_gateway, tmp_path)
    token = live.token("ebid")
    headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
    total = 32 * MB
    _sent, grown = _check_refused(live, "/api/v1/awards/ebid", headers, total, first=b'{"a": "')
    if grown is not None:  # the server (this process) held at most a few MB, not 32
        assert grown < 8 * MB, f"peak RSS grew by {grown / MB:.1f} MB"
    # A declared length over the limit is refused before a byte is read.
    with live.client(token) as http_client:
        declared = http_client.post(
            "/api/v1/awards/ebid",
            content=b"{" + b" " * (2 * MB) + b"}",
            headers={"Content-Type": "application/json"},
        )
        assert declared.status_code == 413
        assert declared.json()["error"]["code"] == "request.too_large"
        # and the server serves on
        assert http_client.post("/api/v1/awards/ebid", json=AWARD).status_code == 200


@pytest.mark.parametrize("kind", ["json", "multipart"])
def test_a_chunked_envelope_upload_over_the_limit_is_refused_as_it_arrives(
    live_gateway: Callable[..., LiveGateway], kind: str
) -> None:
    # 5 MB an envelope: the body limit is 5 MB x 4/3 + 2 MB (base64 and the form) = 8.7 MB
    live = live_gateway(extra="limits:\n  max_file_mb: 5\n  max_envelope_mb: 5\n")
    token = live.token("erp")
    total = 40 * MB
    if kind == "json":
        headers = {"Content-Type": "application/json"}
        first = b'{"title": "t", "documents": [{"name": "a.pdf", "content_base64": "'
    else:
        boundary = "keiyakuboundary"
        headers = {"Content-Type": f"multipart/form-data; boundary={boundary}"}
        first = (
            f'--{boundary}\r\nContent-Disposition: form-data; name="documents"; '
            f'filename="a.pdf"\r\nContent-Type: application/pdf\r\n\r\n%PDF-1.7\n'
        ).encode()
    headers["Authorization"] = f"Bearer {token}"
    _sent, grown = _check_refused(live, "/api/v1/envelopes", headers, total, first=first)
    if grown is not None:  # at most about the limit (twice, joined), never the 40 MB
        assert grown < 24 * MB, f"peak RSS grew by {grown / MB:.1f} MB"
    with live.client(token) as http_client:  # the server serves on
        assert http_client.get("/api/v1/envelopes").status_code == 200
