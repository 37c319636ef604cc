"""What a clerk's daily job needs, through the surfaces the clerk uses (API, staff pages, CLI,
mails): JST-dated management numbers, search by 管理番号, deadlines and contacts in mails."""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable

import pytest

import core.envelopes
from tests.fixtures.gateway import envelope_request
from tests.gateway.conftest import LiveGateway


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
