"""Consent on every API path (建設業法19条3項): a construction contract is refused without the
contractor's recorded consent, made on it once recorded, and refused again once withdrawn;
the consent shows on the envelope. Over real HTTP, SQLite and PostgreSQL."""

from __future__ import annotations

from collections.abc import Callable

from sqlalchemy import select

from core.model import AuditEvent
from tests.fixtures.gateway import envelope_request
from tests.gateway.conftest import LiveGateway

NUMBER = "7000012050002"  # a valid 法人番号


def test_construction_contracts_need_a_consent_in_force(
    live_gateway: Callable[..., LiveGateway],
) -> None:
    live = live_gateway()
    with live.client(live.token("e-bid")) as client:
        body = envelope_request(contract_type="construction")
        refused = client.post("/api/v1/envelopes", json=body)
        assert refused.status_code == 422, refused.text
        error = refused.json()["error"]
        assert error["code"] == "consent.required"
        assert "建設業法第19条第3項" in error["message_ja"] and "承諾" in error["message_ja"]
        missing = {k: v for k, v in envelope_request().items() if k != "contract_type"}
        assert client.post("/api/v1/envelopes", json=missing).status_code == 422

        named = {**body, "contractor": {"corporate_number": NUMBER}}
        assert client.post("/api/v1/envelopes", json=named).json()["error"]["code"] == (
            "consent.required"  # unknown contractor: no consent either
        )
        recorded = client.post(
            "/api/v1/consents",
            json={
                "contractor_name": "株式会社髙橋建設",
                "contractor": {"corporate_number": NUMBER},
                "signer_name": "髙橋 一郎",
                "signer_email": "ichiro@takahashi.example.co.jp",
                "consented_on": "2026-04-01",
            },
        )
        assert recorded.status_code == 200, recorded.text
        consent = recorded.json()
        assert consent["consented_on"] == "2026-04-01" and "電子署名" in consent["measures"]

        created = client.post("/api/v1/envelopes", json=named)
        assert created.status_code == 201, created.text
        out = created.json()
        assert out["contract_type"] == "construction" and out["contract_type_ja"] == "建設工事"
        assert out["consent"]["id"] == consent["id"]
        assert out["consent"]["consented_on"] == "2026-04-01"
        listed = client.get("/api/v1/consents", params={"corporate_number": NUMBER}).json()
        assert [c["id"] for c in listed] == [consent["id"]]

        withdrawn = client.post(
            f"/api/v1/consents/{consent['id']}/withdraw", json={"reason": "書面契約を希望"}
        )
        assert withdrawn.status_code == 200 and withdrawn.json()["withdrawn_at"]
        again = client.post("/api/v1/envelopes", json=named)
        assert again.status_code == 422 and again.json()["error"]["code"] == "consent.withdrawn"
        # The draft made before the withdrawal cannot be sent either.
        send = client.post(f"/api/v1/envelopes/{out['id']}/send")
        assert send.status_code == 422 and send.json()["error"]["code"] == "consent.withdrawn"
        other = client.post("/api/v1/envelopes", json=envelope_request())
        assert other.status_code == 201 and other.json()["consent"] is None
    with live.gateway.sessions() as session:
        (event,) = session.scalars(
            select(AuditEvent).where(AuditEvent.action == "consent.withdrawn")
        ).all()
        assert event.actor == "api:e-bid" and event.detail["reason"] == "書面契約を希望"


def test_staff_see_the_consent_and_record_its_withdrawal(
    live_gateway: Callable[..., LiveGateway],
) -> None:
    from tests.gateway.test_admin_pages import _csrf, _login, _staff

    live = live_gateway()
    with live.client(live.token("e-bid")) as client:
        consent = client.post(
            "/api/v1/consents",
            json={
                "contractor_name": "株式会社髙橋建設",
                "contractor": {"corporate_number": NUMBER},
                "signer_name": "髙橋 一郎",
                "signer_email": "ichiro@takahashi.example.co.jp",
                "consented_on": "2026-04-01",
                "measures": "電子契約サービスによる電子署名",
            },
        ).json()
        body = {**envelope_request(contract_type="construction"),
                "contractor": {"corporate_number": NUMBER}}  # fmt: skip
        envelope_id = client.post("/api/v1/envelopes", json=body).json()["id"]
    _staff(live, "admin@city.example.jp", "総務課", roles="admin,sender")
    with live.client() as page:
        assert _login(page, "admin@city.example.jp").status_code == 303
        detail = page.get(f"/admin/envelopes/{envelope_id}").text
        assert '<td id="contract-type">建設工事</td>' in detail
        assert "2026-04-01 承諾（電子契約サービスによる電子署名）" in detail
        listing = page.get("/admin/consents")
        assert f'data-consent="{consent["id"]}"' in listing.text and "有効" in listing.text
        done = page.post(
            f"/admin/consents/{consent['id']}/withdraw",
            data={"reason": "書面契約を希望", "csrf_token": _csrf(listing.text)},
            follow_redirects=False,
        )
        assert done.status_code == 303
        assert "撤回済み" in page.get("/admin/consents").text
        assert "撤回済み" in page.get(f"/admin/envelopes/{envelope_id}").text
    with live.client(live.token("e-bid2")) as client:
        refused = client.post("/api/v1/envelopes", json=body)
        assert refused.json()["error"]["code"] == "consent.withdrawn"
