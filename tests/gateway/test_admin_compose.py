"""Create-and-send from the staff pages over HTTP (SQLite and PostgreSQL): two steps, the
address book, text boxes placed in points or typed in millimetres, access codes, the mail to
the first party; and what is refused (roles, CSRF, another department, a bad PDF, a box off the
page, another staff member's draft)."""

from __future__ import annotations

import datetime as dt
import io
import os
import re
import time
from collections.abc import Callable
from typing import Any

import httpx
import pytest
from PIL import Image
from sqlalchemy import select

from core.blobs import BlobStore
from core.errors import NotFoundError, StateError
from core.model import (
    AccessCode,
    AuditEvent,
    Delivery,
    Envelope,
    Field,
    Staff,
    VisibilityScope,
    utcnow,
)
from core.states import EnvelopeState
from gateway.admin.compose import PlacedBox, check_box
from gateway.admin.compose_drafts import (
    LIFETIME,
    ComposeDraft,
    DraftDocument,
    DraftParty,
    DraftStore,
)
from gateway.pages.render import PageBox, PageRenderer, displayed_rect, placement, rect_at
from gateway.runtime import access_code_policy
from tests.fixtures.gateway import complete_by_services
from tests.fixtures.pdfs import make_pdf, with_page_box
from tests.gateway.conftest import LiveGateway
from tests.gateway.test_admin_pages import _csrf, _envelope, _login, _staff

NEW = "/admin/envelopes/new"
A4_HEIGHT = 841.8898  # points
MM = 72 / 25.4


def _facts(**overrides: str) -> dict[str, Any]:
    return {
        "title": "市道１号線舗装補修工事",
        "management_number": "",
        "counterparty": "株式会社髙橋建設",
        "amount": "31,389,000",
        "transaction_date": "2026-04-01",
        "deadline": "2026-04-10",
        "department": "",
        "contract_type": "other",
        "contractor_number": "",
        **overrides,
    }


def _parties(*rows: tuple[str, str, str, str, str, str]) -> dict[str, list[str]]:
    """Party rows (role, pick, company, name, email, code) as the form posts them."""
    columns = ("role", "pick", "company", "name", "email", "code")
    return {f"party_{c}": [row[i] for row in rows] for i, c in enumerate(columns)}


THREE = _parties(
    ("approver", "", "開発市 契約課", "契約 花子", "kacho@city.example.jp", "1111"),
    # Picked from the address book and nothing typed: the server fills the row.
    ("signer", "株式会社髙橋建設 髙橋 一郎 <ichiro@takahashi.example.co.jp>", "", "", "", "2468"),
    ("signer", "", "開発市長", "開発 太郎", "shicho@city.example.jp", "3333"),
)


def _pdfs(*pdfs: bytes) -> list[tuple[str, tuple[str, bytes, str]]]:
    names = ["工事請負契約書.pdf", "請書.pdf", "別紙.pdf"]
    return [("documents", (names[i], data, "application/pdf")) for i, data in enumerate(pdfs)]


def _step1(
    client: httpx.Client, data: dict[str, Any], files: list[Any] | None = None
) -> httpx.Response:
    token = _csrf(client.get(NEW).text)
    return client.post(
        NEW,
        data={"csrf_token": token, **data},
        files=files if files is not None else _pdfs(make_pdf(pages=2), make_pdf(pages=1)),
    )


def _box(document: int, party: int, page: int, rect: tuple[float, ...], label: str) -> dict:
    x1, y1, x2, y2 = rect
    return {
        "box_document": document,
        "box_party": party,
        "box_page": page,
        "box_x1": x1,
        "box_y1": y1,
        "box_x2": x2,
        "box_y2": y2,
        "box_label": label,
        "box_required": "1",
        "box_max": 40,
    }


def _hidden_boxes(html: str) -> dict[str, list[str]]:
    """The placed boxes' hidden inputs of a step 2 page, as the form would post them again."""
    boxes: dict[str, list[str]] = {}
    for name, value in re.findall(r'<input type="hidden" name="(box_\w+)" value="([^"]*)">', html):
        boxes.setdefault(name, []).append(value)
    return boxes


def _add_contact(client: httpx.Client) -> None:
    token = _csrf(client.get("/admin/address-book").text)
    contact = {
        "company": "株式会社髙橋建設",
        "name": "髙橋 一郎",
        "email": "ichiro@takahashi.example.co.jp",
        "csrf_token": token,
    }
    assert client.post("/admin/address-book", data=contact).status_code == 303


