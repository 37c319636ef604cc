"""The per-deployment IP allow-list (``staff.allowed_networks``) for ``/admin`` and ``/api``.

The client address is resolved like everywhere else (``X-Forwarded-For`` believed only from
``server.trusted_proxies``), so a forged header does not get past it.
"""

from __future__ import annotations

import ipaddress

from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, JSONResponse, Response
from starlette.datastructures import URL, MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from core.errors import GatewayError
from gateway.deps import resolve_client_ip

_GUARDED = ("/admin", "/api/")
_ADMIN_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'self'; img-src 'self'; style-src 'self'; script-src 'self'; "
        "form-action 'self'; frame-ancestors 'none'; base-uri 'none'; object-src 'none'"
    ),
    "Referrer-Policy": "same-origin",
    "X-Frame-Options": "DENY",
    "Cache-Control": "no-store",
}


def _refused() -> GatewayError:
    return GatewayError(
        "request.ip_refused",
        "this address may not use the staff pages or the API",
        "このネットワークからは利用できません。",
    )


def install_allow_list(app: FastAPI, networks: list[str]) -> None:
    """Refuse requests to /admin and /api from outside ``networks`` (none given: allow all);
    also sets the staff pages' security headers."""
    app.add_middleware(
        StaffAllowList, allowed=[ipaddress.ip_network(n, strict=False) for n in networks]
    )


class StaffAllowList:
    """The middleware :func:`install_allow_list` adds: plain ASGI, as the other layers (see
    :class:`gateway.ops_http.RequestIds`)."""

    def __init__(
        self, app: ASGIApp, allowed: list[ipaddress.IPv4Network | ipaddress.IPv6Network]
    ) -> None:
        self.app = app
        self.allowed = allowed

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path = URL(scope=scope).path
        if self.allowed and path.startswith(_GUARDED):
            request = Request(scope)
            context = request.app.state.context
            peer = request.client.host if request.client else None
            ip = resolve_client_ip(
                peer, request.headers.getlist("x-forwarded-for"), context.trusted_proxies
            )
            try:
                address = ipaddress.ip_address(ip or "")
            except ValueError:
                address = None
            if address is None or not any(address in n for n in self.allowed):
                error = _refused()
                refusal: Response
                if path.startswith("/admin"):
                    html = context.templates.get_template("pages/error.html").render(
                        buyer=context.gateway.runtime.buyer_name,
                        message=error.message_ja,
                        code=error.code,
                    )
                    refusal = HTMLResponse(html, status_code=403)
                else:
                    refusal = JSONResponse({"error": error.as_dict()}, status_code=403)
                await refusal(scope, receive, send)
                return
        if not path.startswith("/admin"):
            await self.app(scope, receive, send)
            return

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = MutableHeaders(scope=message)
                for name, value in _ADMIN_HEADERS.items():
                    headers.setdefault(name, value)
            await send(message)

        await self.app(scope, receive, send_with_headers)
