"""The one place where errors become HTTP answers.

Every failure reaches :func:`handle_gateway_error` as a :class:`core.errors.GatewayError`: the
domain raises them, and request-validation errors and unknown routes are converted into one
first. The API answers with one JSON shape::

    {"error": {"code": "state.illegal_transition", "message": "...", "message_ja": "...",
               "disposition": "fatal", "details": {...}}}

The signing and download pages answer with a Japanese HTML page instead. The status code
depends on the error's code and class only (:func:`status_for`), as catalogued in
:mod:`core.error_codes`.
"""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, Response
from sqlalchemy.exc import SQLAlchemyError
from starlette.exceptions import HTTPException as StarletteHTTPException

from core.error_codes import (
    AUTH_INVALID_TOKEN,
    INTERNAL_UNEXPECTED,
    NOT_FOUND_ROUTE,
    REQUEST_HTTP_PREFIX,
    REQUEST_INVALID,
    REQUEST_METHOD_NOT_ALLOWED,
    REQUEST_TOO_DEEP,
    lookup,
)
from core.errors import (
    AuthError,
    BlobError,
    ConfigError,
    DocumentError,
    GatewayError,
    GuaranteeError,
    InfrastructureError,
    InputError,
    NotFoundError,
    RecordError,
    SigningError,
    StaffError,
    StateError,
    storage_error,
)
from core.storage import database_error

log = logging.getLogger(__name__)

_PAGE_PREFIXES = ("/sign", "/download", "/admin")


def status_for(exc: GatewayError) -> int:
    """The HTTP status of an error: the catalogue's (:mod:`core.error_codes`) for its code, 503
    rather than 500 when this one is retriable; by class for a code raised as a class it is not
    catalogued under (a refusal re-coded as a line error) or not catalogued at all."""
    entry = lookup(exc.code)
    if entry is None or not isinstance(exc, entry.raised_as):
        return _status_by_class(exc)
    if entry.status >= 500:
        return 503 if exc.retriable else 500
    return entry.status


def _status_by_class(exc: GatewayError) -> int:
    """The status an error's class gives its codes (refused input 422, ``state.*`` conflicts
    409; a :class:`StateError` not yet turned into an :class:`InputError` is refused input)."""
    if isinstance(exc, NotFoundError):
        return 404
    if isinstance(exc, AuthError):
        return 401
    if isinstance(exc, InputError):
        return 422
    if isinstance(exc, StateError):
        return 409 if exc.code.startswith("state.") else 422
    if isinstance(exc, DocumentError | RecordError | StaffError | GuaranteeError):
        return 422
    if isinstance(exc, InfrastructureError):
        return 503
    if isinstance(exc, SigningError | BlobError | ConfigError):
        return 503 if exc.retriable else 500
    if exc.code.startswith("request."):
        return 422
    return 503 if exc.retriable else 500


def error_body(exc: GatewayError) -> dict[str, Any]:
    """The JSON body of an API error."""
    return {"error": exc.as_dict()}


async def handle_gateway_error(request: Request, exc: Exception) -> Response:
    """Render any :class:`GatewayError` (the app's single domain-error handler)."""
    assert isinstance(exc, GatewayError)
    status = status_for(exc)
    if status >= 500:
        log.error("%s %s failed: %s", request.method, request.url.path, exc, exc_info=exc)
    headers = {"WWW-Authenticate": "Bearer"} if exc.code == AUTH_INVALID_TOKEN else {}
    if status == 503:
        # Retrying helps (an outage, a full disk being cleared): tell clients when.
        retry_after = exc.retry_after if isinstance(exc, InfrastructureError) else 30
        headers["Retry-After"] = str(retry_after)
    if request.url.path.startswith(_PAGE_PREFIXES):
        context = request.app.state.context
        template = context.templates.get_template("pages/error.html")
        html = template.render(
            buyer=context.gateway.runtime.buyer_name,
            contact=context.gateway.settings.buyer.contact,
            message=exc.message_ja,
            code=exc.code,
        )
        return HTMLResponse(html, status_code=status, headers=headers)
    return JSONResponse(error_body(exc), status_code=status, headers=headers)


