"""The signing page of a 10-page document on an emulated Fast 3G phone, against a static floor.

    .venv/bin/python -m bench.pages [--rounds 3] [--pages 10] [--json]

The gateway is served by uvicorn on loopback (SQLite, SMTP on loopback for the links); Debian
Chromium, driven by Playwright, emulates a phone (412 x 915 CSS px, DPR 2.625) and, through the
DevTools protocol, Chrome's "Fast 3G" preset (562.5 ms latency, 1.44 Mbit/s down, 675 kbit/s
up). Per round, in an order rotated round by round:

- ``first-visit``: a fresh envelope (so the server renders its images for the first time) and
  a fresh browser profile (empty cache); signed in untimed, then the documents page is loaded;
- ``revisit``: the same page loaded again in that profile (images from the browser's cache or
  answered 304);
- ``floor``: the very same bytes (HTML, CSS, JS, page images) from a bare static server
  (``http.server``), same headers, fresh profile: what the line costs without the product.

Timed: navigation start to every page image in the viewport decoded (``usable_ms``; target
3,000). Verified per load: every visible image decoded at the width its URL asked for; after the
timed part, throttling is lifted and every page scrolled into view, and every page image the
browser fetched must be a palette PNG of at most 60 KB; a revisit must fetch no image bytes.
Printed: p50/p90 per stack, bytes over the line, the largest page image, ratios to the floor,
the server process's peak RSS and the load.
"""

from __future__ import annotations

import argparse
import http.server
import re
import statistics
import tempfile
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, ClassVar

import httpx

from bench.harness import emit, machine, ratio

PAGE_LIMIT = 60_000
USABLE_TARGET_MS = 3000
FAST_3G = {
    "offline": False,
    "latency": 562.5,
    "downloadThroughput": 1.6 * 1024 * 1024 / 8 * 0.9,
    "uploadThroughput": 750 * 1024 / 8 * 0.9,
}
PHONE = {
    "viewport": {"width": 412, "height": 915},
    "device_scale_factor": 2.625,
    "is_mobile": True,
    "has_touch": True,
    "locale": "ja-JP",
}
# Resolves with navigation-relative ms once every image in the viewport is decoded.
VISIBLE_LOADED = """() => {
  const shown = Array.from(document.querySelectorAll('.doc:not([hidden]) img')).filter(i => {
    const r = i.getBoundingClientRect();
    return r.bottom > 0 && r.top < window.innerHeight;
  });
  if (!shown.length || !shown.every(i => i.complete && i.naturalWidth > 0)) return false;
  return {ms: performance.now(), images: shown.map(i => [i.currentSrc, i.naturalWidth])};
}"""
RESOURCES = """() => performance.getEntriesByType('resource').concat(
  performance.getEntriesByType('navigation')).map(e => ({
    name: e.name, type: e.initiatorType, transfer: e.transferSize, body: e.encodedBodySize}))"""


class _Static(http.server.BaseHTTPRequestHandler):
    """Serves the captured bytes by path and query, with the gateway's headers."""

    files: ClassVar[dict[str, tuple[int, dict[str, str], bytes]]] = {}

    def do_GET(self) -> None:
        status, headers, body = self.files.get(self.path, (404, {}, b""))
        self.send_response(status)
        for name, value in headers.items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: Any) -> None:
        pass


@contextmanager
def _static_server(files: dict[str, tuple[int, dict[str, str], bytes]]) -> Iterator[str]:
    handler = type("Handler", (_Static,), {"files": files})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def _capture(client: httpx.Client, docs_url: str, widths: tuple[int, ...]) -> dict:
    """The documents page and everything it references, as the floor will serve it."""
    kept = ("content-type", "cache-control", "etag")
    files: ClassVar[dict[str, tuple[int, dict[str, str], bytes]]] = {}

    def keep(path: str) -> bytes:
        answer = client.get(path)
        assert answer.status_code == 200, (path, answer.status_code)
        headers = {k: v for k, v in answer.headers.items() if k.lower() in kept}
        files[path] = (200, headers, answer.content)
        return answer.content

    html = keep(docs_url).decode()
    for ref in set(re.findall(r'(?:href|src)="(/static/[^"]+)"', html)):
        keep(ref)
    for src in set(re.findall(r'(/sign/[^" ]+\.png\?v=\d+&amp;w=)\d+', html)):
        for width in widths:
            keep(src.replace("&amp;", "&") + str(width))
    return files


def _throttled_page(context: Any) -> tuple[Any, Any]:
    page = context.new_page()
    cdp = context.new_cdp_session(page)
    cdp.send("Network.enable")
    cdp.send("Network.emulateNetworkConditions", FAST_3G)
    return page, cdp


