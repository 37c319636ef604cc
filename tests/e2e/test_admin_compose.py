"""Create-and-send in headless Chromium: a sender adds a contact to the address book, uploads
two PDFs, picks the contractor from the address book and types the official, drags a text box
onto page 1 for the contractor and sends; the contractor opens the mailed link and finds the
box where it was drawn. Screenshots of each page land in the test's temporary folder."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from playwright.sync_api import BrowserContext, Page, expect
from sqlalchemy import select

from core.model import AddressBookEntry, Envelope, Field
from core.states import EnvelopeState
from gateway.pages.render import PageBox, rect_at
from tests.e2e.conftest import Site, link_in
from tests.e2e.test_admin_pages import PASSWORD, _login, _staff
from tests.e2e.test_signing_pages import _open_documents
from tests.fixtures.pdfs import make_pdf, with_page_box

SENDER = "compose@city.example.jp"
CONTRACTOR = "ichiro-compose@takahashi.example.co.jp"
OFFICIAL = "shicho-compose@city.example.jp"
A4 = (0.0, 0.0, 595.2756, 841.8898)  # the contract's visible page: x1, y1, x2, y2 in points
CROP = (30.0, 40.0, 560.0, 800.0)  # the acceptance's, away from the origin (a cropped export)
# ... and the acceptance is shown turned (/Rotate 90, a landscape scan): its image is 760 x 530
# points and the boxes drawn on it are stored in user space.
TURNED = PageBox(*CROP, 90)
MM = 72 / 25.4


def _add_contact(page: Page, site: Site) -> None:
    page.click("nav >> text=アドレス帳")
    page.wait_for_url(f"{site.url}/admin/address-book")
    form = page.locator("#contact-form")
    form.locator("input[name=company]").fill("株式会社髙橋建設")
    form.locator("input[name=name]").fill("髙橋 一郎")
    form.locator("input[name=email]").fill(CONTRACTOR)
    form.locator("input[name=department]").fill("工事部")
    page.click("#save-contact")
    expect(page.locator("#contacts tbody")).to_contain_text(CONTRACTOR)
    site.shot(page, "address-book")


def _party_row(page: Page, number: int) -> dict[str, object]:
    row = page.locator("#party-rows tr").nth(number - 1)
    return {name: row.locator(f"[name=party_{name}]") for name in ("role", "pick", "name", "code")}


def _step1(page: Page, site: Site, tmp_path: Path) -> None:
    page.click("#new-envelope")
    page.wait_for_url(f"{site.url}/admin/envelopes/new")
    page.fill("#title", "市道２号線側溝整備工事")
    page.fill("#counterparty", "株式会社髙橋建設")
    page.fill("#amount", "12,540,000")
    page.fill("#transaction_date", "2026-05-01")
    page.fill("#deadline", "2026-05-12")
    page.select_option("#contract_type", "other")
    contract, acceptance = tmp_path / "工事請負契約書.pdf", tmp_path / "請書.pdf"
    contract.write_bytes(make_pdf(pages=2, title="工事請負契約書"))
    acceptance.write_bytes(
        with_page_box(make_pdf(pages=1, title="請書"), crop=CROP, rotate=TURNED.rotation)
    )
    page.set_input_files("#documents", [str(contract), str(acceptance)])

    rows = page.locator("#party-rows tr")
    # 1: the contractor, picked from the address book (the row fills itself). The book is larger
    # than what the page lists, so the picker asks the server as the sender types.
    expect(page.locator(f"#contacts option[data-email='{CONTRACTOR}']")).to_have_count(0)
    rows.nth(0).locator("[name=party_pick]").fill(f"株式会社髙橋建設 髙橋 一郎 <{CONTRACTOR}>")
    expect(rows.nth(0).locator("[name=party_name]")).to_have_value("髙橋 一郎")
    expect(rows.nth(0).locator("[name=party_email]")).to_have_value(CONTRACTOR)
    rows.nth(0).locator("[name=party_code]").fill("2468")
    # 2: the buyer's official, typed.
    rows.nth(1).locator("[name=party_company]").fill("開発市長")
    rows.nth(1).locator("[name=party_name]").fill("開発 太郎")
    rows.nth(1).locator("[name=party_email]").fill(OFFICIAL)
    # (the official's access code is forgotten at first)
    # A cc added, moved up to second place and removed again: the numbers follow.
    page.click("#add-party")
    expect(rows).to_have_count(4)
    rows.nth(3).locator("[name=party_role]").select_option("cc")
    rows.nth(3).locator("[name=party_name]").fill("写し 送付先")
    rows.nth(3).locator(".move-up").click()
    rows.nth(2).locator(".move-up").click()
    expect(rows.nth(1).locator("[name=party_name]")).to_have_value("写し 送付先")
    expect(rows.nth(1).locator(".order")).to_have_text("2")
    site.shot(page, "compose-step1")
    rows.nth(1).locator(".remove-row").click()
    expect(rows).to_have_count(3)
    expect(rows.nth(1).locator("[name=party_name]")).to_have_value("開発 太郎")
    expect(page.locator("#party-rows .order")).to_have_text(["1", "2", "3"])
    page.click("#to-fields")
    expect(page.locator("#problems")).to_contain_text(
        "2番目の署名者のアクセスコードを指定してください"
    )
    # What was entered is kept, the PDFs too: only the code is missing.
    expect(page.locator("#kept-documents")).to_contain_text("工事請負契約書.pdf（2ページ）")
    expect(rows.nth(0).locator("[name=party_code]")).to_have_value("2468")
    site.shot(page, "compose-step1-refused")
    rows.nth(1).locator("[name=party_code]").fill("3333")
    page.click("#to-fields")
    page.wait_for_url(re.compile(r".*/admin/envelopes/new/[0-9a-f]{32}/fields$"))


def _type_a_box(page: Page, site: Site) -> None:
    """The no-mouse way: the official's date box typed in millimetres on the second document,
    after a page number the document does not have is refused."""
    page.click("#by-numbers summary")
    page.select_option("#new_party", "1")
    page.fill("#new_label", "記入日")
    page.select_option("#new_document", "1")
    for field, value in (("page", "9"), ("x", "20"), ("y", "30"), ("w", "50"), ("h", "10")):
        page.fill(f"#new_{field}", value)
    page.click("#add-box")
    expect(page.locator("#problems")).to_contain_text("ページは1～1で指定してください")
    expect(page.locator("#new_label")).to_have_value("記入日")  # kept to correct
    site.shot(page, "compose-step2-refused")
    page.fill("#new_page", "1")
    page.click("#add-box")
    expect(page.locator("#boxes tbody tr")).to_have_count(1)
    expect(page.locator("#doc-1 .placed-box")).to_have_count(1)
    expect(page.locator("#new_label")).to_have_value("")


def _drag(page: Page, document: int, start: tuple[float, float], end: tuple[float, float]) -> None:
    """Drag with the mouse on page 1 of a document, between fractions of its image measured
    from the top-left corner."""
    page.click(f".tab >> nth={document}")
    target = page.locator(f".compose-page[data-doc='{document}'][data-page='1']")
    target.scroll_into_view_if_needed()
    box = target.bounding_box()
    assert box is not None
    # The mouse only reaches what is in the viewport: centre the drag in it.
    middle = box["y"] + (start[1] + end[1]) / 2 * box["height"]
    page.evaluate("dy => window.scrollBy(0, dy)", middle - 450)
    box = target.bounding_box()
    assert box is not None
    page.mouse.move(box["x"] + start[0] * box["width"], box["y"] + start[1] * box["height"])
    page.mouse.down()
    page.mouse.move(box["x"] + end[0] * box["width"], box["y"] + end[1] * box["height"], steps=8)
    page.mouse.up()


def _dragged_rect(
    visible: PageBox, start: tuple[float, float], end: tuple[float, float]
) -> tuple[float, float, float, float]:
    """Where a drag between fractions of the (turned) image lands in PDF user space."""
    width, height = visible.size
    return rect_at(
        visible,
        start[0] * width,
        start[1] * height,
        (end[0] - start[0]) * width,
        (end[1] - start[1]) * height,
    )


def test_compose_with_a_dragged_text_box(
    site: Site, context: BrowserContext, tmp_path: Path
) -> None:
    _staff(site, SENDER, "契約課")
    page = context.new_page()
    script_errors: list[str] = []
    page.on("pageerror", lambda error: script_errors.append(str(error)))
    _login(page, site, SENDER, PASSWORD)
    page.wait_for_url(f"{site.url}/admin/envelopes")
    with site.gateway.sessions() as session:  # a book longer than the picker's first 200
        session.add_all(
            AddressBookEntry(
                company=f"あおば設備{i:03d}", name="担当 者", email=f"c{i}@aoba.example.jp"
            )
            for i in range(250)
        )
        session.commit()
    _add_contact(page, site)
    page.click("nav >> text=契約一覧・検索")
    _step1(page, site, tmp_path)

    page.wait_for_function(
        "Array.from(document.querySelectorAll('.doc:not([hidden]) img'))"
        ".every(i => i.complete && i.naturalWidth > 0)"
    )
    expect(page.locator(".tab")).to_have_count(2)
    site.shot(page, "compose-step2")
    _type_a_box(page, site)
    # The official's seal box on the cropped acceptance, then the contractor's on the contract.
    page.select_option("#new_party", "1")
    page.fill("#new_label", "押印欄")
    seal = ((0.70, 0.80), (0.90, 0.90))
    _drag(page, 1, *seal)
    expect(page.locator("#doc-1 .placed-box")).to_have_count(2)
    # Shown where it was drawn on the turned image (compose.js turns user space back).
    shown = page.locator("#doc-1 .placed-box", has_text="押印欄").bounding_box()
    sheet = page.locator("#doc-1 .compose-page").bounding_box()
    assert shown is not None and sheet is not None
    assert (shown["x"] - sheet["x"]) / sheet["width"] == pytest.approx(seal[0][0], abs=0.01)
    assert (shown["y"] - sheet["y"]) / sheet["height"] == pytest.approx(seal[0][1], abs=0.01)
    assert shown["width"] / sheet["width"] == pytest.approx(0.20, abs=0.01)
    assert shown["height"] / sheet["height"] == pytest.approx(0.10, abs=0.01)
    site.shot(page, "compose-dragged-cropped")
    page.select_option("#new_party", "0")
    page.fill("#new_label", "現場代理人氏名")
    start, end = (0.50, 0.12), (0.85, 0.16)
    _drag(page, 0, start, end)
    expect(page.locator("#doc-0 .placed-box")).to_have_count(1)
    expect(page.locator("#boxes tbody")).to_contain_text("現場代理人氏名")
    expect(page.locator("#box-count")).to_have_text("3")
    site.shot(page, "compose-dragged")
    page.click("#send")
    page.wait_for_url(re.compile(r".*/admin/envelopes/[0-9a-f]{32}$"))
    expect(page.locator("#state")).to_have_text("署名依頼中")
    site.shot(page, "compose-sent")
    assert script_errors == []

    envelope_id = page.url.rsplit("/", 1)[1]
    with site.gateway.sessions() as session:
        envelope = session.get(Envelope, envelope_id)
        assert envelope is not None and envelope.state is EnvelopeState.SENT
        assert [p.email for p in envelope.parties] == [CONTRACTOR, OFFICIAL]
        placed = {
            f.label: (f.document.position, f.page, f.party.email, (f.x1, f.y1, f.x2, f.y2))
            for f in session.scalars(select(Field).where(Field.envelope_id == envelope_id))
        }
    assert sorted(placed) == ["押印欄", "現場代理人氏名", "記入日"]
    # typed: 20 mm from the displayed left, 30 mm from the displayed top, 50 x 10 mm as shown;
    # on the page turned 90 degrees that is x from 30 + 30 mm, y from 40 + 20 mm, 10 x 50 mm
    typed = (CROP[0] + 30 * MM, CROP[1] + 20 * MM, CROP[0] + 40 * MM, CROP[1] + 70 * MM)
    for label, where, expected in (
        ("現場代理人氏名", (0, 1, CONTRACTOR), _dragged_rect(PageBox(*A4), start, end)),
        ("押印欄", (1, 1, OFFICIAL), _dragged_rect(TURNED, *seal)),
        ("記入日", (1, 1, OFFICIAL), typed),
    ):
        assert placed[label][:3] == where, label
        # Within 2 points (about a pixel of the 110 dpi image at this width) of the drag.
        rect = placed[label][3]
        assert all(abs(a - b) < 2 for a, b in zip(rect, expected, strict=True)), (label, rect)

    # The contractor opens the mailed link and finds the box where it was drawn.
    (mail,) = site.inbox.wait_for(CONTRACTOR)
    signer = context.new_page()
    _open_documents(signer, site, link_in(mail), "2468", "compose-contractor")
    expect(signer.locator(".field-box")).to_have_count(1)  # the official's box is not theirs
    field_box = signer.get_by_label("現場代理人氏名", exact=True)
    expect(field_box).to_be_visible()
    where = field_box.bounding_box()
    sheet = signer.locator("#doc-0 .page").first.bounding_box()
    assert where is not None and sheet is not None
    left = (where["x"] - sheet["x"]) / sheet["width"]
    top = (where["y"] - sheet["y"]) / sheet["height"]
    assert abs(left - start[0]) < 0.01 and abs(top - start[1]) < 0.01, (left, top)
    field_box.fill("鈴木 次郎")
    site.shot(signer, "compose-contractor-fills")
