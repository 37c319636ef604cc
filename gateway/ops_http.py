"""Operations over HTTP: ``/healthz`` with one status per dependency, ``/metrics`` in the
Prometheus text format, a request id on every request and JSON log lines that carry it.

Installed on the app by :func:`install_operations`. Anyone gets the bare liveness answer of
``/healthz`` (no paths, no hosts); its details and ``/metrics`` are for operations callers:
from ``server.operations_networks`` (loopback by default) or with ``server.operations_token``.
For them ``/healthz`` answers 200 with ``status:
ok`` when everything is reachable and ``degraded`` when only the TSA, SMTP or the backup folder
documents are copied to is not (signing and mail then wait and retry, the daily backup copies
what the mirror missed, the rest works); a database or blob-store failure is a 503 with the
same per-check body in ``details``. TSA and SMTP are probed with a TCP connect, at most every
``_PROBE_TTL`` seconds per process, so a load balancer polling often does not hammer them.

``/metrics``: the gauges are read from the shared database at scrape time (the same on every
node); the signing-latency histogram, the document-mirror failures and the collector's figures
(``python_gc_*``, ``keiyaku_gc_frozen_objects``) are this process's own (sum them across nodes
in queries).
"""

from __future__ import annotations

import contextvars
import datetime as dt
import gc
import hmac
import ipaddress
import json
import logging
import logging.handlers
import os
import re
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

from fastapi import FastAPI, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import Response
from prometheus_client import CollectorRegistry, GCCollector, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from pydantic import BaseModel, Field
from sqlalchemy import and_, func, or_, select, text
from starlette.datastructures import URL, Headers, MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from core.errors import AuthError, Disposition, GatewayError
from core.model import Delivery, Document, Envelope, JobRun, StagedBlob, SyncRun, utcnow
from core.records.archive import latest_check
from core.signing.worker import waiting_ages
from core.states import DeliveryState
from core.timezone import JST
from gateway.runtime import Gateway

__all__ = [
    "ComponentHealth",
    "HealthReport",
    "JsonFormatter",
    "JstDailyFileHandler",
    "Liveness",
    "configure_logging",
    "current_request_id",
    "install_operations",
]

log = logging.getLogger(__name__)
_PROBE_TTL = 15.0
# the age labels of keiyaku_signing_waiting: [low, high) in seconds
_AGE_BUCKETS = (
    ("lt_1m", 0.0, 60.0),
    ("1m_10m", 60.0, 600.0),
    ("10m_1h", 600.0, 3600.0),
    ("ge_1h", 3600.0, float("inf")),
)
_PROBE_TIMEOUT = 2.0
_REQUEST_ID = re.compile(r"^[A-Za-z0-9._-]{1,64}$")
_request_id: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "keiyaku_request_id", default=None
)


def current_request_id() -> str | None:
    """The id of the request being handled in this context, if any."""
    return _request_id.get()


# -- logs ----------------------------------------------------------------------------------


class RequestIdFilter(logging.Filter):
    """Puts the current request id on every record (``record.request_id``)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if not hasattr(record, "request_id"):
            record.request_id = _request_id.get()
        return True


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time (JST), level, logger, message, request id, extras."""

    _STANDARD = frozenset(
        vars(logging.LogRecord("x", 0, "x", 0, "x", None, None)).keys()
        | {"message", "asctime", "request_id", "color_message"}
    )

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": dt.datetime.fromtimestamp(record.created, JST).isoformat(
                timespec="milliseconds"
            ),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        request_id = getattr(record, "request_id", None) or _request_id.get()
        if request_id:
            entry["request_id"] = request_id
        for key, value in vars(record).items():
            if key not in self._STANDARD and not key.startswith("_"):
                entry[key] = value if isinstance(value, str | int | float | bool) else repr(value)
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, ensure_ascii=False)


