"""Records-law search as a service (電子帳簿保存法 施行規則4条), through its users' surfaces: the
API search with combined ranges returns the rows the staff page shows the same user, with a CSV
export; an invalid condition is an error with no rows on both; API envelopes carry a
department; `keiyaku search --csv`; and an amount edited directly in the database makes
`keiyaku audit verify` fail naming the envelope."""

from __future__ import annotations

import csv
import datetime as dt
import io
import re
from collections.abc import Callable

from sqlalchemy import update

from core.model import AuditEvent, Envelope
from core.staff.api_clients import update_api_client
from core.states import EnvelopeState
from tests.fixtures.gateway import complete_by_services, envelope_request, run_keiyaku
from tests.fixtures.staff import make_envelope
from tests.gateway.conftest import LiveGateway
from tests.gateway.test_admin_pages import _login, _staff

CLERK = "tanaka@city.example.jp"
# combined ranges: transaction date, amount, counterparty, all at once
CONDITIONS = {
    "date_from": "2026-04-01",
    "date_to": "2026-06-30",
    "amount_min": "1,000,000",
    "amount_max": "5000000",
    "counterparty": "建設",
}
_NUMBER = re.compile(r'<a href="/admin/envelopes/[0-9a-f]{32}">([^<]+)</a>')


def _seed(live: LiveGateway) -> dict[str, str]:
    """Envelopes in and out of the clerk's department and of each range; title → number."""
    rows = [
        # (title, department, amount, date, counterparty)
        ("範囲内A", "契約課", 1_000_000, dt.date(2026, 4, 1), "株式会社札幌建設"),
        ("範囲内B", "契約課", 5_000_000, dt.date(2026, 6, 30), "北海建設株式会社"),
        ("金額超過", "契約課", 5_000_001, dt.date(2026, 5, 1), "株式会社札幌建設"),
        ("金額不足", "契約課", 999_999, dt.date(2026, 5, 1), "株式会社札幌建設"),
        ("日付前", "契約課", 2_000_000, dt.date(2026, 3, 31), "株式会社札幌建設"),
        ("日付後", "契約課", 2_000_000, dt.date(2026, 7, 1), "株式会社札幌建設"),
        ("取引先違い", "契約課", 2_000_000, dt.date(2026, 5, 1), "株式会社札幌商事"),
        ("他部署", "土木課", 2_000_000, dt.date(2026, 5, 1), "株式会社札幌建設"),
    ]
    numbers = {}
    with live.gateway.sessions() as session:
        for title, department, amount, day, counterparty in rows:
            envelope = make_envelope(
                session,
                title=title,
                department=department,
                amount=amount,
                transaction_date=day,
                counterparty=counterparty,
                state=EnvelopeState.COMPLETED,
                creator_email="someone@city.example.jp",
            )
            numbers[title] = envelope.management_number
        session.commit()
    return numbers


def test_api_search_returns_the_staff_pages_rows_for_the_same_user(
    live_gateway: Callable[..., LiveGateway],
) -> None:
    live = live_gateway()
    _staff(live, CLERK, "契約課")
    numbers = _seed(live)
    token = live.token("tax-export", ["envelopes:read"])
    with live.gateway.sessions() as session:
        update_api_client(session=session, name="tax-export", staff_email=CLERK)
        session.commit()

    with live.client() as page_client:
        assert _login(page_client, CLERK).status_code == 303
        page = page_client.get("/admin/envelopes", params=CONDITIONS)
        assert page.status_code == 200
        on_page = set(_NUMBER.findall(page.text))
    assert on_page == {numbers["範囲内A"], numbers["範囲内B"]}

    with live.client(token) as api:
        answer = api.get("/api/v1/envelopes", params=CONDITIONS)
        assert answer.status_code == 200, answer.text
        body = answer.json()
        exported = api.get("/api/v1/envelopes", params={**CONDITIONS, "format": "csv"})
        # without the conditions the same client sees the clerk's whole department
        everything = api.get("/api/v1/envelopes", params={"limit": 100}).json()
    assert {i["management_number"] for i in body["items"]} == on_page and body["total"] == 2
    first = body["items"][0]  # newest transaction date first, as on the page
    assert first["transaction_date"] == "2026-06-30" and first["amount"] == 5_000_000
    assert first["counterparty"] == "北海建設株式会社" and first["department"] == "契約課"
    assert numbers["他部署"] not in {i["management_number"] for i in everything["items"]}
    assert everything["total"] == 7

    assert exported.status_code == 200
    assert exported.headers["content-type"].startswith("text/csv")
    text = exported.content.decode("utf-8-sig")
    rows = list(csv.reader(io.StringIO(text)))
    assert rows[0][:5] == ["管理番号", "件名", "取引年月日", "取引金額", "取引先"]
    assert {r[0] for r in rows[1:]} == on_page
    assert ["2026-04-01", "1000000", "株式会社札幌建設"] == rows[-1][2:5]


