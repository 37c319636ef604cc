"""Resource bombs in PDFs, through the served app: a page box of 14400 pt is shown scaled down
to the pixel cap; a Flate bomb and a page too thin to show are refused at every upload (API,
compose page, award push) with a Japanese ``document.*`` error and nothing stored; a document
whose rendering overruns the renderer's budget (stored before uploads were checked) answers a
clear error, and the next page renders as usual."""

from __future__ import annotations

import base64
import datetime as dt
import io
import json
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pikepdf
import pytest
from PIL import Image

from core.envelopes.documents import current_documents
from core.envelopes.lifecycle import get_envelope
from core.envelopes.links import issue_link
from core.model import LinkPurpose
from tests.fixtures.gateway import envelope_request
from tests.fixtures.pdfs import flate_bomb, make_pdf, object_stream_bomb, page_box_bomb
from tests.gateway.conftest import LiveGateway
from tests.gateway.test_admin_compose import NEW, THREE, _facts, _pdfs
from tests.gateway.test_admin_pages import _csrf, _login, _staff
from tests.gateway.test_awards_api import AWARD
from tests.gateway.test_awards_api import _start as _start_awards

pytestmark = pytest.mark.parametrize("db_engine", ["sqlite"], indirect=True)

MAX_PIXELS = 4_000_000  # pages.max_page_pixels, the default
# A small memory budget, so the 2 GB bomb is stopped early on a machine shared with others.
BUDGET = "pages:\n  render_memory_mb: 384\n  render_seconds: 120\n"


_CLEAR_REFS = Path("/proc/self/clear_refs")
MB = 1024 * 1024


def _peak_growth(run: Callable[[], Any]) -> tuple[Any, int | None]:
    """``run()`` and how far this process's peak RSS (the served app's: it runs here, in a
    thread) rose above its RSS before; None where the peak cannot be reset."""

    def kb(field: str) -> int:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
        raise LookupError(field)

    try:
        _CLEAR_REFS.write_text("5")  # reset VmHWM (Linux 4.0+)
    except OSError:
        return run(), None
    before = kb("VmRSS")
    result = run()
    return result, (kb("VmHWM") - before) * 1024


def _blobs(live: LiveGateway) -> int:
    root = live.gateway.runtime.blobs.root
    return sum(1 for p in root.rglob("*") if p.is_file() and not p.name.startswith("."))


def _create(api: httpx.Client, *pdfs: bytes) -> httpx.Response:
    return api.post("/api/v1/envelopes", json=envelope_request(send=True, pdfs=list(pdfs)))


def _signed_in(live: LiveGateway, envelope_id: str) -> tuple[httpx.Client, str]:
    """A browser signed in on the first party's link (access code 1111)."""
    with live.gateway.sessions() as session:
        envelope = get_envelope(session=session, envelope_id=envelope_id)
        party = envelope.parties[0]
        _link, token = issue_link(
            session=session,
            envelope_id=envelope.id,
            party_id=party.id,
            email=party.email,
            purpose=LinkPurpose.SIGN,
            valid_for=dt.timedelta(days=1),
            issued_for=f"test:{envelope.id}",
        )
        session.commit()
    browser = httpx.Client(base_url=live.url, timeout=120, follow_redirects=False)
    csrf = _csrf(browser.get(f"/sign/{token}").text)
    answer = browser.post(f"/sign/{token}", data={"access_code": "1111", "csrf_token": csrf})
    assert answer.status_code == 303, answer.text
    return browser, f"/sign/{token}"


def _image(answer: httpx.Response) -> Image.Image:
    assert answer.status_code == 200, answer.text[-2000:]
    assert answer.headers["content-type"] == "image/png"
    return Image.open(io.BytesIO(answer.content))


def _refused(answer: httpx.Response, code: str) -> dict[str, Any]:
    assert answer.status_code == 422, answer.text
    error: dict[str, Any] = answer.json()["error"]
    assert error["code"] == code, error
    return error


def test_a_page_box_bomb_is_shown_within_the_pixel_cap(
    live_gateway: Callable[..., LiveGateway],
) -> None:
    live = live_gateway(extra=BUDGET)
    square = page_box_bomb()  # 14400 x 14400 pt: 22000 px a side at the compose pages' 110 dpi
    long = page_box_bomb(600, 14400)  # 1200 px wide would be 28800 px tall
    assert len(square) < 1024
    with live.client(live.token("e-bid")) as api:
        created = _create(api, square, long)
        assert created.status_code == 201, created.text
        browser, base = _signed_in(live, created.json()["id"])
    try:
        documents = browser.get(f"{base}/documents")
        assert documents.status_code == 200
        images = re.findall(r'src="([^"]+/pages/1\.png[^"]*)"', documents.text)
        assert len(images) == 2, images
        first = _image(browser.get(f"{base}/documents/0/pages/1.png", params={"w": 1200}))
        assert first.size == (1200, 1200)
        blue = first.convert("RGB").getpixel((600, 600))
        assert isinstance(blue, tuple) and blue[2] > 200 and blue[0] < 60
        second = _image(browser.get(f"{base}/documents/1/pages/1.png", params={"w": 1200}))
        # scaled down to the cap: narrower than asked, the page's proportions kept
        assert second.width * second.height <= MAX_PIXELS
        assert second.width < 1200 and abs(second.height / second.width - 24) < 0.2
    finally:
        browser.close()


