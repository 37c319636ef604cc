"""The HTTP app: the envelope API (``/api/v1``), the signing pages (``/sign``), the completion
download (``/download``), ``/healthz`` and ``/openapi.json``; served by ``keiyaku serve``."""

from __future__ import annotations

import datetime as dt
import ipaddress
import logging
import re
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from fastapi import FastAPI
from fastapi.concurrency import run_in_threadpool
from fastapi.openapi.utils import get_openapi
from fastapi.staticfiles import StaticFiles
from starlette.datastructures import URL, MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from core.envelopes.notify import AttachmentLimits
from core.errors import ConfigError
from gateway.admin import install_allow_list
from gateway.admin import router as admin_router
from gateway.admin.operations import router as operations_router
from gateway.api.awards import router as awards_router
from gateway.api.consents import router as consents_router
from gateway.api.envelopes import router as api_router
from gateway.api.guarantees import router as guarantees_api_router
from gateway.api.schemas import EnvelopeCreate
from gateway.api.staff import router as staff_api_router
from gateway.background import SigningWorker
from gateway.body_limit import BodyLimit, route_limits
from gateway.context import AppContext, page_templates
from gateway.errors import handle_gateway_error, install_error_handlers
from gateway.mailer import MailDispatcher, MailHandler, MailRenderer, build_transport
from gateway.ops_http import install_operations
from gateway.pages.cookies import CookieSigner
from gateway.pages.guarantees import install as install_guarantee_pages
from gateway.pages.guarantees import router as guarantee_pages_router
from gateway.pages.render import PageRenderer
from gateway.pages.signing import router as pages_router
from gateway.runtime import Gateway, access_code_policy

log = logging.getLogger(__name__)

STATIC = Path(__file__).parent / "static"

_PAGE_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'self'; img-src 'self'; style-src 'self'; script-src 'self'; "
        "form-action 'self'; frame-ancestors 'none'; base-uri 'none'; object-src 'none'"
    ),
    # Signing links carry their token in the path: never send it on as a referrer.
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
}


def _session_key(gateway: Gateway) -> bytes:
    key = gateway.settings.server.session_key
    problem = "server.session_key is required to serve (64 hex characters, ${KEIYAKU_SESSION_KEY})"
    if key is None:
        raise ConfigError("config.session_key", problem, "server.session_key を設定してください。")
    try:
        raw = bytes.fromhex(key.get_secret_value().strip())
    except ValueError as exc:
        raise ConfigError(
            "config.session_key", problem, "server.session_key は16進数64文字です。"
        ) from exc
    if len(raw) < 32:
        raise ConfigError("config.session_key", problem, "server.session_key は16進数64文字です。")
    return raw


def build_mail_handler(gateway: Gateway) -> MailHandler:
    """The outbox handler for mail, from the gateway's settings."""
    settings = gateway.settings
    return MailHandler(
        sessions=gateway.sessions,
        runtime=gateway.runtime,
        renderer=MailRenderer(
            settings.path(settings.mail.templates_dir) if settings.mail.templates_dir else None
        ),
        transport=build_transport(settings),
        sender=settings.mail.sender,
        public_url=settings.server.public_url.rstrip("/"),
        link_valid=dt.timedelta(days=settings.pages.link_valid_days),
        download_valid=dt.timedelta(days=settings.mail.download_valid_days),
        attachment_limits=AttachmentLimits(),
        contact=settings.buyer.contact,
    )


