"""What a signer feels: the click on 「署名手続きを完了する」 to the done page, with a slow TSA.

    .venv/bin/python -m bench.latency [--rounds 5] [--tsa-latency-ms 200]
                                      [--pushback-poll-seconds 10] [--json]

The gateway is served by uvicorn on loopback as ``keiyaku serve`` runs it (SQLite, the signing
worker and the push-back dispatcher in their threads, the backup mirror on, mail over SMTP on
loopback); its TSA is an RFC 3161 server over HTTP on loopback that answers
``--tsa-latency-ms`` late (an accredited TSA's round trip: 50-300 ms). Per round, one
three-party envelope (two documents) is created through the API and each party, in routing
order, opens the mailed link, enters the access code and loads the documents page (untimed),
then:

- ``click``: the POST of the form (the click), answered with a redirect to the done page;
- ``done``: the click and the done page it leads to (what the person waits for);
- ``floor``: a bare ``GET /healthz`` on the same server, just before or after the click (the
  order alternates): an HTTP round trip through the same app without the product's work.

For the last party also ``last-approval-to-sink``: from that click to every signed PDF of the
envelope renamed into place in a folder sink (signature, seal with its document timestamp, the
push-back dispatcher's next look: ``outbox.poll_seconds``, ``--pushback-poll-seconds``).

Verified, after the timed part: each click answered 303 to ``/done``, the done page says
署名処理中 or 完了; every PDF in the sink is byte-for-byte the document the API serves, passes
pyHanko validation with the development root (three approvals, sealed) and the TSA answered
every timestamp. Printed: p50/p95 per measurement, click and done over the floor, the TSA's
latency, and the load.
"""

from __future__ import annotations

import argparse
import re
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

from bench.harness import emit, loopback_tsa, machine, ratio

CLICK_TARGET_MS = 50.0
DONE_HEADINGS = ("署名処理中", "署名手続きが完了しました")


