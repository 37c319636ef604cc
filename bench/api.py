"""Envelope creation over the HTTP API against the same work called in-process.

    .venv/bin/python -m bench.api [--n 400] [--clients 8] [--stores sqlite,postgresql]
                                  [--pg postgresql+psycopg://postgres@127.0.0.1:5432/test]

For each store it starts ``keiyaku serve`` in its own process (uvicorn, one worker) on a free
loopback port and has ``--clients`` threads, each with its own keep-alive connection, create
``--n`` envelopes: one 1 MB PDF, an approver and a signer with access codes, as multipart
(the PDF as a file part) and as JSON (the PDF base64). It prints p50 and p99 latency and
creates/s, beside the same work called in-process (``gateway.api.envelopes`` create function:
access-code hashing, PDF inspection and preparation, encrypted blob storage, ownership row,
commit) first one at a time and then from ``--clients`` threads, and the ratios.

PostgreSQL runs in a scratch database created for the run and dropped afterwards. The machine
has two cores shared by the server, the load generator and whatever else runs: the figures are
noisy, so each run prints the machine's load average next to them.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import secrets
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
from sqlalchemy import create_engine, text

from core.devpki import create_dev_pki
from core.envelopes import DocumentInput
from gateway.api.envelopes import _create
from gateway.api.schemas import EnvelopeCreate
from gateway.app import build_context
from gateway.runtime import open_gateway
from gateway.server import listening_socket, open_database
from gateway.settings import load_settings
from tests.fixtures.gateway import SECRETS, write_config
from tests.fixtures.pdfs import make_pdf
from tests.fixtures.pki_plugin import DEV_PASSPHRASE

ROOT = Path(__file__).resolve().parents[1]


def _config(home: Path, database_url: str, port: int) -> Path:
    """The tests' development config (tests.fixtures.gateway), served on ``port``."""
    pki = create_dev_pki(home / "pki", passphrase=DEV_PASSPHRASE)
    return write_config(home, pki, database_url=database_url, public_url=f"http://127.0.0.1:{port}")


def _envelope(pdf_b64: str | None) -> dict[str, Any]:
    body: dict[str, Any] = {
        "title": "市道１号線舗装補修工事",
        "contract_type": "other",
        "parties": [
            {
                "role": "approver",
                "name": "契約 花子",
                "email": "kacho@city.example.jp",
                "access_code": "1111",
            },
            {
                "role": "signer",
                "name": "髙橋 一郎",
                "email": "ichiro@takahashi.example.co.jp",
                "company": "株式会社髙橋建設",
                "access_code": "2468",
            },
        ],
        "metadata": {"amount": 31389000, "counterparty": "株式会社髙橋建設"},
    }
    if pdf_b64 is not None:
        body["documents"] = [{"name": "工事請負契約書.pdf", "content_base64": pdf_b64}]
    return body


@dataclass
class Figures:
    """Latencies (ms) and throughput of one measured run."""

    label: str
    latencies: list[float]
    wall: float

    @property
    def p50(self) -> float:
        return statistics.median(self.latencies)

    @property
    def p99(self) -> float:
        ordered = sorted(self.latencies)
        return ordered[min(len(ordered) - 1, round(0.99 * (len(ordered) - 1)))]

    @property
    def rate(self) -> float:
        return len(self.latencies) / self.wall

    def line(self) -> str:
        return (
            f"  {self.label:<34} p50 {self.p50:7.1f} ms  p99 {self.p99:7.1f} ms  "
            f"{self.rate:7.1f} creates/s"
        )


def _run(
    label: str, n: int, clients: int, make_worker: Callable[[], Callable[[], None]]
) -> Figures:
    latencies: list[float] = []
    lock = threading.Lock()
    left = [n]

    def worker() -> None:
        call = make_worker()
        while True:
            with lock:
                if left[0] <= 0:
                    return
                left[0] -= 1
            start = time.perf_counter()
            call()
            elapsed = (time.perf_counter() - start) * 1000
            with lock:
                latencies.append(elapsed)

    threads = [threading.Thread(target=worker) for _ in range(clients)]
    start = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return Figures(label, latencies, time.perf_counter() - start)


def _http_worker(url: str, token: str, pdf: bytes, multipart: bool) -> Callable[[], None]:
    client = httpx.Client(base_url=url, headers={"Authorization": f"Bearer {token}"}, timeout=120)
    meta = json.dumps(_envelope(None), ensure_ascii=False)
    body = _envelope(base64.b64encode(pdf).decode())

    def call() -> None:
        if multipart:
            answer = client.post(
                "/api/v1/envelopes",
                data={"envelope": meta},
                files=[("documents", ("工事請負契約書.pdf", pdf, "application/pdf"))],
            )
        else:
            answer = client.post("/api/v1/envelopes", json=body)
        if answer.status_code != 201:
            raise RuntimeError(f"create failed: {answer.status_code} {answer.text[:300]}")

    return call