def build_context(
    gateway: Gateway, *, run_mailer: bool = True, run_signing: bool = True
) -> AppContext:
    """Everything the app shares, checked once at start."""
    settings = gateway.settings
    public_url = settings.server.public_url
    if settings.environment == "production" and not public_url.startswith("https://"):
        raise ConfigError(
            "config.public_url",
            "server.public_url must be https in production (links carry secrets)",
            "本番環境では server.public_url を https にしてください。",
        )
    dispatcher = None
    if run_mailer:
        dispatcher = MailDispatcher(
            gateway.sessions,
            build_mail_handler(gateway),
            settings.mail.dispatch_interval_seconds,
            lease=dt.timedelta(seconds=settings.outbox.lease_seconds),
        )
    signer = None
    if run_signing:
        signer = SigningWorker(
            gateway.sessions,
            gateway.runtime,
            settings.signing.worker.interval_seconds,
            lease=dt.timedelta(seconds=settings.signing.worker.lease_seconds),
        )
    override = settings.path(settings.mail.templates_dir) if settings.mail.templates_dir else None
    return AppContext(
        gateway=gateway,
        policy=access_code_policy(settings),
        cookies=CookieSigner(_session_key(gateway)),
        templates=page_templates(override),
        pages=PageRenderer(dpi=settings.pages.page_dpi, pool=gateway.runtime.renderer),
        dispatcher=dispatcher,
        signer=signer,
        trusted_proxies=[
            ipaddress.ip_network(p, strict=False) for p in settings.server.trusted_proxies
        ],
        secure_cookies=public_url.startswith("https://"),
        session_seconds=settings.pages.session_minutes * 60,
    )


def _openapi(app: FastAPI) -> Callable[[], dict[str, Any]]:
    def build() -> dict[str, Any]:
        if app.openapi_schema:
            return app.openapi_schema
        schema = get_openapi(
            title=app.title, version=app.version, description=app.description, routes=app.routes
        )
        # The create body is read by hand (JSON or multipart), so its model is added here.
        create = EnvelopeCreate.model_json_schema(ref_template="#/components/schemas/{model}")
        components = schema.setdefault("components", {}).setdefault("schemas", {})
        components.update(create.pop("$defs", {}))
        components["EnvelopeCreate"] = create
        components["Error"] = _ERROR_SCHEMA
        components.pop("HTTPValidationError", None)
        components.pop("ValidationError", None)
        for path, operations in schema["paths"].items():
            for operation in operations.values():
                _document_errors(operation, api=path.startswith("/api/"))
        app.openapi_schema = schema
        return schema

    return build


_ERROR_SCHEMA: dict[str, Any] = {
    "type": "object",
    "description": "Every error answer (gateway.errors): a stable code and two messages",
    "required": ["error"],
    "properties": {
        "error": {
            "type": "object",
            "required": ["code", "message", "message_ja", "disposition"],
            "properties": {
                "code": {"type": "string", "examples": ["auth.invalid_token"]},
                "message": {"type": "string"},
                "message_ja": {"type": "string"},
                "disposition": {
                    "type": "string",
                    "enum": ["fatal", "retriable", "skippable_record"],
                },
                "details": {"type": "object"},
            },
        }
    },
}
_ERROR_CONTENT = {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}


def _document_errors(operation: dict[str, Any], *, api: bool) -> None:
    """Every answer an operation can give, in the error shape: 400 (a body the server cannot
    parse), 401 for the API (no, unknown or revoked token), 413 (a body over its limit), 422
    (invalid input)."""
    responses = operation.setdefault("responses", {})
    if api:
        responses.setdefault("401", {"description": "Missing, unknown or revoked API token"})
    responses.setdefault("400", {"description": "Malformed request (e.g. an unreadable body)"})
    if operation.get("parameters") or operation.get("requestBody"):
        responses.setdefault("422", {"description": "Invalid request"})
    if operation.get("requestBody"):
        # gateway.body_limit: counted as it arrives, refused at the route's limit
        responses.setdefault("413", {"description": "Request body over the limit"})
    for status, response in responses.items():
        if status.isdigit() and int(status) >= 400:
            response["content"] = _ERROR_CONTENT
            if status == "422":
                response["description"] = response.get("description") or "Invalid request"


_TOKEN_IN_PATH = re.compile(r"^/(sign|download)/[^/]+")


def redact_path(path: str) -> str:
    """A request path fit for logs: signing and download tokens replaced."""
    return _TOKEN_IN_PATH.sub(lambda m: f"/{m.group(1)}/<token>", path)


