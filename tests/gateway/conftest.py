"""Fixtures for HTTP tests: a gateway on the test database, served by uvicorn on loopback."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from sqlalchemy import Engine

from core.signing.devpki import DevPki
from gateway.app import create_app
from gateway.runtime import Gateway
from gateway.server import serve_in_thread
from tests.fixtures.gateway import new_token, open_test_gateway, write_config


@dataclass
class LiveGateway:
    """A served gateway and a client for it."""

    gateway: Gateway
    url: str
    config: Path

    def client(self, token: str | None = None) -> httpx.Client:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        return httpx.Client(base_url=self.url, headers=headers, timeout=60)

    def token(self, name: str, scopes: list[str] | None = None) -> str:
        return new_token(self.gateway, name, scopes)


@pytest.fixture
def live_gateway(
    tmp_path: Path, devpki: DevPki, db_engine: Engine
) -> Iterator[Callable[..., LiveGateway]]:
    """Start gateways (SQLite and PostgreSQL through ``db_engine``); all stopped at the end."""
    started: list[tuple[Gateway, object]] = []

    def start(**config: str) -> LiveGateway:
        config_path = write_config(
            tmp_path,
            devpki,
            database_url=db_engine.url.render_as_string(hide_password=False),
            **config,
        )
        gateway = open_test_gateway(config_path)
        app = create_app(gateway, run_mailer=False)
        server = serve_in_thread(app)
        url = server.__enter__()
        started.append((gateway, server))
        return LiveGateway(gateway, url, config_path)

    try:
        yield start
    finally:
        for gateway, server in reversed(started):
            server.__exit__(None, None, None)  # type: ignore[attr-defined]
            gateway.close()
