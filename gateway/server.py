"""Running the app with uvicorn: ``keiyaku serve``, and a server in a thread for tests and
benchmarks. Proxy headers are left to :mod:`gateway.deps` (trusted proxies only), and the
access log never shows a signing or download token."""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import uvicorn
from sqlalchemy.orm import Session, sessionmaker
from uvicorn.supervisors import Multiprocess

from core.errors import GatewayError
from core.storage import make_session_factory, migrate
from gateway.app import create_app, redact_path
from gateway.runtime import database_engine, open_gateway, settle_heap
from gateway.settings import Settings, load_settings


class RedactTokens(logging.Filter):
    """Replaces link tokens in uvicorn's access-log lines."""

    def filter(self, record: logging.LogRecord) -> bool:
        args = record.args
        if isinstance(args, tuple) and len(args) >= 3 and isinstance(args[2], str):
            record.args = (*args[:2], redact_path(args[2]), *args[3:])
        return True


def _uvicorn_config(app: Any, host: str, port: int, **extra: Any) -> uvicorn.Config:
    config = uvicorn.Config(
        app,
        host=host,
        port=port,
        proxy_headers=False,  # X-Forwarded-For is judged by gateway.deps, trusted proxies only
        server_header=False,
        **extra,
    )
    logging.getLogger("uvicorn.access").addFilter(RedactTokens())
    return config


def run_server(
    settings: Settings,
    *,
    host: str | None = None,
    port: int | None = None,
    fd: int | None = None,
    workers: int = 1,
    config_path: Path | None = None,
) -> None:
    """Serve until interrupted (``keiyaku serve``); several worker processes with ``workers``;
    on an inherited listening socket with ``fd``."""
    host = host or settings.server.host
    port = settings.server.port if port is None else port  # 0: any free port
    if workers > 1:
        if config_path is None:
            raise GatewayError(
                "server.workers", "workers need the config path", "設定ファイルを指定してください。"
            )
        if settings.logging.file is not None:
            # Each process would rotate the shared file on its own and delete the day another
            # process just rotated (TimedRotatingFileHandler is single-process only).
            raise GatewayError(
                "server.log_file_workers",
                "logging.file needs a single process: unset it (log to stderr) or use one worker",
                "logging.file は1プロセスでのみ使えます。",
            )
        with open_database(settings):
            pass  # migrate once here, not in every worker at the same time
        # uvicorn starts each worker process from an import string; the config path is the one
        # thing it hands them, through the environment.
        os.environ[_CONFIG_ENV] = str(config_path.resolve())
        logging.getLogger("uvicorn.access").addFilter(RedactTokens())
        config = uvicorn.Config(
            "gateway.server:worker_app",
            factory=True,
            host=host,
            port=port,
            workers=workers,
            proxy_headers=False,
            server_header=False,
        )
        # as uvicorn.run does for workers, but an inherited socket keeps its TCP identity
        sock = inherited_socket(fd) if fd is not None else config.bind_socket()
        with contextlib.suppress(KeyboardInterrupt):
            Multiprocess(config, sockets=[sock]).run()
        return
    gateway = open_gateway(settings)
    try:
        app = _served_app(gateway, settings)
        server = uvicorn.Server(_uvicorn_config(app, host, port, **_log_options(settings)))
        settle_heap()
        if fd is None:
            server.run()
        else:
            server.run(sockets=[inherited_socket(fd)])
    finally:
        gateway.close()


def inherited_socket(fd: int) -> socket.socket:
    """The listening socket open as ``fd`` (``keiyaku serve --fd``), as what it is.

    uvicorn's own ``fd`` option opens any descriptor as a Unix socket; asyncio then does not
    set ``TCP_NODELAY`` on the connections it accepts (it does so only for TCP sockets), and
    an answer written in two parts (headers, then body) waited for the client's delayed ACK:
    about 40 ms on every API call (``bench.api``, which serves this way)."""
    return socket.socket(fileno=fd)  # family, type and protocol read from the descriptor