def test_sender_creates_and_sends(live_gateway: Callable[..., LiveGateway]) -> None:
    live = live_gateway()
    _staff(live, "tanaka@city.example.jp", "契約課")
    with live.client() as client:
        assert _login(client, "tanaka@city.example.jp").status_code == 303
        assert 'href="/admin/envelopes/new"' in client.get("/admin/envelopes").text
        _add_contact(client)
        form = client.get(NEW)
        assert form.status_code == 200
        assert (
            'value="株式会社髙橋建設 髙橋 一郎 &lt;ichiro@takahashi.example.co.jp&gt;"' in form.text
        )
        assert re.search(r'name="department"[^>]* readonly value="契約課"', form.text)

        step1 = _step1(client, {**_facts(), **THREE})
        assert step1.status_code == 303, step1.text
        fields_url = step1.headers["location"]
        draft_id = fields_url.split("/")[-2]
        step2 = client.get(fields_url)
        assert step2.status_code == 200
        assert step2.text.count('class="page compose-page"') == 3  # 2 + 1 pages
        assert 'data-top="841.8' in step2.text and 'data-left="0.0"' in step2.text
        image = client.get(f"{NEW}/{draft_id}/documents/1/pages/1.png")
        assert image.status_code == 200 and image.content.startswith(b"\x89PNG")

        # The contractor's box as the page's script posts it (PDF points) ...
        contractor_box = _box(0, 1, 1, (300.5, 700.25, 500.0, 722.0), "現場代理人氏名")
        token = _csrf(step2.text)
        # ... and the official's typed in millimetres from the top-left corner, no mouse.
        typed = client.post(
            fields_url,
            data={
                "csrf_token": token,
                **contractor_box,
                "action": "add",
                "new_document": "1",
                "new_page": "1",
                "new_party": "2",
                "new_x": "20",
                "new_y": "30",
                "new_w": "50",
                "new_h": "10",
                "new_label": "記入日",
                "new_required": "1",
                "new_max": "20",
            },
        )
        assert typed.status_code == 200, typed.text
        boxes = _hidden_boxes(typed.text)
        assert boxes["box_label"] == ["現場代理人氏名", "記入日"]
        assert [round(float(boxes[k][1]), 2) for k in ("box_x1", "box_y1", "box_x2", "box_y2")] == [
            round(20 * MM, 2),
            round(A4_HEIGHT - 40 * MM, 2),
            round(70 * MM, 2),
            round(A4_HEIGHT - 30 * MM, 2),
        ]
        sent = client.post(fields_url, data={"csrf_token": token, **boxes, "action": "send"})
        assert sent.status_code == 303, sent.text
        envelope_id = sent.headers["location"].rsplit("/", 1)[1]
        detail = client.get(sent.headers["location"])
        assert detail.status_code == 200
        assert re.search(r'id="state">([^<]+)<', detail.text).group(1) == "署名依頼中"  # type: ignore[union-attr]
        assert client.get(fields_url).status_code == 404  # the draft is used up

    policy = access_code_policy(live.gateway.settings)
    with live.gateway.sessions() as session:
        envelope = session.get(Envelope, envelope_id)
        assert envelope is not None
        assert envelope.state is EnvelopeState.SENT
        assert (envelope.department, envelope.creator, envelope.creator_email) == (
            "契約課",
            "職員 t",
            "tanaka@city.example.jp",
        )
        assert (envelope.counterparty, int(envelope.amount or 0)) == ("株式会社髙橋建設", 31389000)
        assert [d.name for d in envelope.documents] == ["工事請負契約書.pdf", "請書.pdf"]
        assert [(p.role.value, p.email, p.company) for p in envelope.parties] == [
            ("approver", "kacho@city.example.jp", "開発市 契約課"),
            ("signer", "ichiro@takahashi.example.co.jp", "株式会社髙橋建設"),
            ("signer", "shicho@city.example.jp", "開発市長"),
        ]
        placed = {
            f.label: (f.document.position, f.page, f.party.routing_order, f.x1, f.y1, f.x2, f.y2)
            for f in session.scalars(select(Field).where(Field.envelope_id == envelope_id))
        }
        assert placed["現場代理人氏名"] == (0, 1, 2, 300.5, 700.25, 500.0, 722.0)
        assert placed["記入日"][:3] == (1, 1, 3)
        codes = {c.party_id: c.code_hash for c in session.scalars(select(AccessCode))}
        for party, code in zip(envelope.parties, ("1111", "2468", "3333"), strict=True):
            assert policy.matches(code, codes[party.id])
        deliveries = session.scalars(select(Delivery)).all()
        assert [(d.payload["kind"], d.payload.get("party_id")) for d in deliveries] == [
            ("signing_request", envelope.parties[0].id)
        ]
        actors = {
            e.action: e.actor
            for e in session.scalars(
                select(AuditEvent).where(AuditEvent.envelope_id == envelope_id)
            )
        }
        assert actors["envelope.created"] == actors["envelope.sent"] == "tanaka@city.example.jp"
    complete_by_services(live.gateway, envelope_id)
    with live.gateway.sessions() as session:  # concluded with every records-law fact
        envelope = session.get_one(Envelope, envelope_id)
        assert envelope.state is EnvelopeState.COMPLETED
        assert (envelope.transaction_date, envelope.amount, envelope.counterparty) == (
            dt.date(2026, 4, 1),
            31389000,
            "株式会社髙橋建設",
        )