def test_bombs_and_unshowable_pages_are_refused_at_every_upload(
    live_gateway: Callable[..., LiveGateway], tmp_path: Path
) -> None:
    live = _start_awards(live_gateway, tmp_path, BUDGET)
    bomb = flate_bomb()  # ~4 KB; its content stream inflates to 2 GB
    assert len(bomb) < 8 * 1024
    thin = page_box_bomb(14400, 20)  # 720:1, a few pixels tall at any width offered
    before = _blobs(live)
    with live.client(live.token("e-bid")) as api:
        # the API, JSON and multipart
        error = _refused(_create(api, make_pdf(pages=1), bomb), "document.too_complex")
        assert "請書.pdf" in error["message_ja"] and "表示できません" in error["message_ja"]
        body = envelope_request(send=True)
        body.pop("documents")
        multipart = api.post(
            "/api/v1/envelopes",
            data={"envelope": json.dumps(body)},
            files=[("documents", ("契約書.pdf", bomb, "application/pdf"))],
        )
        _refused(multipart, "document.too_complex")
        error = _refused(_create(api, thin), "document.page_size")
        assert "縦横比" in error["message_ja"]
        assert api.get("/api/v1/envelopes").json()["total"] == 0
        # the next upload is taken as usual
        assert _create(api, make_pdf(pages=1)).status_code == 201
    after_api = _blobs(live)
    assert after_api > before  # the good envelope's documents, nothing of the refused ones

    # an award pushed with the bomb as its contract
    with live.client(live.token("ebid")) as pusher:
        pushed = pusher.post(
            "/api/v1/awards/ebid",
            json={**AWARD, "contractPdf": base64.b64encode(bomb).decode()},
        )
        assert pushed.status_code == 422, pushed.text
        codes = [e["code"] for e in pushed.json()["errors"]]
        assert codes == ["document.too_complex"], pushed.text
    assert _blobs(live) == after_api

    # the staff compose page
    _staff(live, "tanaka@city.example.jp", "契約課")
    with live.client() as client:
        assert _login(client, "tanaka@city.example.jp").status_code == 303
        token = _csrf(client.get(NEW).text)
        step1 = client.post(
            NEW,
            data={"csrf_token": token, **_facts(), **THREE},
            files=_pdfs(make_pdf(pages=1), bomb),
        )
        assert step1.status_code != 303
        assert "表示できません" in step1.text
    assert _blobs(live) == after_api


def test_a_render_over_budget_answers_an_error_and_the_next_page_renders(
    live_gateway: Callable[..., LiveGateway], monkeypatch: pytest.MonkeyPatch
) -> None:
    live = live_gateway(extra=BUDGET)
    with live.client(live.token("e-bid")) as api:
        # as if stored before uploads were checked
        with monkeypatch.context() as unchecked:
            unchecked.setattr("core.envelopes.creation._check_renderable", lambda *_args: None)
            created = _create(api, flate_bomb(), make_pdf(pages=2))
        assert created.status_code == 201, created.text
        browser, base = _signed_in(live, created.json()["id"])
    pool = live.gateway.runtime.renderer
    assert pool is not None
    killed = pool.killed
    try:
        documents = browser.get(f"{base}/documents")
        assert documents.status_code == 200  # the pages are listed, each image on its own
        refused = browser.get(f"{base}/documents/0/pages/1.png", params={"w": 960})
        assert refused.status_code == 422
        assert "表示できません" in refused.text
        assert pool.killed == killed + 1  # the worker over budget was stopped
        metrics = httpx.get(f"{live.url}/metrics", timeout=30)  # operators see it (loopback)
        assert metrics.status_code == 200
        assert f"keiyaku_render_overruns_total {float(killed + 1)}" in metrics.text
        for page in (1, 2):  # a fresh worker renders the next pages
            image = _image(browser.get(f"{base}/documents/1/pages/{page}.png", params={"w": 960}))
            assert image.width == 960
    finally:
        browser.close()


@pytest.mark.parametrize("where", ["content", "xmp", "objstm"])
def test_a_flate_bomb_costs_the_server_no_memory(
    live_gateway: Callable[..., LiveGateway], where: str
) -> None:
    """2 GB of Flate (512 MB for the object stream) in a few kilobytes: in the page content
    (refused by the render check, in its bounded process), in the XMP packet (read within
    4 MB by the signing engine, which rebuilds the file without it: what signers see and what
    is signed carries no bomb, so it is accepted) or in an object stream (sized before any
    parser reads it: refused)."""
    live = live_gateway(extra=BUDGET)
    bomb = object_stream_bomb(512) if where == "objstm" else flate_bomb(2048, where=where)
    assert len(bomb) < 8 * 1024
    with live.client(live.token("e-bid")) as api:
        answer, grown = _peak_growth(lambda: _create(api, bomb))
        if grown is not None:
            assert grown < 128 * MB, f"peak RSS rose {grown / MB:.0f} MB"
        if where == "xmp":
            # dropped by the rebuild; the render check judges the rebuilt file, not the upload
            assert answer.status_code == 201, answer.text
            with live.gateway.sessions() as session:
                envelope = get_envelope(session=session, envelope_id=answer.json()["id"])
                [(_name, shown)] = current_documents(
                    runtime=live.gateway.runtime, envelope=envelope
                )
            with pikepdf.open(io.BytesIO(shown)) as pdf:
                assert "/Metadata" not in pdf.Root
            return
        error = _refused(answer, "document.too_complex")
        assert (
            "受け付けられません" in error["message_ja"] or "表示できません" in error["message_ja"]
        )
