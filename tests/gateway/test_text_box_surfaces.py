"""One text-box rule on every surface that places boxes: the API, the compose page and a
mapping refuse the same bad box (core.text_boxes) and accept the same good one; a value too
long for its box is refused on the staff signing page as on the link pages."""

from __future__ import annotations

import re
from collections.abc import Callable

import pytest

from core.errors import ConfigError
from mapping import load_mapping
from tests.fixtures.gateway import envelope_request
from tests.fixtures.intake import MAPPINGS
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