def test_what_compose_refuses(live_gateway: Callable[..., LiveGateway]) -> None:
    live = live_gateway()
    _staff(live, "tanaka@city.example.jp", "契約課")
    _staff(live, "sato@city.example.jp", "土木課", roles="signer")
    _staff(live, "kimura@city.example.jp", "契約課")
    _staff(live, "admin@city.example.jp", "総務課", roles="admin", scope=VisibilityScope.ALL)
    with live.client() as client:
        assert (
            client.get(NEW, follow_redirects=False).headers["location"].startswith("/admin/login")
        )
        assert _login(client, "sato@city.example.jp").status_code == 303  # a signer only
        token = _csrf(client.get("/admin/envelopes").text)
        assert 'href="/admin/envelopes/new"' not in client.get("/admin/envelopes").text
        assert client.get(NEW).status_code == 403
        refused = client.post(NEW, data={"csrf_token": token, **_facts(), **THREE})
        assert refused.status_code == 403
        assert client.get(f"{NEW}/{'0' * 32}/fields").status_code == 403

    with live.client() as client:
        assert _login(client, "tanaka@city.example.jp").status_code == 303
        unknown = _step1(client, {**_facts(), **THREE})
        assert unknown.status_code == 422
        assert "2番目の署名者: アドレス帳に「株式会社髙橋建設 髙橋 一郎" in unknown.text
        _add_contact(client)
        no_csrf = client.post(NEW, data={**_facts(), **THREE}, files=_pdfs(make_pdf(pages=1)))
        assert no_csrf.status_code == 403

        # A construction contract without the contractor's recorded consent is refused, and
        # the page says why (建設業法19条3項); so is a form without a contract type.
        construction = _step1(
            client, {**_facts(contract_type="construction", contractor_number="7000012050002"),
                     **THREE},
        )  # fmt: skip
        assert construction.status_code == 422
        assert "建設工事の請負契約は、受注者の事前の承諾" in construction.text
        untyped = _step1(client, {**_facts(contract_type=""), **THREE})
        assert untyped.status_code == 422 and "契約種別" in untyped.text

        other = _step1(client, {**_facts(department="土木課"), **THREE})
        assert other.status_code == 422 and "所属以外の部署の契約は作成できません" in other.text

        bad_pdf = _step1(
            client,
            {**_facts(), **THREE},
            files=[("documents", ("契約書.pdf", b"this is not a PDF", "application/pdf"))],
        )
        assert bad_pdf.status_code == 422
        assert "PDFファイルではありません" in bad_pdf.text
        assert 'value="市道１号線舗装補修工事"' in bad_pdf.text  # what was entered is kept
        assert 'value="2468"' in bad_pdf.text

        no_code = dict(THREE, party_code=["1111", "", "3333"])
        missing = _step1(client, {**_facts(), **no_code})
        assert missing.status_code == 422
        assert "2番目の署名者のアクセスコードを指定してください" in missing.text
        # The PDFs were kept: the corrected form needs no new upload.
        draft = re.search(r'name="draft" value="([0-9a-f]{32})"', missing.text)
        assert draft and "工事請負契約書.pdf（2ページ）" in missing.text
        corrected = client.post(
            NEW,
            data={"csrf_token": _csrf(missing.text), "draft": draft.group(1), **_facts(), **THREE},
        )
        assert corrected.status_code == 303, corrected.text
        fields_url = corrected.headers["location"]
        step2 = client.get(fields_url).text
        assert "工事請負契約書.pdf" in step2 and "請書.pdf" in step2

        token = _csrf(step2)
        outside = _box(0, 1, 1, (500, 700, 700, 720), "はみ出し")
        off = client.post(fields_url, data={"csrf_token": token, **outside, "action": "send"})
        assert off.status_code == 422 and "ページの外にはみ出しています" in off.text
        assert _hidden_boxes(off.text)["box_label"] == ["はみ出し"]  # kept to correct
        on_cc = client.post(
            fields_url,
            data={"csrf_token": token, **_box(0, 9, 1, (10, 10, 100, 30), "x"), "action": "send"},
        )
        assert on_cc.status_code == 422 and "承認者または署名者を選んで" in on_cc.text
        typed_off = client.post(
            fields_url,
            data={
                "csrf_token": token,
                "action": "add",
                "new_document": "0",
                "new_page": "3",
                "new_party": "1",
                "new_x": "10",
                "new_y": "10",
                "new_w": "10",
                "new_h": "10",
                "new_label": "日付",
                "new_required": "1",
                "new_max": "20",
            },
        )
        assert typed_off.status_code == 422 and "ページは1～2で指定してください" in typed_off.text
        assert 'value="日付"' in typed_off.text

        with live.client() as someone_else:  # another sender cannot open this draft
            assert _login(someone_else, "kimura@city.example.jp").status_code == 303
            assert someone_else.get(fields_url).status_code == 404
            draft_id = fields_url.split("/")[-2]
            assert someone_else.get(f"{NEW}/{draft_id}/documents/0/pages/1.png").status_code == 404

        # A management number in use is refused on the form.
        used = _step1(client, {**_facts(management_number="KG-TEST-1"), **THREE})
        token = _csrf(client.get(used.headers["location"]).text)
        saved = client.post(used.headers["location"], data={"csrf_token": token, "action": "save"})
        assert saved.status_code == 303
        again = _step1(client, {**_facts(management_number="KG-TEST-1"), **THREE})
        assert again.status_code == 422 and "この管理番号は既に使われています" in again.text

        # The saved draft is sent later from its detail page.
        detail = client.get(saved.headers["location"])
        assert "下書き" in detail.text and 'id="send-draft"' in detail.text
        send = client.post(
            saved.headers["location"] + "/send", data={"csrf_token": _csrf(detail.text)}
        )
        assert send.status_code == 303
        with live.gateway.sessions() as session:
            row = session.scalar(select(Envelope).where(Envelope.management_number == "KG-TEST-1"))
            assert row is not None and row.state is EnvelopeState.SENT

    with live.client() as client:  # an admin files an envelope under any department
        assert _login(client, "admin@city.example.jp").status_code == 303
        assert 'list="departments"' in client.get(NEW).text
        chosen = _step1(client, {**_facts(department="土木課"), **THREE})
        assert chosen.status_code == 303, chosen.text
        token = _csrf(client.get(chosen.headers["location"]).text)
        done = client.post(chosen.headers["location"], data={"csrf_token": token, "action": "save"})
        with live.gateway.sessions() as session:
            envelope = session.get(Envelope, done.headers["location"].rsplit("/", 1)[1])
            assert envelope is not None and envelope.department == "土木課"


