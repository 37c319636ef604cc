"""End-to-end fixtures: a real SMTP server (aiosmtpd), the gateway served by uvicorn on a free
loopback port with its mail worker running, and headless Chromium (Debian's) driven by
Playwright. One of each per module; each test gets a fresh browser context."""

from __future__ import annotations

import re
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from email.message import EmailMessage
from pathlib import Path

import httpx
import pytest
from playwright.sync_api import Browser, BrowserContext, Page, sync_playwright

from core.signing.devpki import DevPki
from gateway.app import create_app
from gateway.runtime import Gateway
from gateway.server import listening_socket, serve_in_thread
from tests.fixtures.gateway import new_token, open_test_gateway, write_config
from tests.fixtures.smtp import Inbox, smtp_server

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
LINK = re.compile(r"https?://[^\s/]+/(?:sign|download)/[A-Za-z0-9_-]+")


@dataclass
class Site:
    """The served gateway, its SMTP inbox, an API client and where screenshots go."""

    url: str
    gateway: Gateway
    inbox: Inbox
    api: httpx.Client
    config: Path
    shots: Path
    smtp_port: int
    counter: list[int] = field(default_factory=lambda: [0])

    def shot(self, page: Page, name: str) -> Path:
        """Save a full-page screenshot under the test's temporary folder."""
        self.counter[0] += 1
        path = self.shots / f"{self.counter[0]:02d}-{name}.png"
        page.screenshot(path=str(path), full_page=True)
        return path


def body_of(message: EmailMessage) -> str:
    """The text body of a mail."""
    part = message.get_body(preferencelist=("plain",))
    assert part is not None
    return str(part.get_content())


def link_in(message: EmailMessage) -> str:
    """The one link a mail carries."""
    links = LINK.findall(body_of(message))
    assert len(links) == 1, body_of(message)
    return str(links[0])


@contextmanager
def served_site(
    home: Path,
    devpki: DevPki,
    *,
    extra: str = "",
    client: str = "e-bid",
    run_pushback: bool = False,
) -> Iterator[Site]:
    """SMTP server, gateway (SQLite, SMTP transport, mail worker) and uvicorn in ``home``;
    ``extra`` is added to the config (e.g. ``intake:`` and ``sources:``), ``client`` names the
    API client whose token ``Site.api`` sends, and ``run_pushback`` runs the push-back worker
    in the server."""
    shots = home / "screenshots"
    shots.mkdir()
    sock = listening_socket()  # the port goes into the config; the socket to the server
    port = sock.getsockname()[1]
    with smtp_server() as (smtp_port, inbox):
        config = write_config(
            home,
            devpki,
            database_url=f"sqlite:///{home / 'keiyaku.db'}",
            public_url=f"http://127.0.0.1:{port}",
            mail=(
                "  sender: keiyaku@city.example.jp\n"
                "  transport: smtp\n"
                "  smtp:\n"
                "    host: 127.0.0.1\n"
                f"    port: {smtp_port}\n"
                "    starttls: false\n"
                "    attempts: 2\n"
                "  dispatch_interval_seconds: 0.2\n"
            ),
            extra=extra,
        )
        gateway = open_test_gateway(config)
        try:
            app = create_app(gateway, run_pushback=run_pushback)
            with serve_in_thread(app, sock=sock) as url:
                token = new_token(gateway, client)
                with httpx.Client(
                    base_url=url, headers={"Authorization": f"Bearer {token}"}, timeout=120
                ) as api:
                    yield Site(url, gateway, inbox, api, config, shots, smtp_port)
        finally:
            gateway.close()


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory, devpki: DevPki) -> Iterator[Site]:
    """SMTP server, gateway (SQLite, SMTP transport, mail worker) and uvicorn, for a module."""
    with served_site(tmp_path_factory.mktemp("e2e"), devpki) as served:
        yield served


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    """Headless Debian Chromium (never a downloaded browser)."""
    if shutil.which(CHROMIUM) is None:
        pytest.skip("Debian chromium is not installed (apt-get install chromium)")
    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(
            executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS
        )
        try:
            yield chromium
        finally:
            chromium.close()


@pytest.fixture
def context(browser: Browser) -> Iterator[BrowserContext]:
    """A fresh browser profile (own cookies) per test."""
    ctx = browser.new_context(locale="ja-JP", viewport={"width": 1280, "height": 900})
    try:
        yield ctx
    finally:
        ctx.close()


def wait_for_visible_images(page: Page) -> None:
    """Every page image in the window is rendered by the server and loaded (the others load
    lazily when scrolled to). A function, not an expression: the pages' CSP forbids eval."""
    page.wait_for_function(
        "() => Array.from(document.querySelectorAll('.doc:not([hidden]) img'))"
        ".filter(i => { const r = i.getBoundingClientRect();"
        " return r.bottom > 0 && r.top < window.innerHeight; })"
        ".every(i => i.complete && i.naturalWidth > 0)"
    )
