"""Generated management numbers carry the JST date, whatever the UTC date is."""

from __future__ import annotations

import datetime as dt

import pytest
from sqlalchemy.orm import Session

import core.envelopes
from core.envelopes import DocumentInput, PartyInput, Runtime, create_envelope
from core.states import PartyRole
from tests.fixtures.pdfs import make_pdf


@pytest.mark.parametrize(
    ("utc", "jst_day"),
    [
        (dt.datetime(2026, 3, 31, 15, 30, tzinfo=dt.UTC), "20260401"),  # 00:30 JST on 4/1
        (dt.datetime(2026, 4, 1, 14, 59, tzinfo=dt.UTC), "20260401"),  # 23:59 JST on 4/1
    ],
)
def test_a_generated_number_is_dated_in_jst(
    session: Session,
    dev_runtime: Runtime,
    monkeypatch: pytest.MonkeyPatch,
    utc: dt.datetime,
    jst_day: str,
) -> None:
    monkeypatch.setattr(core.envelopes, "utcnow", lambda: utc)
    envelope = create_envelope(
        session=session,
        runtime=dev_runtime,
        title="庁舎清掃業務委託",
        creator="開発市 契約課",
        documents=[DocumentInput("請書.pdf", make_pdf(pages=1))],
        parties=[
            PartyInput(PartyRole.SIGNER, "髙橋 一郎", "ichiro@example.jp", "株式会社髙橋建設")
        ],
    )
    assert envelope.management_number.startswith(f"KG-{jst_day}-")
    assert envelope.created_at == utc