def test_page_geometry_follows_the_crop_box_and_takes_turned_pages() -> None:
    renderer = PageRenderer(dpi=72)  # one pixel per point
    cropped = with_page_box(make_pdf(pages=1), crop=(30, 40, 560, 800))
    (page,) = renderer.page_boxes("cropped", lambda: cropped)
    assert page == PageBox(30, 40, 560, 800, 0) and page.size == (530, 760)
    # The page image shows exactly the crop box, top-left first: the title drawn at x=72 pt,
    # baseline y=770 pt in PDF space, is at pixel x 42 and just above pixel row 30.
    image = Image.open(io.BytesIO(renderer.png("cropped", lambda: cropped, 0))).convert("L")
    assert image.size == (530, 760)
    ink = [(x, y) for x in range(0, 200) for y in range(0, 60) if image.getpixel((x, y)) < 128]
    assert (
        ink and min(x for x, _ in ink) in range(41, 46) and max(y for _, y in ink) in range(27, 33)
    )

    rect = rect_at(page, 20 * MM, 30 * MM, 50 * MM, 10 * MM)
    assert rect == pytest.approx(
        (30 + 20 * MM, 800 - 40 * MM, 30 + 70 * MM, 800 - 30 * MM), abs=0.01
    )
    assert placement(page, rect) == pytest.approx(
        {
            "left": 100 * 20 * MM / 530,
            "top": 100 * 30 * MM / 760,
            "width": 100 * 50 * MM / 530,
            "height": 100 * 10 * MM / 760,
        },
        abs=0.01,
    )

    turned = with_page_box(make_pdf(pages=1), rotate=90)
    (sideways,) = renderer.page_boxes("turned", lambda: turned)
    assert sideways.rotation == 90 and sideways.size == pytest.approx((A4_HEIGHT, 595.2756))
    draft = ComposeDraft(
        staff_id="s",
        documents=[DraftDocument("a.pdf", "0" * 32, 1, 1), DraftDocument("b.pdf", "1" * 32, 1, 1)],
        parties=[
            DraftParty("signer", "", "a", "a@example.jp"),
            DraftParty("cc", "", "b", "b@x.jp"),
        ],
    )
    pages = {0: [page], 1: [sideways]}

    def problem(box: PlacedBox) -> str | None:
        try:
            check_box(1, box, draft, pages.__getitem__)
        except StateError as exc:
            return exc.message_ja
        return None

    assert problem(PlacedBox(0, 0, 1, rect, "日付")) is None
    assert "はみ出し" in str(problem(PlacedBox(0, 0, 1, (20, 100, 120, 120), "日付")))  # left of it
    # A page shown turned takes boxes, in user space (refused before the compose and signing
    # pages could show them there): inside its 595-point width, not past it.
    assert problem(PlacedBox(1, 0, 1, (100, 100, 200, 120), "日付")) is None
    assert "はみ出し" in str(problem(PlacedBox(1, 0, 1, (100, 700, 600, 720), "日付")))
    assert "承認者または署名者" in str(problem(PlacedBox(0, 1, 1, rect, "日付")))  # a cc
    assert "小さすぎ" in str(problem(PlacedBox(0, 0, 1, (100, 100, 102, 120), "日付")))
    assert "項目名" in str(problem(PlacedBox(0, 0, 1, rect, "")))