def bench_store(
    store: str, database_url: str, pdf: bytes, n: int, clients: int, workers: int
) -> list[Figures]:
    """Measure one store: HTTP (multipart, JSON) and in-process."""
    with tempfile.TemporaryDirectory(prefix=f"bench-api-{store}-") as tmp:
        home = Path(tmp)
        sock = listening_socket()  # handed to the server: no window for another process
        port = sock.getsockname()[1]
        config = _config(home, database_url, port)
        settings = load_settings(config, environ=SECRETS)
        with open_database(settings) as sessions, sessions() as session:
            from core.api_clients import create_api_client

            client_row, token = create_api_client(session=session, name="bench")
            session.commit()
            client_id = client_row.id
        server = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "gateway.cli",
                "--config",
                str(config),
                "serve",
                "--fd",
                str(sock.fileno()),
                "--workers",
                str(workers),
            ],
            cwd=ROOT,
            env={**os.environ, **SECRETS},
            pass_fds=(sock.fileno(),),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        url = f"http://127.0.0.1:{port}"
        figures: list[Figures] = []
        try:
            deadline = time.monotonic() + 60
            while True:
                try:
                    if httpx.get(f"{url}/healthz", timeout=2).status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                if time.monotonic() > deadline or server.poll() is not None:
                    raise RuntimeError("keiyaku serve did not start")
                time.sleep(0.1)
            for multipart in (True, False):
                kind = "multipart" if multipart else "JSON base64"
                _run("warm-up", 10, 2, lambda m=multipart: _http_worker(url, token, pdf, m))
                figures.append(
                    _run(
                        f"HTTP {kind}, {clients} clients",
                        n,
                        clients,
                        lambda m=multipart: _http_worker(url, token, pdf, m),
                    )
                )
        finally:
            server.terminate()
            server.wait(timeout=30)
            sock.close()

        # The same work without HTTP: the API's create function, straight.
        gateway = open_gateway(settings, migrate_schema=False)
        try:
            context = build_context(gateway, run_mailer=False)
            body = EnvelopeCreate.model_validate(_envelope(None))
            docs = [DocumentInput(name="工事請負契約書.pdf", data=pdf)]
            with gateway.sessions() as session:
                from core.model import ApiClient

                api_client = session.get(ApiClient, client_id)
                assert api_client is not None
                session.expunge(api_client)

            def in_process() -> Callable[[], None]:
                def call() -> None:
                    with gateway.sessions() as session:
                        _create(context, session, api_client, body, docs, None, "127.0.0.1")

                return call

            _run("warm-up", 10, 1, in_process)
            figures.append(_run("in-process, 1 thread", n // 2, 1, in_process))
            figures.append(_run(f"in-process, {clients} threads", n, clients, in_process))
        finally:
            gateway.close()
        return figures


def _scratch_postgres(admin_url: str) -> tuple[str, Callable[[], None]]:
    name = f"keiyaku_bench_{secrets.token_hex(4)}"
    admin = create_engine(admin_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))

    def drop() -> None:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()

    return admin_url.rsplit("/", 1)[0] + f"/{name}", drop


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark and print the figures."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=400, help="creates per measured run")
    parser.add_argument("--clients", type=int, default=8, help="concurrent clients")
    parser.add_argument("--stores", default="sqlite,postgresql")
    parser.add_argument("--workers", type=int, default=1, help="`keiyaku serve --workers`")
    parser.add_argument(
        "--pg",
        default=os.environ.get(
            "KEIYAKU_TEST_PG_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test"
        ),
        help="PostgreSQL admin URL (a scratch database is created next to it)",
    )
    args = parser.parse_args(argv)
    pdf = make_pdf(pages=2, size_target=1_000_000)
    print(f"envelope: one PDF of {len(pdf) / 1e6:.2f} MB, 2 parties with access codes")
    print(f"machine: {os.cpu_count()} cores, load average {os.getloadavg()[0]:.2f} at start")
    print(f"server: keiyaku serve --workers {args.workers}; {args.clients} clients, n={args.n}")
    targets = "targets: p50 <= 50 ms, >= 100 creates/s, HTTP <= 1.5x in-process"
    for store in args.stores.split(","):
        drop: Callable[[], None] | None = None
        with tempfile.TemporaryDirectory(prefix="bench-api-db-") as tmp:
            if store == "sqlite":
                url = f"sqlite:///{tmp}/keiyaku.db"
            else:
                url, drop = _scratch_postgres(args.pg)
            try:
                figures = bench_store(store, url, pdf, args.n, args.clients, args.workers)
            finally:
                if drop is not None:
                    drop()
        print(f"\n{store} ({targets})")
        for figure in figures:
            print(figure.line())
        http = figures[0]
        alone, threaded = figures[2], figures[3]
        print(
            f"  ratio HTTP multipart / in-process: p50 {http.p50 / threaded.p50:.2f}x "
            f"(vs 1 thread {http.p50 / alone.p50:.2f}x), "
            f"throughput {threaded.rate / http.rate:.2f}x"
        )
        print(f"  load average now {os.getloadavg()[0]:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