class JstDailyFileHandler(logging.handlers.TimedRotatingFileHandler):
    """A log file rotated at midnight JST into ``FILE.YYYY-MM-DD`` (the JST day it holds),
    keeping ``retention_days`` rotated files, whatever the host's time zone.

    The standard handler rotates at the *host's* local midnight (``utc=False``), which is UTC in
    most containers. Japan has no daylight saving time, so midnight JST is always 15:00 UTC:
    rotate in UTC at 15:00 and name each file after the JST day it began (the UTC date + 1).
    """

    def __init__(self, filename: Path, retention_days: int) -> None:
        filename.parent.mkdir(parents=True, exist_ok=True)
        super().__init__(
            filename,
            when="midnight",
            backupCount=retention_days,
            encoding="utf-8",
            utc=True,
            atTime=dt.time(15, 0),  # 00:00 JST
        )
        self.namer = _jst_day_name


def _jst_day_name(default_name: str) -> str:
    # The standard name carries the UTC date of the rollover interval's start (15:00 UTC), the
    # day before the JST day the file holds.
    stem, _, day = default_name.rpartition(".")
    jst_day = dt.date.fromisoformat(day) + dt.timedelta(days=1)
    return f"{stem}.{jst_day.isoformat()}"


def configure_logging(
    *,
    level: str = "INFO",
    fmt: Literal["json", "text"] = "json",
    file: Path | None = None,
    retention_days: int = 365,
    mirror: Path | None = None,
) -> None:
    """Root logging for a server process: JSON lines (or plain text) with request ids, on stderr
    or, with ``file``, in a file rotated daily at midnight JST keeping ``retention_days`` days;
    with ``mirror`` too, every line also goes to that second file, rotated the same way (the
    backup folder's copy of the log)."""
    handlers: list[logging.Handler] = [
        logging.StreamHandler() if file is None else JstDailyFileHandler(file, retention_days)
    ]
    mirror_problem = None
    if file is not None and mirror is not None:
        try:
            handlers.append(JstDailyFileHandler(mirror, retention_days))
        except OSError as exc:  # the backup mount is away: log on, say so below
            mirror_problem = exc
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    for handler in handlers:
        handler.addFilter(RequestIdFilter())
        if fmt == "json":
            handler.setFormatter(JsonFormatter())
        else:
            handler.setFormatter(
                logging.Formatter("%(asctime)s %(levelname)s %(name)s [%(request_id)s] %(message)s")
            )
        root.addHandler(handler)
    root.setLevel(level)
    if mirror_problem is not None:
        log.warning("log lines are not copied to %s: %s", mirror, mirror_problem)
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
        logger = logging.getLogger(name)
        logger.handlers.clear()
        logger.propagate = True


# -- health --------------------------------------------------------------------------------


class ComponentHealth(BaseModel):
    status: Literal["ok", "down", "disabled"]
    detail: str | None = None


class Liveness(BaseModel):
    """What anyone (a load balancer) sees: the process answers and its database is reachable."""

    status: Literal["ok"]


class HealthReport(BaseModel):
    status: Literal["ok", "degraded"]
    database: Literal["ok"]
    checks: dict[str, ComponentHealth] = Field(default_factory=dict)


def _tcp(host: str, port: int) -> ComponentHealth:
    try:
        with socket.create_connection((host, port), timeout=_PROBE_TIMEOUT):
            return ComponentHealth(status="ok", detail=f"{host}:{port}")
    except OSError as exc:
        return ComponentHealth(status="down", detail=f"{host}:{port}: {type(exc).__name__}")


def _url_endpoint(url: str) -> tuple[str, int]:
    parts = urlsplit(url)
    default = 443 if parts.scheme == "https" else 80
    return parts.hostname or "localhost", parts.port or default