def _ink(image: Image.Image) -> tuple[int, int, int, int]:
    """The bounding box (left, top, right, bottom, pixels) of the dark pixels of ``image``."""
    box = image.convert("L").point(lambda v: 255 if v < 128 else 0).getbbox()
    assert box is not None
    return box


@pytest.mark.parametrize("rotation", [90, 180, 270])
def test_boxes_go_where_the_turned_page_image_shows_them(rotation: int) -> None:
    # The text of the page, found on the upright image and taken into user space, must be found
    # again on the turned image (as pdfium renders it) where displayed_rect puts it; and rect_at,
    # what the compose page's typed form uses, is its inverse.
    renderer = PageRenderer(dpi=72)  # one pixel per point
    upright = with_page_box(make_pdf(pages=1), crop=(30, 40, 560, 800))
    (page,) = renderer.page_boxes("upright", lambda: upright)
    left, top, right, bottom = _ink(
        Image.open(io.BytesIO(renderer.png("upright", lambda: upright, 0)))
    )
    text = (page.left + left, page.top - bottom, page.left + right, page.top - top)

    turned = with_page_box(make_pdf(pages=1), crop=(30, 40, 560, 800), rotate=rotation)
    (sideways,) = renderer.page_boxes("turned", lambda: turned)
    assert sideways.rotation == rotation
    image = Image.open(io.BytesIO(renderer.png("turned", lambda: turned, 0)))
    assert image.size == pytest.approx(sideways.size, abs=1)
    x, y, width, height = displayed_rect(sideways, text)
    assert _ink(image) == pytest.approx((x, y, x + width, y + height), abs=2)
    shown = placement(sideways, text)
    assert shown["left"] == pytest.approx(100 * x / sideways.size[0], abs=0.01)
    assert shown["height"] == pytest.approx(100 * height / sideways.size[1], abs=0.01)
    assert rect_at(sideways, x, y, width, height) == pytest.approx(text, abs=0.01)


