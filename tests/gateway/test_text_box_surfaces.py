"""One text-box rule on every surface that places boxes: the API, the compose page and a
mapping refuse the same bad box (core.text_boxes) and accept the same good one; a value too
long for its box is refused on the staff signing page as on the link pages."""

from __future__ import annotations

import datetime as dt
import re
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from core.envelopes.lifecycle import get_envelope
from core.envelopes.links import issue_link
from core.errors import ConfigError
from core.model import LinkPurpose
from mapping import load_mapping
from tests.fixtures.gateway import envelope_request
from tests.fixtures.intake import MAPPINGS
from tests.fixtures.pdfs import make_pdf
from tests.gateway.conftest import LiveGateway
from tests.gateway.test_admin_compose import THREE, _box, _facts, _step1
from tests.gateway.test_admin_pages import PASSWORD, _csrf, _login, _staff

GOOD = (300.0, 700.0, 500.0, 720.0)
# (rect, the Japanese reason): off the page the compose page shows, and too small.
OFF_PAGE = ((5000.0, 5000.0, 5180.0, 5020.0), "ページの外にはみ出しています")
TOO_SMALL = ((300.0, 700.0, 301.0, 720.0), "小さすぎます")


def _api_field(rect: tuple[float, ...]) -> dict[str, object]:
    return {"document": 0, "party": 1, "label": "現場代理人氏名", "page": 1, "rect": list(rect)}


def test_the_api_refuses_the_bad_box_with_its_code_and_takes_the_good_one(
    live_gateway: Callable[..., LiveGateway],
) -> None:
    live = live_gateway()
    with live.client(live.token("e-bid")) as client:
        for rect, reason in (OFF_PAGE, TOO_SMALL):
            body = envelope_request(fields=[_api_field(rect)])
            refused = client.post("/api/v1/envelopes", json=body)
            assert refused.status_code == 422, refused.text
            error = refused.json()["error"]
            assert error["code"] == "envelope.bad_field"
            assert error["message_ja"].startswith(f"1番目のテキストボックス: {reason}")
        assert client.get("/api/v1/envelopes").json()["total"] == 0  # nothing was made
        created = client.post("/api/v1/envelopes", json=envelope_request(fields=[_api_field(GOOD)]))
        assert created.status_code == 201, created.text


def test_the_compose_page_refuses_the_bad_box_in_japanese_and_sends_the_good_one(
    live_gateway: Callable[..., LiveGateway],
) -> None:
    live = live_gateway()
    _staff(live, "tanaka@city.example.jp", "契約課")
    no_book = {**THREE, "party_pick": ["", "", ""], "party_company": ["開発市 契約課", "株式会社髙橋建設", "開発市長"],
               "party_name": ["契約 花子", "髙橋 一郎", "開発 太郎"],
               "party_email": ["kacho@city.example.jp", "ichiro@takahashi.example.co.jp", "shicho@city.example.jp"]}  # fmt: skip
    with live.client() as client:
        assert _login(client, "tanaka@city.example.jp").status_code == 303
        step1 = _step1(client, {**_facts(), **no_book})
        assert step1.status_code == 303, step1.text
        fields_url = step1.headers["location"]
        token = _csrf(client.get(fields_url).text)
        for rect, reason in (OFF_PAGE, TOO_SMALL):
            box = _box(0, 1, 1, rect, "現場代理人氏名")
            refused = client.post(fields_url, data={"csrf_token": token, **box, "action": "send"})
            assert refused.status_code == 422
            assert f"1番目のテキストボックス: {reason}" in refused.text
        good = _box(0, 1, 1, GOOD, "現場代理人氏名")
        sent = client.post(fields_url, data={"csrf_token": token, **good, "action": "send"})
        assert sent.status_code == 303, sent.text


def _municipal(rect: str) -> str:
    text = (MAPPINGS / "municipal.yaml").read_text(encoding="utf-8")
    assert "rect: [380, 60, 560, 80]" in text
    return text.replace("rect: [380, 60, 560, 80]", f"rect: {rect}")


def test_a_mapping_refuses_the_box_the_rule_refuses_at_its_line() -> None:
    load_mapping(_municipal("[300, 700, 500, 720]"), name="municipal.yaml")  # the good box
    with pytest.raises(ConfigError) as refused:
        load_mapping(_municipal("[300, 700, 301, 720]"), name="municipal.yaml")
    lines = _municipal("X").splitlines()
    line = 1 + next(i for i, s in enumerate(lines) if "rect: X" in s)
    assert f"municipal.yaml:{line}: fields[1]: the box is smaller than 2 mm" in str(refused.value)
    long_label = _municipal("[300, 700, 500, 720]").replace(
        "label: 契約締結日", "label: " + "長" * 101
    )
    with pytest.raises(ConfigError, match="label is empty or longer than 100"):
        load_mapping(long_label, name="municipal.yaml")


def test_a_staff_signer_is_told_too_when_a_value_does_not_fit_its_box(
    live_gateway: Callable[..., LiveGateway],
) -> None:
    live = live_gateway()
    _staff(live, "kacho@city.example.jp", "契約課", roles="signer")
    body = envelope_request()
    body["parties"][0] = {"role": "approver", "name": "契約 花子", "email": "kacho@city.example.jp",
                          "company": "開発市 契約課", "staff": True}  # fmt: skip
    body["fields"] = [{"document": 0, "party": 0, "label": "決裁日", "page": 1,
                       "rect": [300, 700, 372, 716]}]  # fmt: skip
    body["send"] = True
    with live.client(live.token("e-bid")) as api:
        created = api.post("/api/v1/envelopes", json=body)
        assert created.status_code == 201, created.text
    envelope_id = created.json()["id"]
    with live.client() as client:
        assert _login(client, "kacho@city.example.jp").status_code == 303
        page = client.get(f"/admin/sign/{envelope_id}")
        assert page.status_code == 200, page.text
        field = re.search(r'name="(field_[0-9a-f]{32})"', page.text)
        assert field
        form = {"csrf_token": _csrf(page.text), "password": PASSWORD}
        refused = client.post(
            f"/admin/sign/{envelope_id}/complete", data={**form, field.group(1): "令" * 30}
        )
        assert refused.status_code == 422
        assert "「決裁日」が枠に収まりません。全角でおよそ13文字以内" in refused.text
        done = client.post(
            f"/admin/sign/{envelope_id}/complete", data={**form, field.group(1): "令和8年4月1日"}
        )
        assert done.status_code == 303, done.text