def _writable(root: Path) -> ComponentHealth:
    """Whether a file can be written, read back and removed in ``root``."""
    probe = root / f".healthz-{os.getpid()}-{threading.get_ident()}"
    try:
        root.mkdir(parents=True, exist_ok=True)  # as the store makes it on first write
        probe.write_bytes(b"ok")
        ok = probe.read_bytes() == b"ok"
        probe.unlink()
    except OSError as exc:
        return ComponentHealth(status="down", detail=f"{root}: {type(exc).__name__}")
    return ComponentHealth(status="ok" if ok else "down", detail=str(root))


class _HealthProbe:
    """Checks each dependency; the remote ones (TSA, SMTP) are cached for ``_PROBE_TTL``."""

    def __init__(self, gateway: Gateway) -> None:
        self.gateway = gateway
        self._lock = threading.Lock()
        self._remote: dict[str, ComponentHealth] = {}
        self._remote_at = 0.0

    def database(self) -> ComponentHealth:
        try:
            with self.gateway.engine.connect() as conn:
                if conn.dialect.name == "postgresql":
                    # the probe itself must not hang where requests hang
                    conn.execute(text("SET LOCAL statement_timeout = 2000"))
                conn.execute(text("select 1"))
        except Exception as exc:  # any failure is the verdict
            return ComponentHealth(status="down", detail=type(exc).__name__)
        return ComponentHealth(status="ok")

    def lock_waits(self) -> ComponentHealth:
        """Statements of this database waiting on a lock for more than 10 s (PostgreSQL)."""
        with self.gateway.engine.connect() as conn:
            if conn.dialect.name != "postgresql":
                return ComponentHealth(status="disabled", detail="SQLite")
            conn.execute(text("SET LOCAL statement_timeout = 2000"))
            waiting = conn.execute(
                text(
                    "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
                    "AND wait_event_type = 'Lock' AND now() - query_start > interval '10 seconds'"
                )
            ).scalar_one()
        return ComponentHealth(
            status="down" if waiting else "ok",
            detail=f"{waiting} statement(s) waiting on a lock for more than 10 s",
        )

    def work(self) -> dict[str, ComponentHealth]:
        """Work that should not wait: approvals not signed beyond the alert threshold (a TSA or
        disk fault not cleared), and deliveries that went dead."""
        alert = self.gateway.settings.signing.worker.alert_after_seconds
        with self.gateway.sessions() as session:
            ages = waiting_ages(session=session)
            dead = session.scalar(
                select(func.count()).where(Delivery.state == DeliveryState.DEAD.value)
            )
        late = [a for a in ages if a > alert]
        signing = ComponentHealth(
            status="down" if late else "ok",
            detail=f"{len(ages)} waiting"
            + (
                f", {len(late)} for more than {alert} s (oldest {int(max(late))} s)" if late else ""
            ),
        )
        deliveries = ComponentHealth(
            status="down" if dead else "ok", detail=f"{dead or 0} dead deliveries"
        )
        return {
            "signing": signing,
            "deliveries": deliveries,
            "lock_waits": self.lock_waits(),
            "archive": self.archive(),
        }

    def archive(self) -> ComponentHealth:
        """The newest re-timestamping run: down while it raised an alert (the TSA certificate
        is near its end with no newer one, so renewals cannot extend validity)."""
        with self.gateway.sessions() as session:
            check = latest_check(session=session)
        if check is None:
            return ComponentHealth(status="ok", detail="no re-timestamping run yet")
        expires = check.tsa_expires_at.astimezone(JST).isoformat() if check.tsa_expires_at else "-"
        detail = (
            f"last run {check.checked_at.astimezone(JST).isoformat()}: {check.renewed} renewed, "
            f"{check.nothing_to_extend} nothing to extend, {check.failed} failed; "
            f"TSA certificate chain expires {expires}"
        )
        if check.alert:
            return ComponentHealth(status="down", detail=f"{detail}; ALERT: {check.alert}")
        return ComponentHealth(status="ok", detail=detail)

    def blobs(self) -> ComponentHealth:
        return _writable(self.gateway.runtime.blobs.root)

    def document_mirror(self) -> ComponentHealth:
        """The backup folder each document is copied to as it is stored; down does not stop
        signing (the daily backup copies what it missed), so it only degrades the report."""
        store = self.gateway.runtime.blobs
        if store.mirror is None:
            return ComponentHealth(status="disabled", detail="backup.mirror_documents is off")
        health = _writable(store.mirror)
        if store.mirror_failures:
            failed = f"{store.mirror_failures} copies failed in this process"
            return ComponentHealth(status=health.status, detail=f"{health.detail}; {failed}")
        return health

    def _probe_remote(self) -> dict[str, ComponentHealth]:
        settings = self.gateway.settings
        checks: dict[str, ComponentHealth] = {}
        tsa = settings.signing.tsa
        if tsa.urls:
            from core.signing import probe_tsa

            answers = probe_tsa(tsa.urls, timeout=_PROBE_TIMEOUT)
            up = [url for url, problem in answers.items() if problem is None]
            problems = "; ".join(f"{p}" for p in answers.values() if p is not None)
            checks["tsa"] = ComponentHealth(
                status="ok" if up else "down",
                detail=f"{len(up)}/{len(answers)} answered with a valid token"
                + (f" ({problems})" if problems else ""),
            )
        else:
            checks["tsa"] = ComponentHealth(status="ok", detail="development TSA (in-process)")
        mail = settings.mail
        if mail.transport == "smtp":
            checks["smtp"] = _tcp(mail.smtp.host, mail.smtp.port)
        else:
            checks["smtp"] = ComponentHealth(status="disabled", detail="maildir transport")
        return checks

    def remote(self) -> dict[str, ComponentHealth]:
        with self._lock:
            if time.monotonic() - self._remote_at > _PROBE_TTL or not self._remote:
                self._remote = self._probe_remote()
                self._remote_at = time.monotonic()
            return dict(self._remote)

    def report(self) -> HealthReport:
        checks = {
            "database": self.database(),
            "blobs": self.blobs(),
            "document_mirror": self.document_mirror(),
            **self.remote(),
        }
        if checks["database"].status == "ok":
            checks.update(self.work())
        local_down = [n for n in ("database", "blobs") if checks[n].status != "ok"]
        if local_down:
            raise GatewayError(
                f"health.{local_down[0]}",
                f"{', '.join(local_down)} unavailable",
                "データベースまたは文書保管領域を利用できません。",
                disposition=Disposition.RETRIABLE,
                details={"checks": {k: v.model_dump() for k, v in checks.items()}},
            )
        degraded = any(c.status == "down" for c in checks.values())
        return HealthReport(status="degraded" if degraded else "ok", database="ok", checks=checks)