def test_every_new_route_checks_login_role_and_csrf(
    live_gateway: Callable[..., LiveGateway],
) -> None:
    live = live_gateway()
    _staff(live, "sato@city.example.jp", "契約課", roles="signer")
    envelope = _envelope(live, "契約課", "株式会社札幌建設")  # a draft the signer can see
    draft = "0" * 32
    senders_only = [f"{NEW}", f"{NEW}/{draft}/fields", f"{NEW}/{draft}/documents/0/pages/1.png"]
    for_all = ["/admin/address-book", "/admin/address-book/export.csv"]
    posts = [
        NEW,
        f"{NEW}/{draft}/fields",
        f"/admin/envelopes/{envelope}/send",
        "/admin/address-book",
        f"/admin/address-book/{draft}/delete",
        "/admin/address-book/import",
    ]
    with live.client() as client:  # logged out
        token = _csrf(client.get("/admin/login").text)
        for path in senders_only + for_all:
            answer = client.get(path, follow_redirects=False)
            assert answer.status_code in (303, 403), path  # page images: 403, no redirect
            assert answer.status_code == 403 or answer.headers["location"].startswith(
                "/admin/login"
            )
        for path in posts:
            assert client.post(path, data={}).status_code == 403, path  # no CSRF token
            answer = client.post(path, data={"csrf_token": token}, follow_redirects=False)
            assert answer.status_code == 303, path
            assert answer.headers["location"].startswith("/admin/login"), path
    with live.client() as client:  # a signer: reads the address book, nothing else here
        assert _login(client, "sato@city.example.jp").status_code == 303
        token = _csrf(client.get("/admin/envelopes").text)
        for path in senders_only:
            assert client.get(path).status_code == 403, path
        for path in for_all:
            assert client.get(path).status_code == 200, path
        for path in posts:
            assert client.post(path, data={}).status_code == 403, path
            assert client.post(path, data={"csrf_token": token}).status_code == 403, path
    with live.gateway.sessions() as session:
        row = session.get(Envelope, envelope)
        assert row is not None and row.state is EnvelopeState.DRAFT


def test_drafts_belong_to_their_maker_and_expire(blobs: BlobStore) -> None:
    store = DraftStore(blobs)
    maker, other = Staff(id="a" * 32), Staff(id="b" * 32)
    pdf_id = store.put_document(b"%PDF-1.7 ...")
    draft = ComposeDraft(
        staff_id=maker.id, title="工事", documents=[DraftDocument("a.pdf", pdf_id, 12, 1)]
    )
    draft_id = store.save(draft)
    assert store.load(draft_id, maker) == draft
    with pytest.raises(NotFoundError):
        store.load(draft_id, other)
    folder = blobs.root / "compose-drafts"
    pdf_file = folder / pdf_id[:2] / pdf_id
    assert pdf_file.exists() and b"%PDF" not in pdf_file.read_bytes()  # encrypted
    assert not blobs.exists(pdf_id)  # apart from the documents
    stale = ComposeDraft(staff_id=maker.id, created_at=(utcnow() - LIFETIME * 2).isoformat())
    with pytest.raises(NotFoundError):
        store.load(store.save(stale), maker)

    a_day_ago = time.time() - LIFETIME.total_seconds() - 60
    os.utime(pdf_file, (a_day_ago, a_day_ago))
    newer = store.save(ComposeDraft(staff_id=maker.id), replaces=draft_id)
    assert not pdf_file.exists()  # storing a draft removes the expired files
    assert not (folder / draft_id[:2] / draft_id).exists()  # and the draft it replaces
    store.discard(newer, store.load(newer, maker))
    assert not (folder / newer[:2] / newer).exists()


def test_compose_sends_nothing_without_an_amount_but_keeps_a_draft(
    live_gateway: Callable[..., LiveGateway],
) -> None:
    live = live_gateway()
    _staff(live, "tanaka@city.example.jp", "契約課")
    with live.client() as client:
        assert _login(client, "tanaka@city.example.jp").status_code == 303
        _add_contact(client)
        step1 = _step1(client, {**_facts(amount=""), **THREE})
        assert step1.status_code == 303, step1.text  # a draft may lack the amount
        fields_url = step1.headers["location"]
        step2 = client.get(fields_url).text
        refused = client.post(fields_url, data={"csrf_token": _csrf(step2), "action": "send"})
        assert refused.status_code == 422
        assert "契約金額(取引金額)を入力してください" in refused.text
        assert "単価契約は予定総額" in refused.text
        with live.gateway.sessions() as session:
            assert session.scalars(select(Envelope)).all() == []  # nothing half-made
        saved = client.post(fields_url, data={"csrf_token": _csrf(step2), "action": "save"})
        assert saved.status_code == 303, saved.text
        detail_url = saved.headers["location"]
        detail = client.get(detail_url).text
        send = client.post(f"{detail_url}/send", data={"csrf_token": _csrf(detail)})
        assert "契約金額(取引金額)を入力してください" in send.text
    with live.gateway.sessions() as session:
        (envelope,) = session.scalars(select(Envelope)).all()
        assert envelope.state is EnvelopeState.DRAFT and envelope.amount is None
