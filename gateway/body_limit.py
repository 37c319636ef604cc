"""Request bodies are read against a size limit as they arrive, never whole first.

A pure ASGI middleware: a declared ``Content-Length`` over the route's limit is answered 413 at
once without reading anything; a body without one (chunked transfer) is counted chunk by chunk,
and the first byte over the limit stops the reading: the handler's read fails, whatever it
would have answered is replaced by the 413 (``request.too_large``, the API's error JSON or the
Japanese error page), and the server closes the connection instead of draining the rest.

The limits are per route (:func:`route_limits`): an award is one small record, an envelope
upload carries its PDFs (base64 in JSON is 4/3 of the bytes), everything else is a form.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from starlette.requests import Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from core.envelopes.guarantees import MAX_NOTICE_BYTES
from core.errors import GatewayError
from core.runtime import MB, Limits
from core.staff.accounts import MAX_IMPORT_BYTES

__all__ = ["AWARD_BODY_BYTES", "BodyLimit", "BodyTooLarge", "envelope_body_limit", "route_limits"]

#: At most this much of one pushed award (JSON or XML).
AWARD_BODY_BYTES = 1 * MB
#: Any other request: forms, small JSON.
DEFAULT_BODY_BYTES = 2 * MB
_FORM_OVERHEAD = 2 * MB


class BodyTooLarge(GatewayError):
    """The request body went over its route's limit while it was being read."""

    def __init__(self, limit: int) -> None:
        megabytes = max(1, limit // MB)
        super().__init__(
            "request.too_large",
            f"the request body is larger than {limit} bytes",
            f"リクエストが大きすぎます(上限 {megabytes}MB)。",
            details={"limit": limit},
        )


def envelope_body_limit(limits: Limits) -> int:
    """The most bytes one envelope upload may carry: its PDFs as base64 plus the form."""
    return limits.max_envelope_bytes * 4 // 3 + _FORM_OVERHEAD


_ROUTES: list[tuple[str, re.Pattern[str], Callable[[Limits], int]]] = [
    ("POST", re.compile(r"/api/v1/awards/[^/]+"), lambda _l: AWARD_BODY_BYTES),
    ("POST", re.compile(r"/api/v1/envelopes"), envelope_body_limit),
    ("POST", re.compile(r"/admin/envelopes/new(/.*)?"), envelope_body_limit),
    ("POST", re.compile(r"/api/v1/staff/import"), lambda _l: MAX_IMPORT_BYTES + _FORM_OVERHEAD),
    ("POST", re.compile(r"/admin/(staff|address-book)/import"), lambda _l: MAX_IMPORT_BYTES + _FORM_OVERHEAD),
    ("POST", re.compile(r"/(admin/envelopes|sign)/[^/]+/guarantees/notice"), lambda _l: MAX_NOTICE_BYTES + _FORM_OVERHEAD),
]  # fmt: skip


def route_limits(limits: Limits) -> Callable[[str, str], int]:
    """The body limit of each (method, path) under the gateway's size ``limits``."""
    table = [(method, pattern, limit(limits)) for method, pattern, limit in _ROUTES]

    def limit_for(method: str, path: str) -> int:
        for route_method, pattern, limit in table:
            if method == route_method and pattern.fullmatch(path):
                return limit
        return DEFAULT_BODY_BYTES

    return limit_for


@dataclass
class _Exchange:
    """One request's reading and answering state."""

    limit: int
    received: int = 0
    tripped: bool = False
    started: bool = False
    replaced: bool = False


class BodyLimit:
    """Refuses (413) a request whose body goes over its route's limit, reading no further."""

    def __init__(
        self,
        app: ASGIApp,
        limit_for: Callable[[str, str], int],
        answer: Callable[[Request, GatewayError], Any],
    ) -> None:
        self.app = app
        self.limit_for = limit_for
        self.answer = answer

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        state = _Exchange(self.limit_for(scope["method"], scope["path"]))
        declared = _content_length(scope)
        if declared is not None and declared > state.limit:
            await self._refuse(scope, receive, send, state.limit)
            return

        async def counted_receive() -> Message:
            if state.tripped:
                raise BodyTooLarge(state.limit)
            message = await receive()
            if message["type"] == "http.request":
                state.received += len(message.get("body", b""))
                if state.received > state.limit:
                    state.tripped = True
                    raise BodyTooLarge(state.limit)
            return message

        async def guarded_send(message: Message) -> None:
            if state.replaced:
                return  # the handler's own answer to a body cut short: dropped
            if message["type"] == "http.response.start":
                if state.tripped and not state.started:
                    # whatever the handler made of the failed read (a 400, a 500): the 413
                    state.replaced = True
                    await self._refuse(scope, receive, send, state.limit)
                    return
                state.started = True
            await send(message)

        try:
            await self.app(scope, counted_receive, guarded_send)
        except Exception:
            # The failed read surfaces as the handler's error, or wrapped by a layer between
            # (an exception group): once the limit tripped, the answer is the 413 whatever it is.
            if not state.tripped or state.started:
                raise
            if not state.replaced:
                await self._refuse(scope, receive, send, state.limit)

    async def _refuse(self, scope: Scope, receive: Receive, send: Send, limit: int) -> None:
        response = await self.answer(Request(scope), BodyTooLarge(limit))
        # The rest of the body is never read: the server closes the connection after this.
        response.headers["Connection"] = "close"
        await response(scope, receive, send)


def _content_length(scope: Scope) -> int | None:
    for name, value in scope.get("headers", ()):
        if name == b"content-length":
            text = value.decode("latin-1").strip()
            return int(text) if text.isdigit() else None
    return None
