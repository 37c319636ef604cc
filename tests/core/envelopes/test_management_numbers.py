"""Management numbers: generated ones carry the JST date, whatever the UTC date is; the search
finds one by any part of it."""

from __future__ import annotations

import datetime as dt

import pytest
from sqlalchemy import true
from sqlalchemy.orm import Session

import core.envelopes.approvals
import core.envelopes.creation
import core.envelopes.lifecycle
import core.envelopes.sealing
import core.signing.signatures
from core.envelopes.creation import DocumentInput, PartyInput, create_envelope
from core.records.search import parse_query, search_envelopes
from core.runtime import Runtime
from core.states import PartyRole
from tests.fixtures.pdfs import make_pdf
from tests.fixtures.staff import make_envelope


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
    monkeypatch.setattr(core.envelopes.approvals, "utcnow", lambda: utc)
    monkeypatch.setattr(core.envelopes.creation, "utcnow", lambda: utc)
    monkeypatch.setattr(core.envelopes.lifecycle, "utcnow", lambda: utc)
    monkeypatch.setattr(core.envelopes.sealing, "utcnow", lambda: utc)
    monkeypatch.setattr(core.signing.signatures, "utcnow", lambda: utc)
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


def test_search_finds_a_number_by_any_part_in_any_width_and_case(session: Session) -> None:
    numbers = ["KG-20260401-AB12CD34", "KG-20260402-0000FFFF", "R20251001-R7-001", "R7_001%"]
    for number in numbers:
        make_envelope(session).management_number = number
    session.flush()

    def found(text: str) -> set[str]:
        query = parse_query({"management_number": text})
        page = search_envelopes(session=session, query=query, scope=true())
        return {e.management_number for e in page.items}

    assert found("KG-20260401-AB12CD34") == {"KG-20260401-AB12CD34"}
    assert found("ｋｇ－２０２６０４０１") == {"KG-20260401-AB12CD34"}  # full width, lower case
    assert found("r7-001") == {"R20251001-R7-001"}
    assert found("KG-2026040") == {"KG-20260401-AB12CD34", "KG-20260402-0000FFFF"}
    assert found("_001%") == {"R7_001%"}  # LIKE's wildcards are plain characters here
    assert found("KG-20260403") == set()