def _measure(page: Any, url: str, widths: tuple[int, ...]) -> dict[str, Any]:
    page.goto(url, wait_until="commit")
    shown = page.wait_for_function(VISIBLE_LOADED, timeout=120_000, polling=10).json_value()
    for src, natural in shown["images"]:
        # naturalWidth is in CSS px for a srcset pick: decoded is what can be checked here
        asked = int(re.search(r"w=(\d+)", src).group(1))  # type: ignore[union-attr]
        if natural <= 0 or asked not in widths:
            raise AssertionError(f"{src}: not a decoded page image ({natural} px)")
    entries = page.evaluate(RESOURCES)
    return {
        "ms": shown["ms"],
        "visible_images": len(shown["images"]),
        "bytes": sum(e["transfer"] for e in entries),
        "image_bytes": sum(e["transfer"] for e in entries if e["type"] == "img"),
    }


def _all_pages(page: Any, cdp: Any, pages: int) -> int:
    """Lift the throttling, bring every page into view; the largest page image fetched."""
    cdp.send(
        "Network.emulateNetworkConditions",
        {**FAST_3G, "latency": 0, "downloadThroughput": -1, "uploadThroughput": -1},
    )
    for number in range(1, pages + 1):
        page.locator(f"#doc-0-page-{number}").scroll_into_view_if_needed()
    page.wait_for_function(
        "() => Array.from(document.querySelectorAll('#doc-0 img'))"
        ".every(i => i.complete && i.naturalWidth > 0)",
        timeout=60_000,
    )
    images = [e for e in page.evaluate(RESOURCES) if e["type"] == "img"]
    fetched = {e["name"] for e in images if e["body"] > 0}
    if len(fetched) < pages:
        raise AssertionError(f"{len(fetched)} page images fetched for {pages} pages")
    return max(e["body"] for e in images)