def _log_options(settings: Settings) -> dict[str, Any]:
    """JSON log lines with request ids (gateway.ops_http), replacing uvicorn's own set-up; its
    access log is off then, as ``keiyaku.access`` logs every request with its id. Text lines on
    stderr are uvicorn's own; with ``logging.file`` either format goes to that file."""
    log_file = settings.logging.file
    if settings.server.log_format == "text" and log_file is None:
        return {}
    from gateway.ops_http import configure_logging

    mirror = None
    if log_file is not None and settings.logging.mirror_to_backup:
        # one folder per host: each node writes its own log (never a shared file)
        backups = settings.path(settings.backup.directory)
        mirror = backups / "logs" / socket.gethostname() / log_file.name
    configure_logging(
        level=settings.server.log_level,
        fmt=settings.server.log_format,
        file=settings.path(log_file) if log_file is not None else None,
        retention_days=settings.logging.retention_days,
        mirror=mirror,
    )
    return {"log_config": None, "access_log": False}


_CONFIG_ENV = "KEIYAKU_SERVE_CONFIG"


def worker_app() -> Any:
    """The app of one worker process of ``keiyaku serve --workers N``."""
    logging.getLogger("uvicorn.access").addFilter(RedactTokens())
    settings = load_settings(Path(os.environ[_CONFIG_ENV]))
    _log_options(settings)
    gateway = open_gateway(settings, migrate_schema=False)  # lives as long as the process
    app = _served_app(gateway, settings)
    settle_heap()
    return app


def _served_app(gateway: Any, settings: Settings) -> Any:
    """The app as ``keiyaku serve`` runs it: background workers as ``server.*`` says."""
    return create_app(
        gateway,
        run_jobs=settings.server.run_jobs,
        run_pushback=settings.server.run_pushback,
        run_signing=settings.server.run_signing,
    )


@contextmanager
def open_database(settings: Settings) -> Iterator[sessionmaker[Session]]:
    """Sessions on the configured database (migrated), for commands that need no signing key."""
    engine = database_engine(settings)
    try:
        migrate(engine)
        yield make_session_factory(engine)
    finally:
        engine.dispose()


def listening_socket(host: str = "127.0.0.1", port: int = 0) -> socket.socket:
    """A TCP socket bound to ``host:port`` (0: any free port) and listening.

    Handing the bound socket itself to the server (rather than a port number found free a moment
    earlier) leaves no window in which another process can take the port; connections made
    before the server accepts wait in the backlog.
    """
    # a TCP socket by its protocol too: asyncio sets TCP_NODELAY on the connections of a
    # listener it recognises as TCP (see :func:`inherited_socket`)
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(2048)
        sock.set_inheritable(True)
    except OSError:
        sock.close()
        raise
    return sock


@contextmanager
def serve_in_thread(
    app: Any,
    host: str = "127.0.0.1",
    port: int = 0,
    *,
    sock: socket.socket | None = None,
) -> Iterator[str]:
    """Serve ``app`` with uvicorn in a thread on ``sock`` (else a new listening socket on
    ``host:port``); yields its base URL; stops it and closes the socket afterwards."""
    sock = sock or listening_socket(host, port)
    host, port = sock.getsockname()[:2]
    server = uvicorn.Server(_uvicorn_config(app, host, port, log_level="warning"))
    thread = threading.Thread(
        target=server.run, kwargs={"sockets": [sock]}, name="uvicorn", daemon=True
    )
    thread.start()
    try:
        deadline = time.monotonic() + 60  # the lifespan start-up (migrations, jobs) included
        while not server.started:
            thread.join(0.01)  # returns at once when the server thread died
            if not thread.is_alive() or time.monotonic() > deadline:
                raise GatewayError(
                    "server.start_failed",
                    f"uvicorn did not start on {host}:{port}",
                    "サーバーを起動できませんでした。",
                )
        yield f"http://{host}:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=30)
        sock.close()