def _validation_error(errors: list[Any]) -> GatewayError:
    problems = []
    for err in errors:
        where = ".".join(str(part) for part in err.get("loc", ()))
        problems.append({"field": where, "problem": str(err.get("msg", ""))})
    summary = "; ".join(f"{p['field']}: {p['problem']}" for p in problems[:5])
    return GatewayError(
        REQUEST_INVALID,
        f"the request is invalid: {summary}",
        "リクエストの内容に誤りがあります。",
        details={"problems": problems},
    )


async def handle_validation_error(request: Request, exc: Exception) -> Response:
    """Request validation failures, in the same shape."""
    assert isinstance(exc, RequestValidationError)
    return await handle_gateway_error(request, _validation_error(list(exc.errors())))


async def handle_http_error(request: Request, exc: Exception) -> Response:
    """Unknown routes and wrong methods, in the same shape."""
    assert isinstance(exc, StarletteHTTPException)
    headers = dict(exc.headers or {})
    if exc.status_code == 405:
        headers["Allow"] = _allowed_methods(request) or headers.get("Allow", "")
        error = GatewayError(
            REQUEST_METHOD_NOT_ALLOWED,
            f"{request.method} is not allowed here",
            "この操作は許可されていません。",
        )
    elif exc.status_code == 404:
        error = NotFoundError(
            NOT_FOUND_ROUTE, f"no route {request.url.path}", "ページが見つかりません。"
        )
    else:
        error = GatewayError(
            f"{REQUEST_HTTP_PREFIX}{exc.status_code}",
            str(exc.detail),
            "リクエストを処理できません。",
        )
    response = await handle_gateway_error(request, error)
    for name, value in headers.items():
        if value:
            response.headers.setdefault(name, value)
    return response


def _allowed_methods(request: Request) -> str:
    """Every method some route takes at this path (RFC 9110 15.5.6: a 405 lists them all;
    Starlette names only those of the first route that matched the path)."""
    methods: set[str] = set()
    pending = list(request.app.routes)
    while pending:
        route = pending.pop()
        regex = getattr(route, "path_regex", None)
        if regex is not None and getattr(route, "methods", None):
            if regex.match(request.url.path):
                methods |= set(route.methods)
            continue
        # An included router (FastAPI keeps it as one entry holding its routes).
        inner = getattr(route, "original_router", None) or getattr(route, "router", None)
        pending.extend(getattr(inner, "routes", None) or [])
    return ", ".join(sorted(methods))


async def handle_infrastructure_fault(request: Request, exc: Exception) -> Response:
    """A database or disk fault that escaped as a library exception: the coded 503 when it is
    one (database unavailable, lock or statement timeout, disk full or read-only), else the
    unexpected error it is (a 500 with the same JSON shape, logged with its traceback)."""
    infra = database_error(exc)
    if infra is None and isinstance(exc, OSError):
        infra = storage_error(exc, request.url.path)
    if infra is not None:
        log.warning("%s %s: %s", request.method, request.url.path, infra, exc_info=exc)
        return await handle_gateway_error(request, infra)
    log.error("%s %s raised", request.method, request.url.path, exc_info=exc)
    unexpected = GatewayError(
        INTERNAL_UNEXPECTED,
        f"unexpected {type(exc).__name__}",
        "システムで問題が発生しました。時間をおいて再度お試しください。",
    )
    return await handle_gateway_error(request, unexpected)


async def handle_too_deep(request: Request, exc: Exception) -> Response:
    """A body nested deeper than the parser's recursion limit (e.g. 100,000 ``[``): refused as
    the client's error, not a 500."""
    return await handle_gateway_error(
        request,
        GatewayError(
            REQUEST_TOO_DEEP,
            "the request body is nested too deeply",
            "リクエストの内容の入れ子が深すぎます。",
        ),
    )


def install_error_handlers(app: FastAPI) -> None:
    """Register the handlers on ``app``."""
    app.add_exception_handler(GatewayError, handle_gateway_error)
    app.add_exception_handler(RecursionError, handle_too_deep)
    app.add_exception_handler(SQLAlchemyError, handle_infrastructure_fault)
    app.add_exception_handler(OSError, handle_infrastructure_fault)
    # Anything else unexpected: the same JSON shape or Japanese page, never a bare text 500.
    app.add_exception_handler(Exception, handle_infrastructure_fault)
    app.add_exception_handler(RequestValidationError, handle_validation_error)
    app.add_exception_handler(StarletteHTTPException, handle_http_error)