def test_an_invalid_condition_is_an_error_with_no_rows_on_the_api_and_the_page(
    live_gateway: Callable[..., LiveGateway],
) -> None:
    live = live_gateway()
    _staff(live, CLERK, "契約課")
    _seed(live)
    token = live.token("tax-export", ["envelopes:read"])
    with live.gateway.sessions() as session:
        update_api_client(session=session, name="tax-export", staff_email=CLERK)
        session.commit()
    inverted = {"amount_min": "5000000", "amount_max": "1000000"}
    unreadable = {"date_from": "2026-13-01"}
    with live.client(token) as api:
        for params, code in ((inverted, "staff.search_range"), (unreadable, "staff.search_input")):
            answer = api.get("/api/v1/envelopes", params=params)
            assert answer.status_code == 422, answer.text
            assert answer.json()["error"]["code"] == code
            assert "items" not in answer.json()
            as_csv = api.get("/api/v1/envelopes", params={**params, "format": "csv"})
            assert as_csv.status_code == 422 and "管理番号" not in as_csv.text
    with live.client() as page_client:
        assert _login(page_client, CLERK).status_code == 303
        for params in (inverted, unreadable):
            page = page_client.get("/admin/envelopes", params=params)
            assert 'role="alert"' in page.text
            assert _NUMBER.findall(page.text) == []  # no rows, never the unfiltered list
            assert "該当する契約はありません。" in page.text


def test_api_envelopes_carry_a_department_a_clerk_then_sees(
    live_gateway: Callable[..., LiveGateway],
) -> None:
    live = live_gateway()
    _staff(live, CLERK, "契約課")
    token = live.token("e-bid")
    with live.gateway.sessions() as session:
        update_api_client(session=session, name="e-bid", department="契約課")
        session.commit()
    with live.client(token) as api:
        by_client = api.post("/api/v1/envelopes", json=envelope_request()).json()
        named = envelope_request()
        named["metadata"]["department"] = "土木課"
        by_request = api.post("/api/v1/envelopes", json=named).json()
    assert by_client["metadata"]["department"] == "契約課"
    assert by_request["metadata"]["department"] == "土木課"
    with live.client() as page_client:
        assert _login(page_client, CLERK).status_code == 303
        listed = set(_NUMBER.findall(page_client.get("/admin/envelopes").text))
    assert listed == {by_client["management_number"]}