def _check_png(client: httpx.Client, urls: list[str]) -> None:
    from io import BytesIO

    from PIL import Image

    for url in urls:
        data = client.get(url).content
        image = Image.open(BytesIO(data))
        if image.mode != "P" or len(data) > PAGE_LIMIT:
            raise AssertionError(f"{url}: {image.mode}, {len(data)} bytes")


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark; print the figures or one JSON object."""
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--pages", type=int, default=10)
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args(argv)

    import resource

    from playwright.sync_api import sync_playwright

    from core.signing.devpki import create_dev_pki
    from gateway.app import create_app
    from gateway.pages.render import PAGE_WIDTHS
    from gateway.server import listening_socket, serve_in_thread
    from tests.e2e.conftest import CHROMIUM, CHROMIUM_ARGS, link_in
    from tests.fixtures.gateway import envelope_request, new_token, open_test_gateway, write_config
    from tests.fixtures.pdfs import make_pdf
    from tests.fixtures.pki_plugin import DEV_PASSPHRASE
    from tests.fixtures.smtp import smtp_server

    report: dict[str, Any] = {"bench": "pages", "rounds": args.rounds, "pages": args.pages}
    report["machine_start"] = machine()
    samples: dict[str, list[dict[str, Any]]] = {"first-visit": [], "revisit": [], "floor": []}
    largest = 0
    pdf = make_pdf(pages=args.pages, size_target=300_000, title="工事請負契約書")
    with tempfile.TemporaryDirectory(prefix="keiyaku-bench-pages-") as tmp:
        home = Path(tmp)
        pki = create_dev_pki(home / "pki", passphrase=DEV_PASSPHRASE)
        sock = listening_socket()
        port = sock.getsockname()[1]
        with smtp_server() as (smtp_port, inbox):
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
            )
            gateway = open_test_gateway(config)
            made = [0]
            try:
                with (
                    serve_in_thread(create_app(gateway), sock=sock) as url,
                    httpx.Client(
                        base_url=url,
                        headers={"Authorization": f"Bearer {new_token(gateway, 'bench')}"},
                        timeout=120,
                    ) as api,
                    sync_playwright() as playwright,
                ):
                    browser = playwright.chromium.launch(
                        executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS
                    )

                    def new_link() -> str:
                        made[0] += 1
                        emails = tuple(f"p{k}-{made[0]}@example.jp" for k in range(3))
                        body = envelope_request(
                            emails=emails,  # type: ignore[arg-type]
                            send=True,
                            sender_email=f"sender-{made[0]}@city.example.jp",
                            pdfs=[pdf, make_pdf(pages=1)],
                        )
                        answer = api.post("/api/v1/envelopes", json=body)
                        assert answer.status_code == 201, answer.text
                        (mail,) = inbox.wait_for(emails[0])
                        return link_in(mail)

                    def signed_in_context(link: str) -> Any:
                        context = browser.new_context(**PHONE)
                        page = context.new_page()
                        page.goto(link)
                        page.fill("#access_code", "1111")
                        page.click("#next")
                        page.wait_for_url("**/documents")
                        page.close()
                        return context

                    # The floor's copy: one envelope's page, captured over plain HTTP.
                    link = new_link()
                    client = httpx.Client(base_url=url, timeout=120, follow_redirects=False)
                    form = client.get(link).text
                    csrf = re.search(r'name="csrf_token" value="([^"]+)"', form)
                    assert csrf is not None
                    client.post(link, data={"access_code": "1111", "csrf_token": csrf.group(1)})
                    docs_path = link.replace(url, "") + "/documents"
                    files = _capture(client, docs_path, PAGE_WIDTHS)
                    _check_png(client, [p for p in files if ".png?" in p])
                    client.close()

                    with _static_server(files) as floor_url:

                        def first_visit() -> None:
                            nonlocal largest
                            link = new_link()
                            context = signed_in_context(link)
                            try:
                                page, cdp = _throttled_page(context)
                                samples["first-visit"].append(
                                    _measure(page, link + "/documents", PAGE_WIDTHS)
                                )
                                page.close()
                                page, cdp = _throttled_page(context)
                                again = _measure(page, link + "/documents", PAGE_WIDTHS)
                                if again["image_bytes"] > 0:
                                    raise AssertionError(f"revisit fetched {again} image bytes")
                                samples["revisit"].append(again)
                                largest = max(largest, _all_pages(page, cdp, args.pages))
                            finally:
                                context.close()

                        def floor() -> None:
                            context = browser.new_context(**PHONE)
                            try:
                                page, _cdp = _throttled_page(context)
                                samples["floor"].append(
                                    _measure(page, floor_url + docs_path, PAGE_WIDTHS)
                                )
                            finally:
                                context.close()

                        order = [first_visit, floor]
                        for r in range(-1, args.rounds):  # round -1 warms up, not counted
                            for step in order[r % 2 :] + order[: r % 2]:
                                step()
                            if r < 0:
                                for kept in samples.values():
                                    kept.clear()
                    browser.close()
            finally:
                gateway.close()

    def summary(runs: list[dict[str, Any]]) -> dict[str, Any]:
        times = sorted(run["ms"] for run in runs)
        return {
            "n": len(runs),
            "p50_ms": round(statistics.median(times), 1),
            "p90_ms": round(times[min(len(times) - 1, int(len(times) * 0.9))], 1),
            "bytes_p50": int(statistics.median(run["bytes"] for run in runs)),
            "image_bytes_p50": int(statistics.median(run["image_bytes"] for run in runs)),
            "visible_images": min(run["visible_images"] for run in runs),
            "verified": len(runs),
        }

    stacks = {name: summary(runs) for name, runs in samples.items()}
    report["stacks"] = stacks
    report["largest_page_image_bytes"] = largest
    report["page_limit_bytes"] = PAGE_LIMIT
    report["usable_target_ms"] = USABLE_TARGET_MS
    report["first_visit_vs_floor"] = ratio(
        stacks["first-visit"]["p50_ms"], stacks["floor"]["p50_ms"]
    )
    report["within_target"] = (
        stacks["first-visit"]["p90_ms"] <= USABLE_TARGET_MS and largest <= PAGE_LIMIT
    )
    report["server_process_peak_rss_mb"] = round(
        resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1
    )
    report["machine_end"] = machine()
    lines = [
        f"{args.pages}-page document, phone 412x915 @2.625, Fast 3G (CDP), {args.rounds} rounds; "
        f"load {report['machine_start']['load']} on {report['machine_start']['cores']} cores",
        f"{'stack':<12} {'p50 ms':>8} {'p90 ms':>8} {'KB p50':>8} {'img KB':>8} {'shown':>6}",
    ]
    for name, s in stacks.items():
        lines.append(
            f"{name:<12} {s['p50_ms']:8.0f} {s['p90_ms']:8.0f} {s['bytes_p50'] / 1000:8.1f} "
            f"{s['image_bytes_p50'] / 1000:8.1f} {s['visible_images']:6d}"
        )
    lines.append(
        f"first visit / floor p50 {report['first_visit_vs_floor']:.2f}; largest page image "
        f"{largest / 1000:.1f} KB (limit {PAGE_LIMIT / 1000:.0f}); usable p90 target "
        f"{USABLE_TARGET_MS} ms: {'met' if report['within_target'] else 'NOT MET'}; "
        f"every load verified; server process peak RSS {report['server_process_peak_rss_mb']} MB"
    )
    lines.append(f"load at end {report['machine_end']['load']}")
    emit(report, lines, as_json=args.json)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