class SecurityHeaders:
    """``X-Content-Type-Options: nosniff`` on every answer; on the signing and download pages
    also their CSP, referrer and framing headers and ``no-store`` (each unless the route set it).
    A plain ASGI middleware (see :class:`gateway.ops_http.RequestIds`)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        page = URL(scope=scope).path.startswith(("/sign", "/download"))

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = MutableHeaders(scope=message)
                headers.setdefault("X-Content-Type-Options", "nosniff")
                if page:
                    for name, value in _PAGE_HEADERS.items():
                        headers.setdefault(name, value)
                    headers.setdefault("Cache-Control", "no-store")
            await send(message)

        await self.app(scope, receive, send_with_headers)


def create_app(
    gateway: Gateway,
    *,
    run_mailer: bool = True,
    run_jobs: bool = False,
    run_pushback: bool = False,
    run_signing: bool = True,
) -> FastAPI:
    """The app for one gateway; with ``run_mailer`` a thread sends the queued mail, with
    ``run_signing`` a thread applies committed approvals and seals (the signing worker), with
    ``run_jobs`` a background scheduler runs the configured jobs (once per tick cluster-wide),
    with ``run_pushback`` a thread pushes due deliveries to the configured sinks."""
    context = build_context(gateway, run_mailer=run_mailer, run_signing=run_signing)
    pushback = None
    if run_pushback and gateway.settings.sinks:
        from gateway.sinks import PushbackWorker

        pushback = PushbackWorker(gateway)
        context.pushback = pushback
        if context.signer is not None:
            context.signer.on_applied = context.wake_pushback
    scheduler: Any = None
    if run_jobs:
        from apscheduler.schedulers.background import BackgroundScheduler

        from gateway.scheduling import node_scheduler, timezone

        scheduler = node_scheduler(gateway, BackgroundScheduler(timezone=timezone(gateway)))

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        if context.dispatcher is not None:
            context.dispatcher.start()
        if context.signer is not None:
            context.signer.start()
        if scheduler is not None:
            scheduler.start()
        if pushback is not None:
            pushback.start()
        try:
            yield
        finally:
            if pushback is not None:
                await run_in_threadpool(pushback.stop)
            if scheduler is not None:
                # Let a running job finish: its tick is claimed, another node will not redo it.
                await run_in_threadpool(scheduler.shutdown, True)
            if context.signer is not None:
                await run_in_threadpool(context.signer.stop)
            if context.dispatcher is not None:
                await run_in_threadpool(context.dispatcher.stop)

    app = FastAPI(
        title="keiyaku-gateway",
        version="0.1.0",
        description="Envelope API of keiyaku-gateway: create, send, follow and download "
        "electronic contracts of a Japanese public buyer.",
        lifespan=lifespan,
        docs_url=None,
        redoc_url=None,
    )
    app.state.context = context
    install_guarantee_pages(context)
    install_error_handlers(app)
    app.include_router(api_router)
    app.include_router(guarantees_api_router)
    app.include_router(awards_router)
    app.include_router(consents_router)
    app.include_router(staff_api_router)
    app.include_router(pages_router)
    app.include_router(guarantee_pages_router)
    app.include_router(admin_router)
    app.include_router(operations_router)
    install_allow_list(app, gateway.settings.staff.allowed_networks)
    app.mount("/static", StaticFiles(directory=str(STATIC)), name="static")

    app.add_middleware(SecurityHeaders)

    # /healthz (database, blob store, TSA, SMTP), /metrics, request ids: gateway/ops_http.py
    install_operations(app, gateway)
    # Outermost: bodies are counted as they arrive, before any other layer reads them.
    app.add_middleware(
        BodyLimit,
        limit_for=route_limits(gateway.runtime.limits),
        answer=handle_gateway_error,
    )

    app.openapi = _openapi(app)  # type: ignore[method-assign]
    return app