# -- metrics -------------------------------------------------------------------------------


class _DatabaseCollector(Collector):
    """Gauges read from the shared database at each scrape."""

    def __init__(self, gateway: Gateway, margin: dt.timedelta) -> None:
        self.gateway = gateway
        self.margin = margin

    def collect(self) -> Iterator[Metric]:
        now = utcnow()
        envelopes = GaugeMetricFamily("keiyaku_envelopes", "Envelopes by state.", labels=["state"])
        deliveries = GaugeMetricFamily(
            "keiyaku_deliveries",
            "Outbox deliveries by target and state.",
            labels=["target", "state"],
        )
        due = GaugeMetricFamily(
            "keiyaku_deliveries_due",
            "Deliveries due now (incl. expired leases).",
            labels=["target"],
        )
        sync_records = CounterMetricFamily(
            "keiyaku_sync_records", "Records read by syncs, per source.", labels=["source"]
        )
        sync_errors = CounterMetricFamily(
            "keiyaku_sync_errors", "Line errors of syncs, per source.", labels=["source"]
        )
        sync_failed = CounterMetricFamily(
            "keiyaku_sync_failed_runs", "Sync runs that failed, per source.", labels=["source"]
        )
        expiring = GaugeMetricFamily(
            "keiyaku_documents_timestamp_expiring",
            "Completed documents whose newest timestamp expires within the renewal margin.",
        )
        last_job = GaugeMetricFamily(
            "keiyaku_job_last_success_timestamp_seconds",
            "When each scheduled job last succeeded (Unix time).",
            labels=["job"],
        )
        with self.gateway.sessions() as session:
            for state, count in session.execute(
                select(Envelope.state, func.count()).group_by(Envelope.state)
            ):
                envelopes.add_metric([str(getattr(state, "value", state))], count)
            for target, delivery_state, count in session.execute(
                select(Delivery.target, Delivery.state, func.count()).group_by(
                    Delivery.target, Delivery.state
                )
            ):
                deliveries.add_metric(
                    [target, str(getattr(delivery_state, "value", delivery_state))], count
                )
            due_rows = session.execute(
                select(Delivery.target, func.count())
                .where(
                    or_(
                        and_(
                            Delivery.state == DeliveryState.PENDING.value,
                            Delivery.next_attempt_at <= now,
                        ),
                        and_(
                            Delivery.state == DeliveryState.LEASED.value,
                            Delivery.lease_expires_at < now,
                        ),
                    )
                )
                .group_by(Delivery.target)
            )
            for target, count in due_rows:
                due.add_metric([target], count)
            for source, records, errors, failed in session.execute(
                select(
                    SyncRun.source,
                    func.coalesce(func.sum(SyncRun.records), 0),
                    func.coalesce(func.sum(SyncRun.errors), 0),
                    func.count().filter(SyncRun.status == "failed"),
                ).group_by(SyncRun.source)
            ):
                sync_records.add_metric([source], int(records))
                sync_errors.add_metric([source], int(errors))
                sync_failed.add_metric([source], int(failed))
            expiring.add_metric(
                [],
                session.scalar(
                    select(func.count())
                    .select_from(Document)
                    .where(Document.timestamp_expires_at <= now + self.margin)
                )
                or 0,
            )
            for job_id, finished in session.execute(
                select(JobRun.job_id, func.max(JobRun.finished_at))
                .where(JobRun.status == "succeeded")
                .group_by(JobRun.job_id)
            ):
                if finished is not None:
                    if finished.tzinfo is None:
                        finished = finished.replace(tzinfo=dt.UTC)
                    last_job.add_metric([job_id], finished.timestamp())
            ages = waiting_ages(session=session, now=now)
            check = latest_check(session=session)
            staged_count, staged_since = session.execute(
                select(func.count(), func.min(StagedBlob.created_at))
            ).one()
        tsa_expiry = GaugeMetricFamily(
            "keiyaku_tsa_certificate_expiry_timestamp_seconds",
            "When the chain of a timestamp made now expires, as seen by the last "
            "re-timestamping run (Unix time).",
        )
        nothing = GaugeMetricFamily(
            "keiyaku_archive_nothing_to_extend",
            "Due documents the last re-timestamping run left alone: a renewal would not "
            "have extended their validity.",
        )
        archive_alert = GaugeMetricFamily(
            "keiyaku_archive_alert",
            "1 while the last re-timestamping run raised an alert (TSA certificate near its end).",
        )
        if check is not None:
            if check.tsa_expires_at is not None:
                tsa_expiry.add_metric([], check.tsa_expires_at.timestamp())
            nothing.add_metric([], check.nothing_to_extend)
            archive_alert.add_metric([], 1 if check.alert else 0)
        signing = GaugeMetricFamily(
            "keiyaku_signing_waiting",
            "Committed approvals and seals not applied yet, by how long they have waited.",
            labels=["age"],
        )
        for label, low, high in _AGE_BUCKETS:
            signing.add_metric([label], sum(1 for a in ages if low <= a < high))
        oldest = GaugeMetricFamily(
            "keiyaku_signing_oldest_waiting_seconds",
            "Seconds the oldest approval or seal not applied yet has waited (0: none).",
        )
        oldest.add_metric([], max(ages, default=0.0))
        staged = GaugeMetricFamily(
            "keiyaku_staged_blobs",
            "Signature blobs held in the database until the signing worker writes them durably "
            "into the document store (growing: the store is full or read-only).",
        )
        staged.add_metric([], staged_count or 0)
        staged_oldest = GaugeMetricFamily(
            "keiyaku_staged_blob_oldest_seconds",
            "Seconds the oldest staged signature blob has waited for the store (0: none).",
        )
        if staged_since is not None and staged_since.tzinfo is None:
            staged_since = staged_since.replace(tzinfo=dt.UTC)
        staged_oldest.add_metric(
            [], (now - staged_since).total_seconds() if staged_since is not None else 0.0
        )
        yield from (
            staged,
            staged_oldest,
            tsa_expiry,
            nothing,
            archive_alert,
            signing,
            oldest,
            envelopes,
            deliveries,
            due,
            sync_records,
            sync_errors,
            sync_failed,
            expiring,
            last_job,
        )