CORPUS = Path(__file__).resolve().parents[1] / "corpus" / "pdfs"
# A landscape scan's kind of page: 612 x 792 points in user space, /Rotate 90, so shown
# 792 wide and 612 high with the user-space origin at the top left and x growing downwards.
TURNED_PDF = "pdfjs-hello_world_rotated.pdf"
TURNED_BOX = (100.0, 100.0, 130.0, 300.0)  # user space: 30 wide, 200 high
TURNED_SHOWN = (100.0, 100.0, 300.0, 130.0)  # displayed: left, top, right, bottom (points)


def _sign_through_the_link(live: LiveGateway, envelope_id: str, index: int, code: str) -> str:
    """Party ``index`` opens its link, types its code and completes, filling every box it has;
    returns its documents page."""
    with live.gateway.sessions() as session:
        party = get_envelope(session=session, envelope_id=envelope_id).parties[index]
        _link, token = issue_link(
            session=session,
            envelope_id=envelope_id,
            party_id=party.id,
            email=party.email,
            purpose=LinkPurpose.SIGN,
            valid_for=dt.timedelta(days=1),
            issued_for=f"test:{envelope_id}",
        )
        session.commit()
    with httpx.Client(base_url=live.url, timeout=120, follow_redirects=False) as browser:
        signed_in = browser.post(
            f"/sign/{token}",
            data={"access_code": code, "csrf_token": _csrf(browser.get(f"/sign/{token}").text)},
        )
        assert signed_in.status_code == 303, signed_in.text
        page = browser.get(f"/sign/{token}/documents")
        assert page.status_code == 200, page.text
        fields = re.findall(r'name="(field_[0-9a-f]+)"', page.text)
        form = {"csrf_token": _csrf(page.text), **dict.fromkeys(fields, "令和8年12月7日")}
        done = browser.post(f"/sign/{token}/complete", data=form)
        assert done.status_code == 303, done.text
    return page.text


def _wait(api: httpx.Client, envelope_id: str, done: Callable[[dict[str, Any]], bool]) -> None:
    """Until the envelope's API status satisfies ``done`` (the signing worker applies each
    approval in the background)."""
    deadline = time.monotonic() + 120
    while not done(api.get(f"/api/v1/envelopes/{envelope_id}").json()):
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.2)


def test_a_box_on_a_turned_page_is_taken_shown_turned_and_signed_upright(
    live_gateway: Callable[..., LiveGateway], tmp_path: Path
) -> None:
    live = live_gateway()
    body = envelope_request(send=True, pdfs=[(CORPUS / TURNED_PDF).read_bytes(), make_pdf(pages=1)])
    body["fields"] = [{"document": 0, "party": 1, "label": "記入日", "page": 1,
                       "rect": list(TURNED_BOX)}]  # fmt: skip
    with live.client(live.token("e-bid")) as api:
        created = api.post("/api/v1/envelopes", json=body)
        assert created.status_code == 201, created.text  # was 422 envelope.bad_field (回転)
        envelope_id = created.json()["id"]
        pages = []
        for index, code in enumerate(("1111", "2468", "3333")):
            pages.append(_sign_through_the_link(live, envelope_id, index, code))
            _wait(api, envelope_id, lambda e, i=index: e["parties"][i]["state"] == "completed")
        # The contractor's input lies over the box where the turned page image shows it.
        box = re.search(
            r'data-left="([\d.]+)" data-top="([\d.]+)" data-width="([\d.]+)" '
            r'data-height="([\d.]+)"',
            pages[1],
        )
        assert box is not None
        left, top, right, bottom = TURNED_SHOWN
        assert [float(v) for v in box.groups()] == pytest.approx(
            [
                100 * left / 792,
                100 * top / 612,
                100 * (right - left) / 792,
                100 * (bottom - top) / 612,
            ],
            abs=0.01,
        )
        _wait(api, envelope_id, lambda e: e["state"] == "completed")
        signed = api.get(f"/api/v1/envelopes/{envelope_id}/documents/0")
        assert signed.status_code == 200, signed.text
    path = tmp_path / "signed.pdf"
    path.write_bytes(signed.content)
    # pdftotext lays the page out as displayed: the value reads left to right (wider than
    # high) inside the box as shown, not sideways along the user-space y axis.
    words = subprocess.run(
        ["pdftotext", "-f", "1", "-l", "1", "-bbox", str(path), "-"],
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    found = re.search(
        r'<word xMin="([\d.]+)" yMin="([\d.]+)" xMax="([\d.]+)" yMax="([\d.]+)">令和8年12月7日<',
        words,
    )
    assert found is not None, words
    x_min, y_min, x_max, y_max = (float(v) for v in found.groups())
    assert x_max - x_min > 3 * (y_max - y_min)
    assert left - 1 <= x_min < x_max <= right + 1 and top - 1 <= y_min < y_max <= bottom + 1
