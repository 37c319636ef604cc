"""Envelope creation over the HTTP API against the same work called in-process, interleaved.

    .venv/bin/python -m bench.api [--rounds 3] [--n 40] [--clients 8] [--pdf-kb 1000]
                                  [--stores sqlite,postgresql] [--workers 1] [--json]

For each store ``keiyaku serve`` runs in its own process (uvicorn, ``--workers``) on a
loopback socket it inherits, with the production defaults (backup mirror on). Three stacks
create envelopes (one PDF of ``--pdf-kb``, an approver and a signer with access codes):

- ``http-multipart``: ``--clients`` threads, each with its own keep-alive connection, POST
  the envelope as multipart (the PDF as a file part);
- ``http-json``: the same with the PDF in the JSON body as base64;
- ``in-process``: the API's own create function (``gateway.api.envelopes._create``: access-code
  hashing, PDF inspection and preparation, encrypted blob storage with its mirror copy,
  ownership row, commit) from ``--clients`` threads of this process, on the same database and
  blob store, without HTTP (the server idle meanwhile): the floor the HTTP layer adds to.

Every round runs each stack for ``--n`` creates, in an order rotated round by round, so the
machine's load swings (2 shared cores) reach every stack alike. Verified after the timed part,
for every envelope created: the stored upload (the document's first revision, decrypted) has
the SHA-256 of the PDF sent, its copy is in the backup mirror, the newest revision is a PDF
and both parties are there with an access code. Printed: p50/p95 latency and creates/s (the
median of the rounds) per stack, HTTP over in-process, the server's peak RSS, and the load.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx

from bench.harness import emit, machine, ratio, scratch_postgres

ROOT = Path(__file__).resolve().parents[1]
TARGETS = {"creates_per_s": 100.0, "p50_ms": 50.0}
DOC_NAME = "工事請負契約書.pdf"


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
        body["documents"] = [{"name": DOC_NAME, "content_base64": pdf_b64}]
    return body


class Stack:
    """One way of creating envelopes; ``make_call`` gives each client thread its own caller,
    which returns the new envelope's id."""

    def __init__(self, name: str, make_call: Callable[[], Callable[[], str]]) -> None:
        self.name = name
        self.make_call = make_call
        self.latencies: list[float] = []
        self.rates: list[float] = []
        self.ids: list[str] = []

    def batch(self, n: int, clients: int, *, timed: bool = True) -> None:
        """``n`` creates from ``clients`` threads at once; the round's rate is n / wall time."""
        lock = threading.Lock()
        left = [n]
        latencies: list[float] = []
        ids: list[str] = []
        errors: list[BaseException] = []

        def client() -> None:
            call = self.make_call()
            while True:
                with lock:
                    if left[0] <= 0 or errors:
                        return
                    left[0] -= 1
                start = time.perf_counter()
                try:
                    envelope_id = call()
                except BaseException as exc:  # reported once every thread stopped
                    with lock:
                        errors.append(exc)
                    return
                elapsed = time.perf_counter() - start
                with lock:
                    latencies.append(elapsed)
                    ids.append(envelope_id)

        threads = [threading.Thread(target=client) for _ in range(clients)]
        start = time.perf_counter()
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        wall = time.perf_counter() - start
        if errors:
            raise RuntimeError(f"{self.name}: {errors[0]!r}") from errors[0]
        self.ids.extend(ids)
        if timed:
            self.latencies.extend(latencies)
            self.rates.append(n / wall)

    def figures(self) -> dict[str, Any]:
        ms = sorted(x * 1000 for x in self.latencies)
        return {
            "n": len(ms),
            "p50_ms": round(statistics.median(ms), 2),
            "p95_ms": round(ms[min(len(ms) - 1, round(0.95 * (len(ms) - 1)))], 2),
            "creates_per_s": round(statistics.median(self.rates), 2),
            "rounds": len(self.rates),
        }


def _http_stack(url: str, token: str, pdf: bytes, multipart: bool) -> Stack:
    meta = json.dumps(_envelope(None), ensure_ascii=False)
    body = _envelope(base64.b64encode(pdf).decode())

    def make_call() -> Callable[[], str]:
        client = httpx.Client(
            base_url=url, headers={"Authorization": f"Bearer {token}"}, timeout=120
        )

        def call() -> str:
            if multipart:
                answer = client.post(
                    "/api/v1/envelopes",
                    data={"envelope": meta},
                    files=[("documents", (DOC_NAME, pdf, "application/pdf"))],
                )
            else:
                answer = client.post("/api/v1/envelopes", json=body)
            if answer.status_code != 201:
                raise RuntimeError(f"create failed: {answer.status_code} {answer.text[:300]}")
            return str(answer.json()["id"])

        return call

    return Stack("http-multipart" if multipart else "http-json", make_call)