def _p(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def _figures(seconds: list[float]) -> dict[str, float]:
    ms = [s * 1000 for s in seconds]
    return {
        "n": len(ms),
        "p50_ms": round(statistics.median(ms), 2) if ms else 0.0,
        "p95_ms": round(_p(ms, 0.95), 2) if ms else 0.0,
        "max_ms": round(max(ms), 2) if ms else 0.0,
    }


def _sink_config(sink: Path, poll_seconds: float) -> str:
    return f"""
sinks:
  documents:
    kind: folder
    events: [completed]
    path: {sink}
    trigger: null
    fsync: true
    content:
      documents: true
      certificate: false
      directory: "{{envelope_id}}"
outbox:
  poll_seconds: {poll_seconds}
"""


class _Signer:
    """One party on the signing pages: signed in and on the documents page, ready to click."""

    def __init__(self, url: str, link: str, code: str) -> None:
        self.client = httpx.Client(base_url=url, timeout=120, follow_redirects=False)
        self.path = link.split(url, 1)[1]
        page = self.client.get(self.path)
        csrf = re.search(r'name="csrf_token" value="([^"]+)"', page.text)
        assert csrf is not None, page.text
        answer = self.client.post(
            self.path, data={"access_code": code, "csrf_token": csrf.group(1)}
        )
        assert answer.status_code == 303, answer.text
        documents = self.client.get(f"{self.path}/documents")
        csrf = re.search(r'name="csrf_token" value="([^"]+)"', documents.text)
        assert csrf is not None, documents.text
        fields = re.findall(r'name="(field_[0-9a-f]+)"', documents.text)
        self.form = {"csrf_token": csrf.group(1), **dict.fromkeys(fields, "令和8年12月7日")}

    def click(self) -> tuple[float, float, str, int]:
        """(click seconds, click-to-done-page seconds, the done page's heading, status)."""
        start = time.perf_counter()
        answer = self.client.post(f"{self.path}/complete", data=self.form)
        clicked = time.perf_counter()
        status = answer.status_code
        location = answer.headers.get("location", "")
        if status != 303 or not location.endswith("/done"):
            raise AssertionError(f"click answered {status} {location}: {answer.text[:300]}")
        done = self.client.get(location)
        finished = time.perf_counter()
        heading = re.search(r'<h1 id="status">([^<]+)</h1>', done.text)
        return clicked - start, finished - start, heading.group(1) if heading else "", status

    def close(self) -> None:
        self.client.close()


def _wait_for_files(folder: Path, count: int, timeout: float) -> list[Path]:
    """The ``count`` PDFs renamed into ``folder`` (temporary names start with a dot)."""
    deadline = time.monotonic() + timeout
    while True:
        if folder.is_dir():
            files = sorted(p for p in folder.iterdir() if p.suffix == ".pdf" and p.name[0] != ".")
            if len(files) >= count:
                return files
        if time.monotonic() > deadline:
            raise AssertionError(f"no {count} PDFs in {folder} after {timeout} s")
        time.sleep(0.002)


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark; print the figures or one JSON object."""
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5, help="envelopes (3 clicks each)")
    parser.add_argument("--tsa-latency-ms", type=float, default=200.0)
    parser.add_argument(
        "--pushback-poll-seconds",
        type=float,
        default=10.0,
        help="outbox.poll_seconds (the product's default: 10)",
    )
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args(argv)

    import logging

    from core.signing import verify_pdf
    from core.signing.devpki import create_dev_pki
    from gateway.app import create_app
    from gateway.runtime import load_trust_roots, settle_heap
    from gateway.server import listening_socket, serve_in_thread
    from tests.e2e.conftest import link_in
    from tests.fixtures.gateway import envelope_request, new_token, open_test_gateway, write_config
    from tests.fixtures.pki_plugin import DEV_PASSPHRASE
    from tests.fixtures.smtp import smtp_server

    logging.getLogger("pyhanko").setLevel(logging.CRITICAL)
    report: dict[str, Any] = {
        "bench": "latency",
        "rounds": args.rounds,
        "tsa_latency_ms": args.tsa_latency_ms,
        "pushback_poll_seconds": args.pushback_poll_seconds,
        "machine_start": machine(),
    }
    clicks: list[float] = []
    dones: list[float] = []
    floors: list[float] = []
    sinks: list[float] = []
    headings: dict[str, int] = {}
    verified_pdfs = 0
    with tempfile.TemporaryDirectory(prefix="keiyaku-bench-latency-") as tmp:
        home = Path(tmp)
        pki = create_dev_pki(home / "pki", passphrase=DEV_PASSPHRASE)
        sink = home / "sink"
        sock = listening_socket()
        port = sock.getsockname()[1]
        with (
            loopback_tsa(pki.directory, DEV_PASSPHRASE, args.tsa_latency_ms / 1000) as tsa,
            smtp_server() as (smtp_port, inbox),
        ):
            config = write_config(
                home,
                pki,
                database_url=f"sqlite:///{home / 'keiyaku.db'}",
                public_url=f"http://127.0.0.1:{port}",
                mail=(
                    "  sender: keiyaku@city.example.jp\n  transport: smtp\n  smtp:\n"
                    f"    host: 127.0.0.1\n    port: {smtp_port}\n    starttls: false\n"
                    "    attempts: 2\n  dispatch_interval_seconds: 0.2\n"
                ),
                tsa=f"    urls: [{tsa.url}]\n    timeout_seconds: 10\n",
                extra=_sink_config(sink, args.pushback_poll_seconds),
            )
            gateway = open_test_gateway(config)
            roots = load_trust_roots(gateway.settings)
            app = create_app(gateway, run_pushback=True)
            settle_heap()  # as keiyaku serve does once its app is built
            try:
                with (
                    serve_in_thread(app, sock=sock) as url,
                    httpx.Client(
                        base_url=url,
                        headers={"Authorization": f"Bearer {new_token(gateway, 'bench')}"},
                        timeout=120,
                    ) as api,
                    httpx.Client(base_url=url, timeout=120) as probe,
                ):
                    for r in range(-1, args.rounds):  # -1: warm-up, not counted
                        emails = tuple(f"p{k}-{r + 1}@example.jp" for k in range(3))
                        body = envelope_request(emails=emails, send=True)  # type: ignore[arg-type]
                        created = api.post("/api/v1/envelopes", json=body)
                        assert created.status_code == 201, created.text
                        envelope_id = created.json()["id"]
                        codes = ("1111", "2468", "3333")
                        last_click = 0.0
                        for k, (email, code) in enumerate(zip(emails, codes, strict=True)):
                            (mail,) = inbox.wait_for(email, timeout=120)
                            signer = _Signer(url, link_in(mail), code)
                            floor_first = (r + k) % 2 == 0
                            if floor_first:
                                start = time.perf_counter()
                                assert probe.get("/healthz").status_code == 200
                                floor = time.perf_counter() - start
                            last_click = time.perf_counter()
                            click, done, heading, _status = signer.click()
                            if not floor_first:
                                start = time.perf_counter()
                                assert probe.get("/healthz").status_code == 200
                                floor = time.perf_counter() - start
                            signer.close()
                            if heading not in DONE_HEADINGS:
                                raise AssertionError(f"done page says {heading!r}")
                            if r >= 0:
                                clicks.append(click)
                                dones.append(done)
                                floors.append(floor)
                                headings[heading] = headings.get(heading, 0) + 1
                        documents = len(body["documents"])
                        files = _wait_for_files(
                            sink / envelope_id, documents, 120 + 2 * args.pushback_poll_seconds
                        )
                        in_sink = time.perf_counter() - last_click
                        if r >= 0:
                            sinks.append(in_sink)
                        # Verified: the sink's bytes are the envelope's documents, each valid.
                        served = [
                            api.get(f"/api/v1/envelopes/{envelope_id}/documents/{i}").content
                            for i in range(documents)
                        ]
                        for path in files:
                            data = path.read_bytes()
                            if data not in served:
                                raise AssertionError(f"{path.name} is not a served document")
                            result = verify_pdf(data, trust_roots=roots)
                            approvals = [s for s in result.signatures if s.kind == "approval"]
                            if not result.ok or len(approvals) != 3:
                                raise AssertionError(f"{path.name}: {result.as_dict()}")
                            verified_pdfs += 1
            finally:
                gateway.close()
            report["tsa_requests"] = tsa.requests
    report["click"] = _figures(clicks)
    report["done"] = _figures(dones)
    report["floor"] = _figures(floors)
    report["last_approval_to_sink"] = _figures(sinks)
    report["click_vs_floor"] = ratio(report["click"]["p50_ms"], report["floor"]["p50_ms"])
    report["done_vs_floor"] = ratio(report["done"]["p50_ms"], report["floor"]["p50_ms"])
    report["click_target_ms"] = CLICK_TARGET_MS
    report["done_headings"] = headings
    report["verified_pdfs"] = verified_pdfs
    report["machine_end"] = machine()
    lines = [
        f"{args.rounds} envelopes x 3 clicks, TSA over HTTP on loopback +{args.tsa_latency_ms:g} "
        f"ms, push-back poll {args.pushback_poll_seconds:g} s; load {report['machine_start']['load']}"
        f" on {report['machine_start']['cores']} cores",
        f"{'measure':<24} {'p50 ms':>9} {'p95 ms':>9} {'max ms':>9}",
    ]
    for name in ("click", "done", "floor", "last_approval_to_sink"):
        f = report[name]
        lines.append(f"{name:<24} {f['p50_ms']:9.1f} {f['p95_ms']:9.1f} {f['max_ms']:9.1f}")
    lines.append(
        f"click/floor {report['click_vs_floor']:.2f}, done/floor {report['done_vs_floor']:.2f}; "
        f"click p50 target {CLICK_TARGET_MS:g} ms; done pages {headings}; "
        f"{verified_pdfs} sink PDFs byte-compared and validated; {report['tsa_requests']} TSA "
        f"requests; load at end {report['machine_end']['load']}"
    )
    emit(report, lines, as_json=args.json)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
