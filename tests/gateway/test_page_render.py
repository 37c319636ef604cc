"""PageRenderer.page_image: palette PNGs at the offered widths, rendered once per revision."""

from __future__ import annotations

import io

import pytest
from PIL import Image

from core.errors import DocumentError
from gateway.pages.render import PAGE_WIDTHS, PageRenderer, fit_width, page_etag
from tests.fixtures.pdfs import make_pdf


def test_rendered_once_per_revision_and_width() -> None:
    pdf = make_pdf(pages=3)
    loads: list[int] = []

    def load() -> bytes:
        loads.append(1)
        return pdf

    renderer = PageRenderer()
    first = renderer.page_image(("doc", 1), load, 0, 720)
    assert renderer.page_image(("doc", 1), load, 0, 720) is first
    assert renderer.renders == 1
    image = Image.open(io.BytesIO(first.data))
    assert image.mode == "P" and image.width == 720
    assert first.etag == page_etag(("doc", 1), 0, 720)
    renderer.page_image(("doc", 1), load, 1, 720)
    renderer.page_image(("doc", 1), load, 0, 1200)
    assert renderer.renders == 3
    assert len(loads) == 1  # the document is read once for its pages
    newer = renderer.page_image(("doc", 2), load, 0, 720)
    assert newer.etag != first.etag


def test_widths_and_bad_pages() -> None:
    assert fit_width(None) == 960
    assert fit_width(1) == PAGE_WIDTHS[0]
    assert fit_width(721) == 960
    assert fit_width(5000) == PAGE_WIDTHS[-1]
    renderer = PageRenderer()
    with pytest.raises(DocumentError):
        renderer.page_image("k", lambda: make_pdf(pages=1), 5, 480)
    with pytest.raises(ValueError):
        renderer.page_image("k", lambda: make_pdf(pages=1), 0, 500)


def test_a_red_seal_keeps_its_colour() -> None:
    from reportlab.lib.pagesizes import A4
    from reportlab.pdfgen import canvas

    buf = io.BytesIO()
    pdf = canvas.Canvas(buf, pagesize=A4)
    pdf.setFillColorRGB(0.85, 0.1, 0.1)
    pdf.circle(300, 400, 60, fill=1)
    pdf.showPage()
    pdf.save()
    data = PageRenderer().page_image("seal", lambda: buf.getvalue(), 0, 480).data
    image = Image.open(io.BytesIO(data)).convert("RGB")
    r, g, b = image.getpixel((image.width // 2, image.height - int(400 / 842 * image.height)))
    assert r > 150 and g < 80 and b < 80


def test_a_page_box_bomb_renders_within_the_pixel_cap_at_every_size() -> None:
    from core.rendering import RenderBudget, RenderPool
    from tests.fixtures.pdfs import page_box_bomb

    cap = 2_000_000
    with RenderPool(RenderBudget(max_page_pixels=cap, max_side=5000)) as pool:
        renderer = PageRenderer(dpi=110, pool=pool)
        square = page_box_bomb()  # 22000 px a side at 110 dpi: 1.9 GB as RGBA
        staff = Image.open(io.BytesIO(renderer.png("square", lambda: square, 0)))
        assert staff.width * staff.height <= cap and staff.width == staff.height
        strip = page_box_bomb(100, 10000)  # 100:1, 12 MP at 1200 px wide; 5000 px a side at most
        signer = Image.open(io.BytesIO(renderer.page_image("strip", lambda: strip, 0, 1200).data))
        assert signer.width * signer.height <= cap and signer.height <= 5000
        assert abs(signer.height / signer.width - 100) < 5
        # a normal page is unaffected
        normal = renderer.page_image("normal", lambda: make_pdf(pages=1), 0, 960)
        assert Image.open(io.BytesIO(normal.data)).width == 960


def test_a_hostile_render_stalls_no_one_else_and_its_worker_is_replaced() -> None:
    """While one worker inflates a Flate bomb (until its memory budget stops it), another
    renders a normal page: nobody waits on a shared lock. Then the pool serves on."""
    import threading

    from core.errors import DocumentError as Refused
    from core.rendering import RenderBudget, RenderPool
    from tests.fixtures.pdfs import flate_bomb

    normal = make_pdf(pages=2)
    hostile_pdf = flate_bomb()
    with RenderPool(RenderBudget(memory_bytes=768 * 2**20, workers=2)) as pool:
        renderer = PageRenderer(pool=pool)
        # both workers started and warm
        warm = [
            threading.Thread(target=renderer.page_image, args=(f"w{i}", lambda: normal, 0, 480))
            for i in range(2)
        ]
        for thread in warm:
            thread.start()
        for thread in warm:
            thread.join()
        finished: list[str] = []
        failures: list[Exception] = []

        def hostile() -> None:
            try:
                renderer.page_image("bomb", lambda: hostile_pdf, 0, 960)
            except Refused as exc:
                failures.append(exc)
            finished.append("bomb")

        bomb = threading.Thread(target=hostile)
        bomb.start()
        for _ in range(1000):  # until the bomb is in a worker (one of the two taken)
            if len(pool._idle) == 1:
                break
            threading.Event().wait(0.005)
        image = renderer.page_image("normal", lambda: normal, 1, 960)
        finished.append("normal")
        bomb.join()
        assert finished == ["normal", "bomb"]
        (failure,) = failures
        assert isinstance(failure, Refused) and failure.code == "document.too_complex"
        assert "表示できません" in failure.message_ja
        assert pool.killed == 1
        assert Image.open(io.BytesIO(image.data)).width == 960
        again = renderer.page_image("normal", lambda: normal, 0, 1200)  # a fresh worker
        assert Image.open(io.BytesIO(again.data)).width == 1200


def test_a_document_goes_to_the_renderer_as_raw_bytes_not_pickled_with_its_job(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Pickling the document with its job copied it whole in the server (and once more in the
    # worker): a 20 MB upload's render check cost 20 MB more resident in each.
    from multiprocessing.connection import Connection

    from core.rendering import RenderBudget, RenderPool

    pickled: list[object] = []
    raw: list[int] = []
    send, send_bytes = Connection.send, Connection.send_bytes

    def spy_send(self: Connection, obj: object) -> None:
        pickled.append(obj)
        send(self, obj)

    def spy_send_bytes(self: Connection, buf: bytes, *args: int) -> None:
        raw.append(len(buf))
        send_bytes(self, buf, *args)

    monkeypatch.setattr(Connection, "send", spy_send)
    monkeypatch.setattr(Connection, "send_bytes", spy_send_bytes)
    pdf = make_pdf(pages=3, size_target=300_000)
    with RenderPool(RenderBudget(workers=1)) as pool:
        assert pool.check(pdf, name="契約書.pdf") == 3
        png = pool.png(("doc", 1), pdf, 2, 0.5)  # a job for a document not open there
    assert Image.open(io.BytesIO(png)).size[0] > 0
    jobs = [job for job in pickled if isinstance(job, tuple)]
    assert jobs and not any(isinstance(part, bytes | bytearray) for job in jobs for part in job)
    assert raw.count(len(pdf)) == sum(1 for job in jobs if job[2]) >= 2