def _serve(config: Path, workers: int, environ: dict[str, str]) -> tuple[Any, str, Any]:
    from gateway.server import listening_socket

    sock = listening_socket()  # handed to the server: no window for another process
    port = sock.getsockname()[1]
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
        env={**os.environ, **environ},
        pass_fds=(sock.fileno(),),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while True:
        try:
            if httpx.get(f"{url}/healthz", timeout=2).status_code == 200:
                return server, url, sock
        except httpx.TransportError:
            pass
        if time.monotonic() > deadline or server.poll() is not None:
            server.kill()
            raise RuntimeError("keiyaku serve did not start")
        time.sleep(0.1)


def _descendants(pid: int) -> list[int]:
    """``pid`` and every process below it. A process lists its children per thread
    (``/proc/<pid>/task/<tid>/children``): the render workers are started by a render-check
    thread, so the main thread's list alone misses them."""
    found, todo = [], [pid]
    while todo:
        current = todo.pop()
        found.append(current)
        try:
            tasks = list(Path(f"/proc/{current}/task").iterdir())
        except OSError:
            continue
        for task in tasks:
            try:
                todo += [int(p) for p in (task / "children").read_text().split()]
            except OSError:
                continue
    return found


def _peak_rss_mb(pid: int) -> float:
    """The peak resident size of a process and all its descendants (uvicorn workers, render
    workers), MB."""
    total = 0
    for p in _descendants(pid):
        try:
            for line in Path(f"/proc/{p}/status").read_text().splitlines():
                if line.startswith("VmHWM:"):
                    total += int(line.split()[1]) * 1024
        except OSError:
            continue
    return round(total / 2**20, 1)


def _verify(gateway: Any, ids: list[str], pdf: bytes) -> int:
    """Every envelope: the upload stored byte for byte (by hash), mirrored, parties with codes."""
    from sqlalchemy import select
    from sqlalchemy.orm import selectinload

    from core.blobs import blob_path
    from core.envelopes.documents import read_document
    from core.model import AccessCode, Document, Envelope

    want = hashlib.sha256(pdf).hexdigest()
    blobs = gateway.runtime.blobs
    checked = 0
    with gateway.sessions() as session:
        for start in range(0, len(ids), 200):
            envelopes = session.scalars(
                select(Envelope)
                .where(Envelope.id.in_(ids[start : start + 200]))
                .options(
                    selectinload(Envelope.documents).selectinload(Document.revisions),
                    selectinload(Envelope.parties),
                )
            ).all()
            party_ids = [p.id for env in envelopes for p in env.parties]
            coded = set(
                session.scalars(
                    select(AccessCode.party_id).where(AccessCode.party_id.in_(party_ids))
                )
            )
            for env in envelopes:
                (doc,) = env.documents
                upload = doc.revisions[0]
                got = hashlib.sha256(blobs.get(upload.blob_id)).hexdigest()
                if got != want:
                    raise AssertionError(f"{env.id}: stored upload {got} != sent {want}")
                for rev in doc.revisions:
                    if blobs.mirror is None or not blob_path(blobs.mirror, rev.blob_id).exists():
                        raise AssertionError(f"{env.id}: revision {rev.seq} not mirrored")
                if not read_document(runtime=gateway.runtime, document=doc).startswith(b"%PDF-"):
                    raise AssertionError(f"{env.id}: newest revision is not a PDF")
                if len(env.parties) != 2 or any(p.id not in coded for p in env.parties):
                    raise AssertionError(f"{env.id}: parties or access codes missing")
                checked += 1
    if checked != len(set(ids)):
        raise AssertionError(f"{checked} envelopes found of {len(set(ids))} created")
    return checked