class _MirrorCollector(Collector):
    """Documents this process failed to copy to the backup folder as it stored them."""

    def __init__(self, gateway: Gateway) -> None:
        self.blobs = gateway.runtime.blobs

    def collect(self) -> Iterator[Metric]:
        if self.blobs.mirror is None:
            return
        failures = CounterMetricFamily(
            "keiyaku_document_mirror_failures",
            "Documents not copied to the backup folder when stored (left to the daily backup).",
        )
        failures.add_metric([], self.blobs.mirror_failures)
        yield failures


class _HeapCollector(Collector):
    """This process's frozen objects (``gateway.runtime.settle_heap``): what a full collection
    no longer walks. prometheus_client's own GCCollector, registered beside it, counts the
    collections per generation."""

    def collect(self) -> Iterator[Metric]:
        frozen = GaugeMetricFamily(
            "keiyaku_gc_frozen_objects",
            "Objects frozen after start-up, out of the cycle collector's full passes; "
            "this process.",
        )
        frozen.add_metric([], gc.get_freeze_count())
        yield frozen


class _RenderCollector(Collector):
    """Page-rendering jobs stopped for overrunning their budget (hostile or huge documents)."""

    def __init__(self, gateway: Gateway) -> None:
        self.pool = gateway.runtime.renderer

    def collect(self) -> Iterator[Metric]:
        if self.pool is None:
            return
        killed = CounterMetricFamily(
            "keiyaku_render_overruns",
            "Page-rendering jobs stopped for overrunning their time or memory budget, this "
            "process (uploads refused as document.too_complex included).",
        )
        killed.add_metric([], self.pool.killed)
        yield killed


