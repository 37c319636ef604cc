"""The per-deployment IP allow-list (``staff.allowed_networks``) for ``/admin`` and ``/api``.

The client address is resolved like everywhere else (``X-Forwarded-For`` believed only from
``server.trusted_proxies``), so a forged header does not get past it.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Awaitable, Callable

from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, JSONResponse, Response

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
    allowed = [ipaddress.ip_network(n, strict=False) for n in networks]

    @app.middleware("http")
    async def staff_allow_list(
        request: Request, call_next: Callable[[Request], Awaitable[Response]]
    ) -> Response:
        path = request.url.path
        if allowed and path.startswith(_GUARDED):
            context = request.app.state.context
            peer = request.client.host if request.client else None
            ip = resolve_client_ip(
                peer, request.headers.getlist("x-forwarded-for"), context.trusted_proxies
            )
            try:
                address = ipaddress.ip_address(ip or "")
            except ValueError:
                address = None
            if address is None or not any(address in n for n in allowed):
                error = _refused()
                if path.startswith("/admin"):
                    html = context.templates.get_template("pages/error.html").render(
                        buyer=context.gateway.runtime.buyer_name,
                        message=error.message_ja,
                        code=error.code,
                    )
                    return HTMLResponse(html, status_code=403)
                return JSONResponse({"error": error.as_dict()}, status_code=403)
        response = await call_next(request)
        if path.startswith("/admin"):
            for name, value in _ADMIN_HEADERS.items():
                response.headers.setdefault(name, value)
        return response