def bench_store(
    store: str, database_url: str, pdf: bytes, args: argparse.Namespace
) -> dict[str, Any]:
    """One store: the three stacks interleaved over ``args.rounds`` rounds, then verified."""
    from core.envelopes.creation import DocumentInput
    from core.model import ApiClient
    from core.signing.devpki import create_dev_pki
    from gateway.api.envelopes import _create
    from gateway.api.schemas import EnvelopeCreate
    from gateway.app import build_context
    from gateway.runtime import open_gateway
    from gateway.settings import load_settings
    from tests.fixtures.gateway import SECRETS, write_config
    from tests.fixtures.pki_plugin import DEV_PASSPHRASE

    with tempfile.TemporaryDirectory(prefix=f"bench-api-{store}-") as tmp:
        home = Path(tmp)
        pki = create_dev_pki(home / "pki", passphrase=DEV_PASSPHRASE)
        config = write_config(home, pki, database_url=database_url)
        settings = load_settings(config, environ=SECRETS)
        gateway = open_gateway(settings)  # migrates; the served process finds it migrated
        try:
            from core.staff.api_clients import create_api_client

            with gateway.sessions() as session:
                client_row, token = create_api_client(session=session, name="bench")
                session.commit()
                api_client = session.get(ApiClient, client_row.id)
                assert api_client is not None
                session.expunge(api_client)
            context = build_context(gateway, run_mailer=False, run_signing=False)
            body = EnvelopeCreate.model_validate(_envelope(None))
            docs = [DocumentInput(name=DOC_NAME, data=pdf)]

            def make_in_process() -> Callable[[], str]:
                def call() -> str:
                    with gateway.sessions() as session:
                        out, _replay = _create(
                            context, session, api_client, body, docs, None, "127.0.0.1"
                        )
                        return str(out.id)

                return call

            server, url, sock = _serve(config, args.workers, SECRETS)
            try:
                stacks = [
                    _http_stack(url, token, pdf, multipart=True),
                    _http_stack(url, token, pdf, multipart=False),
                    Stack("in-process", make_in_process),
                ]
                for stack in stacks:  # warm-up: connections, caches, first imports
                    stack.batch(min(args.n, 2 * args.clients), args.clients, timed=False)
                for r in range(args.rounds):
                    shift = r % len(stacks)
                    for stack in [*stacks[shift:], *stacks[:shift]]:
                        stack.batch(args.n, args.clients)
                server_peak = _peak_rss_mb(server.pid)
            finally:
                server.terminate()
                server.wait(timeout=30)
                sock.close()
            verified = {s.name: _verify(gateway, s.ids, pdf) for s in stacks}
        finally:
            gateway.close()
    figures = {s.name: s.figures() for s in stacks}
    for name, fig in figures.items():
        fig["verified"] = verified[name]
    floor = figures["in-process"]
    multipart = figures["http-multipart"]
    return {
        "stacks": figures,
        "multipart_vs_in_process_p50": ratio(multipart["p50_ms"], floor["p50_ms"]),
        "json_vs_in_process_p50": ratio(figures["http-json"]["p50_ms"], floor["p50_ms"]),
        "in_process_vs_multipart_rate": ratio(floor["creates_per_s"], multipart["creates_per_s"]),
        "server_peak_rss_mb": server_peak,
    }


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark; print the figures or one JSON object."""
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds")
    parser.add_argument("--n", type=int, default=40, help="creates per stack and round")
    parser.add_argument("--clients", type=int, default=8, help="concurrent clients")
    parser.add_argument("--pdf-kb", type=int, default=1000, help="size of the PDF")
    parser.add_argument("--stores", default="sqlite,postgresql")
    parser.add_argument("--workers", type=int, default=1, help="`keiyaku serve --workers`")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args(argv)

    from tests.fixtures.pdfs import make_pdf

    pdf = make_pdf(pages=2, size_target=args.pdf_kb * 1000)
    report: dict[str, Any] = {
        "bench": "api",
        "rounds": args.rounds,
        "n": args.n,
        "clients": args.clients,
        "workers": args.workers,
        "pdf_bytes": len(pdf),
        "targets": TARGETS,
        "machine_start": machine(),
        "stores": {},
    }
    lines = [
        f"envelope: one PDF of {len(pdf) / 1e6:.2f} MB, 2 parties with access codes; "
        f"keiyaku serve --workers {args.workers}; {args.clients} clients; {args.rounds} rounds "
        f"x {args.n} creates per stack; load {report['machine_start']['load']} on "
        f"{report['machine_start']['cores']} cores",
        f"targets: p50 <= {TARGETS['p50_ms']:g} ms, >= {TARGETS['creates_per_s']:g} creates/s",
    ]
    for store in [s.strip() for s in args.stores.split(",")]:
        with tempfile.TemporaryDirectory(prefix="bench-api-db-") as tmp:
            if store == "sqlite":
                entry = bench_store(store, f"sqlite:///{tmp}/keiyaku.db", pdf, args)
            else:
                with scratch_postgres() as pg_url:
                    if pg_url is None:
                        report["stores"][store] = "skipped: unreachable"
                        lines.append(f"{store}: skipped (unreachable)")
                        continue
                    entry = bench_store(store, pg_url, pdf, args)
        report["stores"][store] = entry
        lines.append(f"\n{store}")
        for name, fig in entry["stacks"].items():
            lines.append(
                f"  {name:<16} p50 {fig['p50_ms']:7.1f} ms  p95 {fig['p95_ms']:7.1f} ms  "
                f"{fig['creates_per_s']:7.1f} creates/s  ({fig['verified']} verified)"
            )
        lines.append(
            f"  HTTP multipart / in-process p50 {entry['multipart_vs_in_process_p50']:.2f}x, "
            f"JSON {entry['json_vs_in_process_p50']:.2f}x; in-process / multipart rate "
            f"{entry['in_process_vs_multipart_rate']:.2f}x; server peak RSS "
            f"{entry['server_peak_rss_mb']:.0f} MB; load {machine()['load']}"
        )
    report["machine_end"] = machine()
    emit(report, lines, as_json=args.json)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
