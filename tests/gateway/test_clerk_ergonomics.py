"""What a clerk's daily job needs, through the surfaces the clerk uses (API, staff pages, CLI,
mails): JST-dated management numbers, search by 管理番号, deadlines and contacts in mails."""

from __future__ import annotations

import csv
import datetime as dt
import io
from collections.abc import Callable

import pytest

import core.envelopes
from core.api_clients import update_api_client
from tests.fixtures.gateway import envelope_request
from tests.fixtures.staff import make_envelope
from tests.gateway.conftest import LiveGateway
from tests.gateway.test_admin_pages import _login, _staff
from tests.gateway.test_records_search import _NUMBER, CLERK, _cli


def test_the_api_dates_a_management_number_made_at_0030_jst_in_jst(
    live_gateway: Callable[..., LiveGateway], monkeypatch: pytest.MonkeyPatch
) -> None:
    live = live_gateway()
    half_past_midnight_jst = dt.datetime(2026, 3, 31, 15, 30, tzinfo=dt.UTC)
    monkeypatch.setattr(core.envelopes, "utcnow", lambda: half_past_midnight_jst)
    with live.client(live.token("e-bid")) as client:
        created = client.post("/api/v1/envelopes", json=envelope_request())
        assert created.status_code == 201, created.text
        assert created.json()["management_number"].startswith("KG-20260401-")


def test_a_clerk_finds_an_envelope_by_its_management_number_on_page_api_and_cli(
    live_gateway: Callable[..., LiveGateway],
) -> None:
    live = live_gateway()
    _staff(live, CLERK, "契約課")
    with live.gateway.sessions() as session:
        for number, department in (
            ("KG-20260401-AB12CD34", "契約課"),
            ("KG-20260402-0000FFFF", "契約課"),
            ("R20251001-R7-001", "契約課"),
            ("KG-20260401-99999999", "土木課"),  # matches, but not the clerk's department
        ):
            make_envelope(session, department=department).management_number = number
        session.commit()
    token = live.token("tax-export", ["envelopes:read"])
    with live.gateway.sessions() as session:
        update_api_client(session=session, name="tax-export", staff_email=CLERK)
        session.commit()
    typed = "ｋｇ－２０２６０４０１"  # as typed from a paper form on a Japanese keyboard

    with live.client() as page_client:
        assert _login(page_client, CLERK).status_code == 303
        form = page_client.get("/admin/envelopes").text
        assert '<label>管理番号<input type="text" name="management_number"' in form
        page = page_client.get("/admin/envelopes", params={"management_number": typed})
        assert set(_NUMBER.findall(page.text)) == {"KG-20260401-AB12CD34"}
        assert f'value="{typed}"' in page.text  # the condition stays in the form
    with live.client(token) as api:
        answer = api.get("/api/v1/envelopes", params={"management_number": typed})
        assert answer.status_code == 200, answer.text
        assert [i["management_number"] for i in answer.json()["items"]] == ["KG-20260401-AB12CD34"]
    out = _cli(live.config, "search", "--management-number", "r7-001", "--as", CLERK,
               "--csv", "-")  # fmt: skip
    assert out.returncode == 0, out.stderr
    rows = list(csv.reader(io.StringIO(out.stdout.lstrip("\ufeff"))))
    assert [r[0] for r in rows[1:]] == ["R20251001-R7-001"]