def test_cli_search_csv_and_audit_verify_names_an_edited_amount(
    live_gateway: Callable[..., LiveGateway],
) -> None:
    live = live_gateway()
    numbers = _seed(live)
    token = live.token("e-bid")
    request = envelope_request(send=True)
    del request["metadata"]["transaction_date"]  # filled from 締結日 at completion
    with live.client(token) as api:
        envelope_id = api.post("/api/v1/envelopes", json=request).json()["id"]
    complete_by_services(live.gateway, envelope_id)
    with live.gateway.sessions() as session:
        envelope = session.get_one(Envelope, envelope_id)
        assert envelope.completed_at is not None
        concluded_on = envelope.completed_at.astimezone(dt.timezone(dt.timedelta(hours=9))).date()
        assert envelope.transaction_date == concluded_on
        event = (
            session.query(AuditEvent)
            .filter_by(envelope_id=envelope_id, action="envelope.completed")
            .one()
        )
        assert event.detail["facts"]["amount"] == "31389000"
        assert event.detail["facts_filled"] == ["transaction_date"]

    found = run_keiyaku(
        live.config,
        "search",
        *[f"--{k.replace('_', '-')}={v}" for k, v in CONDITIONS.items()],
        "--csv",
        "-",
    )
    assert found.returncode == 0, found.stderr
    rows = list(csv.reader(io.StringIO(found.stdout.lstrip("\ufeff"))))
    # the operator's view: every department
    assert {r[0] for r in rows[1:]} == {numbers[t] for t in ("範囲内A", "範囲内B", "他部署")}
    as_clerk = run_keiyaku(live.config, "search", "--as", "nobody@city.example.jp")
    assert as_clerk.returncode == 2
    bad = run_keiyaku(live.config, "search", "--date-from", "2026-07-01", "--date-to", "2026-04-01")
    assert bad.returncode == 2 and "staff.search_range" in bad.stderr and bad.stdout == ""

    verified = run_keiyaku(live.config, "audit", "verify")
    assert verified.returncode == 0 and "records-law facts: 1 concluded" in verified.stdout, (
        verified.stdout + verified.stderr
    )
    with live.gateway.sessions() as session:  # someone edits the amount behind the gateway
        session.execute(update(Envelope).where(Envelope.id == envelope_id).values(amount=1))
        session.commit()
    edited = run_keiyaku(live.config, "audit", "verify")
    assert edited.returncode == 1
    assert f"EDITED FACTS: envelope {envelope_id}" in edited.stdout
    assert "amount recorded '31389000', now '1'" in edited.stdout


def test_an_api_envelope_without_an_amount_is_never_sent_and_a_concluded_one_has_all_facts(
    live_gateway: Callable[..., LiveGateway],
) -> None:
    live = live_gateway()
    token = live.token("e-bid")
    with live.client(token) as api:
        before = api.get("/api/v1/envelopes").json()
        no_amount = envelope_request(send=True)
        del no_amount["metadata"]["amount"]
        refused = api.post("/api/v1/envelopes", json=no_amount)
        assert refused.status_code == 422, refused.text
        error = refused.json()["error"]
        assert error["code"] == "envelope.amount_required"
        assert "契約金額(取引金額)を入力してください" in error["message_ja"]
        assert api.get("/api/v1/envelopes").json() == before  # nothing was created

        # A draft may lack it, but cannot be sent.
        draft = api.post("/api/v1/envelopes", json={**no_amount, "send": False})
        assert draft.status_code == 201, draft.text
        not_sent = api.post(f"/api/v1/envelopes/{draft.json()['id']}/send")
        assert not_sent.status_code == 422
        assert not_sent.json()["error"]["code"] == "envelope.amount_required"
        assert api.get(f"/api/v1/envelopes/{draft.json()['id']}").json()["state"] == "draft"

        # Only the amount given: the date and the counterparty are filled at completion.
        bare = envelope_request(send=True, metadata={"amount": 0})  # 無償の協定: 0 yen
        envelope_id = api.post("/api/v1/envelopes", json=bare).json()["id"]
    complete_by_services(live.gateway, envelope_id)
    with live.gateway.sessions() as session:
        envelope = session.get_one(Envelope, envelope_id)
        assert envelope.state is EnvelopeState.COMPLETED and envelope.completed_at is not None
        concluded_on = envelope.completed_at.astimezone(dt.timezone(dt.timedelta(hours=9))).date()
        assert envelope.transaction_date == concluded_on
        assert envelope.counterparty == "株式会社髙橋建設"  # the contractor-side signer's company
        assert envelope.amount == 0
        number = envelope.management_number
    day = concluded_on.isoformat()
    with live.client(token) as api:
        found = api.get(
            "/api/v1/envelopes",
            params={"date_from": day, "date_to": day, "amount_min": "0", "amount_max": "0",
                    "counterparty": "髙橋建設"},
        )  # fmt: skip
        assert found.status_code == 200, found.text
        assert [e["management_number"] for e in found.json()["items"]] == [number]
        outside = api.get("/api/v1/envelopes", params={"amount_min": "1", "date_from": day})
        assert number not in [e["management_number"] for e in outside.json()["items"]]