def _metrics_registry(gateway: Gateway) -> CollectorRegistry:
    registry = CollectorRegistry(auto_describe=False)
    margin = dt.timedelta(days=gateway.settings.archive.renew_margin_days)
    registry.register(_DatabaseCollector(gateway, margin))
    registry.register(_MirrorCollector(gateway))
    registry.register(_RenderCollector(gateway))
    registry.register(_HeapCollector())
    GCCollector(registry=registry)
    latency = Histogram(
        "keiyaku_signing_seconds",
        "Signing engine latency per operation (approval, seal, archive_timestamp, certificate), "
        "this process.",
        labelnames=["operation"],
        buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
        registry=registry,
    )
    engine = gateway.runtime.signing
    previous = engine.timing_observer

    def observe(operation: str, seconds: float) -> None:
        latency.labels(operation).observe(seconds)
        if previous is not None:
            previous(operation, seconds)

    engine.timing_observer = observe
    return registry


# -- installation --------------------------------------------------------------------------


class RequestIds:
    """Gives each request an id (a well-formed ``X-Request-ID`` it came with, else a new one),
    visible to every log line made while it runs and sent back in ``X-Request-ID``, and logs
    one ``keiyaku.access`` line per request with its status and duration.

    A plain ASGI middleware: Starlette's ``@app.middleware("http")`` runs the rest of the app in
    a task of its own and copies the response through memory streams, a fixed cost on every
    request (part of an API create's overhead over the in-process create)."""

    def __init__(self, app: ASGIApp, access: logging.Logger) -> None:
        self.app = app
        self.access = access

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        given = Headers(scope=scope).get("x-request-id", "")
        rid = given if _REQUEST_ID.match(given) else uuid.uuid4().hex
        token = _request_id.set(rid)
        started = time.perf_counter()
        status = 500

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                MutableHeaders(scope=message)["X-Request-ID"] = rid
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        finally:
            from gateway.app import redact_path

            method = scope["method"]
            path = redact_path(URL(scope=scope).path)
            self.access.info(
                "%s %s %d",
                method,
                path,
                status,
                extra={
                    "method": method,
                    "path": path,
                    "status": status,
                    "duration_ms": round((time.perf_counter() - started) * 1000, 1),
                },
            )
            _request_id.reset(token)


