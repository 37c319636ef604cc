"""A contractor on a phone (and a desktop): text boxes that leave the printed page readable, a
value too long for its box refused with how much fits, the completion certificate offered on
the last signer's done page, and whom to contact on the page of a closed link; a clerk finds
the envelope by its management number and sees whom it waits for."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from playwright.sync_api import BrowserContext, Page, expect

from core.envelopes.lifecycle import get_envelope
from core.model import VisibilityScope
from core.staff.accounts import PasswordPolicy, add_staff, set_password
from tests.e2e.conftest import Site, link_in, wait_for_visible_images
from tests.fixtures.gateway import b64
from tests.fixtures.pdfs import make_pdf

SIZES = {"desktop": {"width": 1280, "height": 900}, "phone": {"width": 390, "height": 844}}
PASSWORD = "Kei-yaku-2026!"
BOX = [300, 700, 372, 716]  # 72 x 16 pt: about 14 full-width characters at the smallest size


def _one_signer(site: Site, email: str) -> dict:
    body = {
        "title": "庁舎清掃業務委託",
        "contract_type": "other",
        "documents": [{"name": "請書.pdf", "content_base64": b64(make_pdf(pages=1))}],
        "parties": [
            {"role": "signer", "name": "髙橋 一郎", "email": email,
             "company": "株式会社髙橋建設", "access_code": "24681357"},
        ],
        "fields": [{"document": 0, "party": 0, "label": "記入日", "page": 1, "rect": BOX}],
        "metadata": {"deadline": "2026-04-10", "amount": 980000},
        "send": True,
    }  # fmt: skip
    answer = site.api.post("/api/v1/envelopes", json=body)
    assert answer.status_code == 201, answer.text
    return answer.json()


def _alpha(color: str) -> float:
    """The alpha of a computed CSS colour (rgb() is opaque)."""
    parts = re.findall(r"[\d.]+", color)
    return float(parts[3]) if color.startswith("rgba") else 1.0


@pytest.mark.parametrize("size", ["desktop", "phone"])
def test_boxes_show_the_page_a_long_value_is_refused_and_the_certificate_is_offered(
    site: Site, context: BrowserContext, size: str
) -> None:
    email = f"ichiro-box-{size}@example.co.jp"
    envelope = _one_signer(site, email)
    (mail,) = site.inbox.wait_for(email)
    assert "署名期限: 2026年04月10日まで(日本時間)" in mail.get_body().get_content()  # type: ignore[union-attr]
    page: Page = context.new_page()
    page.set_viewport_size(SIZES[size])  # type: ignore[arg-type]
    page.goto(link_in(mail))
    page.fill("#access_code", "24681357")
    page.click("#next")
    page.wait_for_url("**/documents")
    wait_for_visible_images(page)

    box = page.get_by_label("記入日", exact=True)
    box.scroll_into_view_if_needed()
    style = box.evaluate(
        "b => { const s = getComputedStyle(b);"
        " return [s.backgroundColor, s.borderTopStyle, s.fontSize]; }"
    )
    assert _alpha(style[0]) <= 0.3, style  # the printed page shows through
    assert style[1] == "dashed"
    site.shot(page, f"box-{size}-empty")

    box.fill("令" * 30)  # 30 full-width characters cannot fit 72 pt at 5 pt
    page.click("#complete-button")
    page.click("#confirm-complete")
    expect(page.locator(".error")).to_contain_text("「記入日」が枠に収まりません。")
    expect(page.locator(".error")).to_contain_text("全角でおよそ13文字以内")
    site.shot(page, f"box-{size}-too-long")

    page.get_by_label("記入日", exact=True).fill("令和8年4月1日")
    page.click("#complete-button")
    page.click("#confirm-complete")
    page.wait_for_url("**/done")
    expect(page.locator("h1")).to_have_text("署名手続きが完了しました", timeout=30_000)
    certificate = page.locator("#certificate")
    expect(certificate).to_be_visible()
    with page.expect_download() as info:
        certificate.click()
    download = info.value
    assert download.suggested_filename == f"締結証明書_{envelope['management_number']}.pdf"
    with open(download.path(), "rb") as pdf:
        assert pdf.read(5) == b"%PDF-"
    site.shot(page, f"done-{size}")

    # The value is in the signed PDF whole, at a legible size.
    with site.gateway.sessions() as session:
        stored = get_envelope(session=session, envelope_id=envelope["id"])
        (field,) = stored.fields
        assert field.value == "令和8年4月1日"  # drawn at >= 5 pt: tests/core/test_text_boxes.py

    # The link, opened again without the session: closed, and whom to ask.
    other = context.browser.new_context(locale="ja-JP", viewport=SIZES[size])  # type: ignore[union-attr, arg-type]
    try:
        closed = other.new_page()
        closed.goto(link_in(mail))
        expect(closed.locator("#contact")).to_contain_text("お問い合わせ先")
        expect(closed.locator("#contact")).to_contain_text("開発市 契約課")
        site.shot(closed, f"closed-{size}")
    finally:
        other.close()


@pytest.mark.parametrize("size", ["desktop", "phone"])
def test_a_clerk_finds_by_number_whom_it_waits_for_and_its_deadline(
    site: Site, context: BrowserContext, size: str
) -> None:
    clerk = f"clerk-list-{size}@city.example.jp"
    with site.gateway.sessions() as session:
        staff = add_staff(session=session, name="契約 係員", email=clerk, roles="sender",
                          scope=VisibilityScope.ALL, department="契約課", actor="t")  # fmt: skip
        set_password(session=session, staff=staff, password=PASSWORD, policy=PasswordPolicy(),
                     actor="t")  # fmt: skip
        session.commit()
    envelope = _one_signer(site, f"ichiro-list-{size}@example.co.jp")
    number = envelope["management_number"]
    page = context.new_page()
    page.set_viewport_size(SIZES[size])  # type: ignore[arg-type]
    page.goto(f"{site.url}/admin/envelopes")
    page.fill("#email", clerk)
    page.fill("#password", PASSWORD)
    page.click("#login")
    page.wait_for_url("**/admin/envelopes")
    # Typed as on a Japanese keyboard: full width, lower case, only the distinctive part.
    typed = number.rsplit("-", 1)[1].lower().translate({c: c + 0xFEE0 for c in range(0x21, 0x7F)})
    page.get_by_label("管理番号").fill(typed)
    page.click("#do-search")
    rows = page.locator("#results tbody tr")
    expect(rows).to_have_count(1)
    expect(rows.first.locator("td").first).to_have_text(number)
    expect(rows.first.locator(".waiting-on")).to_have_text(
        "1. 株式会社髙橋建設 髙橋 一郎（署名者）"
    )
    expect(rows.first.locator(".deadline")).to_have_text("2026-04-10")
    rows.first.locator(".waiting-on").scroll_into_view_if_needed()
    expect(rows.first.locator(".waiting-on")).to_be_in_viewport()
    site.shot(page, f"list-{size}")


CORPUS = Path(__file__).resolve().parents[1] / "corpus" / "pdfs"
# 612 x 792 points in user space with /Rotate 90 on the page (a landscape scan's kind of page):
# shown 792 wide, 612 high, the user-space origin at the top left and x growing downwards.
TURNED_BOX = [100, 100, 130, 300]  # user space, as the API takes it: 30 wide, 200 high
TURNED_SHOWN = (100 / 792, 100 / 612, 200 / 792, 30 / 612)  # left, top, width, height of the image


@pytest.mark.parametrize("size", ["desktop", "phone"])
def test_a_box_on_a_turned_page_sits_over_its_spot_and_is_filled_upright(
    site: Site, context: BrowserContext, size: str
) -> None:
    email = f"ichiro-turned-{size}@example.co.jp"
    data = (CORPUS / "qpdf-inherited-rotate.pdf").read_bytes()
    body = {
        "title": "庁舎清掃業務委託",
        "contract_type": "other",
        "documents": [{"name": "請書.pdf", "content_base64": b64(data)}],
        "parties": [
            {"role": "signer", "name": "髙橋 一郎", "email": email,
             "company": "株式会社髙橋建設", "access_code": "24681357"},
        ],
        "fields": [{"document": 0, "party": 0, "label": "記入日", "page": 1, "rect": TURNED_BOX}],
        "metadata": {"deadline": "2026-04-10", "amount": 980000},
        "send": True,
    }  # fmt: skip
    created = site.api.post("/api/v1/envelopes", json=body)
    assert created.status_code == 201, created.text  # was 422 (回転して表示されるページ)
    (mail,) = site.inbox.wait_for(email)
    page: Page = context.new_page()
    page.set_viewport_size(SIZES[size])  # type: ignore[arg-type]
    page.goto(link_in(mail))
    page.fill("#access_code", "24681357")
    page.click("#next")
    page.wait_for_url("**/documents")
    wait_for_visible_images(page)

    box = page.get_by_label("記入日", exact=True)
    box.scroll_into_view_if_needed()
    image = page.locator(".page img").first
    # The image is the page as displayed: landscape.
    natural = image.evaluate("i => [i.naturalWidth, i.naturalHeight]")
    assert natural[0] / natural[1] == pytest.approx(792 / 612, abs=0.01)
    shown, sheet = box.bounding_box(), image.bounding_box()
    assert shown is not None and sheet is not None
    left, top, width, height = TURNED_SHOWN
    assert (shown["x"] - sheet["x"]) / sheet["width"] == pytest.approx(left, abs=0.005)
    assert (shown["y"] - sheet["y"]) / sheet["height"] == pytest.approx(top, abs=0.005)
    assert shown["width"] / sheet["width"] == pytest.approx(width, abs=0.005)
    assert shown["height"] / sheet["height"] == pytest.approx(height, abs=0.005)
    site.shot(page, f"turned-{size}-empty")

    # 200 points wide as displayed (30 in user space): a date fits.
    box.fill("令和8年4月1日")
    page.click("#complete-button")
    page.click("#confirm-complete")
    page.wait_for_url("**/done")
    expect(page.locator("h1")).to_have_text("署名手続きが完了しました", timeout=30_000)
    with site.gateway.sessions() as session:
        stored = get_envelope(session=session, envelope_id=created.json()["id"])
        (field,) = stored.fields
        assert field.value == "令和8年4月1日"
        assert (field.x1, field.y1, field.x2, field.y2) == tuple(TURNED_BOX)
