"""The caller's IP (X-Forwarded-For believed only from configured proxies), signed cookies,
and the access-log redaction of link tokens."""

from __future__ import annotations

import ipaddress
import logging

from gateway.app import redact_path
from gateway.deps import resolve_client_ip
from gateway.pages.cookies import CookieSigner
from gateway.server import RedactTokens

PROXIES = [ipaddress.ip_network("10.0.0.0/24"), ipaddress.ip_network("::1/128")]


def test_forwarded_for_is_believed_only_from_trusted_proxies() -> None:
    # Straight from the internet: a forged header is ignored.
    assert resolve_client_ip("203.0.113.9", ["1.2.3.4"], PROXIES) == "203.0.113.9"
    assert resolve_client_ip("203.0.113.9", ["1.2.3.4"], []) == "203.0.113.9"
    # Through our proxy: the right-most entry that is not one of our proxies.
    assert resolve_client_ip("10.0.0.5", ["198.51.100.7"], PROXIES) == "198.51.100.7"
    assert resolve_client_ip("10.0.0.5", ["6.6.6.6, 198.51.100.7"], PROXIES) == "198.51.100.7"
    assert resolve_client_ip("10.0.0.5", ["198.51.100.7", "10.0.0.6"], PROXIES) == "198.51.100.7"
    # Garbage stops the walk at the last hop that could be read.
    assert resolve_client_ip("10.0.0.5", ["not-an-ip"], PROXIES) == "10.0.0.5"
    assert resolve_client_ip("10.0.0.5", ["1.1.1.1, junk, 10.0.0.7"], PROXIES) == "10.0.0.7"
    assert resolve_client_ip("10.0.0.5", [], PROXIES) == "10.0.0.5"
    assert resolve_client_ip("::1", ["2001:db8::5"], PROXIES) == "2001:db8::5"
    assert resolve_client_ip(None, ["1.2.3.4"], PROXIES) is None


def test_session_and_csrf_cookies_are_bound_and_expire() -> None:
    signer = CookieSigner(b"k" * 32)
    value = signer.session_value("link-a", 60, now=1000)
    assert signer.session_link(value, now=1030) == "link-a"
    assert signer.session_link(value, now=1061) is None  # expired
    assert signer.session_link(value.replace("link-a", "link-b"), now=1030) is None
    assert CookieSigner(b"x" * 32).session_link(value, now=1030) is None
    assert signer.session_link("garbage", now=1030) is None
    nonce = signer.new_nonce()
    assert signer.csrf_ok(nonce, signer.csrf_token(nonce))
    assert not signer.csrf_ok(nonce, signer.csrf_token(signer.new_nonce()))
    assert not signer.csrf_ok(None, signer.csrf_token(nonce))


def test_tokens_never_reach_the_access_log() -> None:
    assert redact_path("/sign/AbC_123-x/documents") == "/sign/<token>/documents"
    assert redact_path("/download/AbC_123-x") == "/download/<token>"
    assert redact_path("/api/v1/envelopes") == "/api/v1/envelopes"
    record = logging.LogRecord(
        "uvicorn.access",
        logging.INFO,
        "",
        0,
        '%s - "%s %s HTTP/%s" %d',
        ("127.0.0.1:5000", "GET", "/sign/SECRET/documents?x=1", "1.1", 200),
        None,
    )
    RedactTokens().filter(record)
    assert "SECRET" not in record.getMessage()