def install_operations(app: FastAPI, gateway: Gateway) -> None:
    """Add the request-id middleware, ``/healthz`` and ``/metrics`` to ``app``."""
    probe = _HealthProbe(gateway)
    registry = _metrics_registry(gateway)

    app.add_middleware(RequestIds, access=logging.getLogger("keiyaku.access"))

    settings = gateway.settings.server
    networks = [ipaddress.ip_network(n, strict=False) for n in settings.operations_networks]
    proxies = [ipaddress.ip_network(p, strict=False) for p in settings.trusted_proxies]
    secret = settings.operations_token

    def may_see_details(request: Request) -> bool:
        """A caller from ``server.operations_networks`` or holding ``server.operations_token``."""
        from gateway.deps import resolve_client_ip

        scheme, _, given = request.headers.get("authorization", "").partition(" ")
        if secret is not None and scheme.lower() == "bearer":
            expected = secret.get_secret_value().encode()
            if hmac.compare_digest(given.strip().encode(), expected):
                return True
        peer = request.client.host if request.client else None
        client = resolve_client_ip(peer, request.headers.getlist("x-forwarded-for"), proxies)
        try:
            address = ipaddress.ip_address(client or "")
        except ValueError:
            return False
        return any(address in network for network in networks)

    @app.get(
        "/healthz",
        response_model=HealthReport | Liveness,
        tags=["health"],
        responses={503: {"description": "The database or the blob store is unavailable"}},
    )
    def healthz(request: Request) -> HealthReport | Liveness:
        """Liveness for anyone (``{"status": "ok"}``, 503 when the database or the blob store
        is down); each dependency's status (database, blob store, document mirror, TSA, SMTP)
        only for operations callers (``server.operations_networks`` or the operations token)."""
        if may_see_details(request):
            return probe.report()
        if probe.database().status != "ok" or probe.blobs().status != "ok":
            raise GatewayError(
                "health.unavailable",
                "the gateway cannot serve requests",
                "現在サービスを利用できません。",
                disposition=Disposition.RETRIABLE,
            )
        return Liveness(status="ok")

    @app.get("/metrics", tags=["health"], include_in_schema=False)
    async def metrics(request: Request) -> Response:
        """Prometheus text format (operations callers only)."""
        if not may_see_details(request):
            raise AuthError(
                "auth.operations_only",
                "metrics need the operations token or an operations network",
                "この情報は運用担当者のみ参照できます。",
            )
        body = await run_in_threadpool(generate_latest, registry)
        return Response(body, media_type="text/plain; version=0.0.4; charset=utf-8")
