"""Signed cookies for the signing pages: the signer's session and the CSRF token.

The session cookie holds ``link id : expiry`` with an HMAC, so it opens only the link it was
made for and only until it expires. CSRF uses a signed double submit: a random nonce in an
HttpOnly cookie, and in each form the HMAC of that nonce, which a third-party page can neither
read nor compute. Posts are also refused when their ``Origin`` is another site.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
import time

SESSION_COOKIE = "kg_session"
CSRF_COOKIE = "kg_csrf"


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


class CookieSigner:
    """HMAC-SHA256 signatures over cookie values, one key, separate purposes."""

    def __init__(self, key: bytes) -> None:
        if len(key) < 32:
            raise ValueError("the session key needs at least 32 bytes")
        self._key = key

    def _mac(self, purpose: str, value: str) -> str:
        return _b64(hmac.new(self._key, f"{purpose}|{value}".encode(), hashlib.sha256).digest())

    def session_value(self, link_id: str, seconds: int, now: float | None = None) -> str:
        """A session cookie value for ``link_id``, valid for ``seconds``."""
        expires = int((now or time.time()) + seconds)
        value = f"{link_id}:{expires}"
        return f"{value}.{self._mac('session', value)}"

    def session_link(self, cookie: str | None, now: float | None = None) -> str | None:
        """The link id of a valid, unexpired session cookie; None otherwise."""
        if not cookie or "." not in cookie:
            return None
        value, _, mac = cookie.rpartition(".")
        if not hmac.compare_digest(mac, self._mac("session", value)):
            return None
        link_id, _, expires = value.partition(":")
        if not expires.isdigit() or int(expires) < (now or time.time()):
            return None
        return link_id

    @staticmethod
    def new_nonce() -> str:
        """A fresh CSRF nonce for the cookie."""
        return secrets.token_urlsafe(24)

    def csrf_token(self, nonce: str) -> str:
        """The form token that goes with a CSRF cookie nonce."""
        return self._mac("csrf", nonce)

    def csrf_ok(self, nonce: str | None, token: str | None) -> bool:
        """True when the form's token matches the cookie's nonce."""
        if not nonce or not token:
            return False
        return hmac.compare_digest(token, self.csrf_token(nonce))
