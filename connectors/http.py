"""REST sink (httpx): one multipart POST per delivery, signed with an HMAC of the exact bytes.

The request carries the files as ``files`` parts and the record as a ``record`` part
(``application/json``), with headers:

- ``Idempotency-Key``: the delivery's stable key; the receiver drops a repeat;
- ``X-Keiyaku-Timestamp``: Unix seconds when this attempt was signed;
- ``X-Keiyaku-Signature``: ``sha256=`` + hex HMAC-SHA256 over ``timestamp + "." + body``, the
  body being exactly the bytes sent (the multipart encoding with its boundary), under the
  configured secret. A receiver recomputes it over the raw body before parsing anything, and may
  refuse old timestamps to stop replays.

2xx is success. 408, 409 (the same key still in progress), 425, 429 and 5xx are outages and
are retried; any other answer refuses the delivery, which goes dead with the status and the
start of the body.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Literal

import httpx
from pydantic import Field, SecretStr, model_validator
from tenacity import Retrying, retry_if_exception, stop_after_attempt, wait_random_exponential

from connectors.base import ConnectorConfig, Resolve, Sink, verify_tls
from core.errors import Disposition, SinkError
from core.outbound_types import Outbound

__all__ = ["RestSink", "RestSinkConfig", "signature"]

RETRIABLE_STATUS = frozenset({408, 409, 425, 429})


def signature(secret: bytes, timestamp: str, body: bytes) -> str:
    """The ``X-Keiyaku-Signature`` value for one request body."""
    digest = hmac.new(secret, timestamp.encode("ascii") + b"." + body, hashlib.sha256)
    return "sha256=" + digest.hexdigest()


def _is_retriable(exc: BaseException) -> bool:
    return isinstance(exc, SinkError) and exc.retriable


def _multipart(outbound: Outbound) -> list[tuple[str, tuple[str, bytes, str]]]:
    """The request's parts: the record as JSON first, then the files in write order."""
    record = json.dumps(outbound.record, ensure_ascii=False).encode("utf-8")
    parts = [("record", ("record.json", record, "application/json"))]
    return parts + [("files", (f.name, f.data, f.media_type)) for f in outbound.files]


def _unreachable(name: str, exc: httpx.HTTPError) -> SinkError:
    """No answer at all (refused, reset, timed out): an outage, retried."""
    return SinkError(
        "http.unreachable",
        f"{name}: {type(exc).__name__}: {exc}",
        "REST連携先に接続できません。",
    )


def _answer_error(name: str, response: httpx.Response) -> SinkError | None:
    """What an answer means: None for 2xx; an outage for 408, 409, 425, 429 and 5xx
    (retried); a refusal for any other status (the delivery goes dead)."""
    status = response.status_code
    if 200 <= status < 300:
        return None
    retriable = status in RETRIABLE_STATUS or status >= 500
    return SinkError(
        "http.rejected" if not retriable else "http.unavailable",
        f"{name}: HTTP {status}: {response.text[:300]}",
        f"REST連携先がエラーを返しました(HTTP {status})。",
        disposition=Disposition.RETRIABLE if retriable else Disposition.FATAL,
        details={"status": status},
    )


class RestSink(Sink):
    """POSTs each delivery to ``url`` as signed multipart."""

    def __init__(
        self,
        *,
        name: str,
        url: str,
        hmac_secret: bytes,
        timeout: float = 30.0,
        attempts: int = 3,
        verify_tls: bool | str = True,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        if len(hmac_secret) < 16:
            raise ValueError("the HMAC secret must be at least 16 bytes")
        self.name = name
        self.url = url
        self.attempts = attempts
        self._secret = hmac_secret
        self._headers = dict(headers or {})
        self._timeout = timeout
        self._verify = verify_tls
        self._http: httpx.Client | None = None

    @property
    def _client(self) -> httpx.Client:
        if self._http is None:
            self._http = httpx.Client(
                timeout=self._timeout, verify=self._verify, follow_redirects=False, trust_env=False
            )
        return self._http

    def close(self) -> None:
        """Close the HTTP connections (the next push opens new ones)."""
        if self._http is not None:
            self._http.close()
            self._http = None

    def build_request(self, outbound: Outbound) -> httpx.Request:
        """The signed request for one delivery (its body already read, so it is what is sent)."""
        request = self._client.build_request(
            "POST",
            self.url,
            files=_multipart(outbound),
            headers={**self._headers, "Idempotency-Key": outbound.idempotency_key},
        )
        body = request.read()
        timestamp = str(int(time.time()))
        request.headers["X-Keiyaku-Timestamp"] = timestamp
        request.headers["X-Keiyaku-Signature"] = signature(self._secret, timestamp, body)
        return request

    def push(self, outbound: Outbound) -> None:
        """POST the delivery, retrying outages a bounded number of times (tenacity)."""
        for attempt in Retrying(
            stop=stop_after_attempt(max(1, self.attempts)),
            wait=wait_random_exponential(multiplier=0.5, max=5),
            retry=retry_if_exception(_is_retriable),
            reraise=True,
        ):
            with attempt:
                self._send(outbound)

    def _send(self, outbound: Outbound) -> None:
        request = self.build_request(outbound)  # signed afresh: a new timestamp per attempt
        try:
            response = self._client.send(request)
        except httpx.HTTPError as exc:  # refused, reset, timed out
            raise _unreachable(self.name, exc) from exc
        error = _answer_error(self.name, response)
        if error is not None:
            raise error


class RestSinkConfig(ConnectorConfig):
    """A REST sink's settings (``sinks.NAME`` with ``kind: rest``)."""

    kind: Literal["rest"]
    url: str
    hmac_secret: SecretStr
    timeout_seconds: float = Field(default=30, gt=0)
    attempts: int = Field(default=3, ge=1, le=10)
    ca_file: Path | None = None

    @model_validator(mode="after")
    def _check_rest(self) -> RestSinkConfig:
        if not self.url.startswith(("http://", "https://")):
            raise ValueError("url must start with http:// or https://")
        if len(self.hmac_secret.get_secret_value()) < 16:
            raise ValueError("hmac_secret must be at least 16 characters")
        return self

    def open(self, *, name: str, resolve: Resolve) -> RestSink:
        """The sink these settings describe."""
        return RestSink(
            name=name,
            url=self.url,
            hmac_secret=self.hmac_secret.get_secret_value().encode(),
            timeout=self.timeout_seconds,
            attempts=self.attempts,
            verify_tls=verify_tls(self.ca_file, resolve),
        )
