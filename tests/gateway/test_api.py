"""The envelope API over real HTTP (uvicorn on loopback), on SQLite and PostgreSQL."""

from __future__ import annotations

import json
import subprocess
import threading
from collections.abc import Callable
from pathlib import Path

import httpx
from sqlalchemy import select

from core.envelopes.lifecycle import get_envelope
from core.model import AccessCode, ApiClient, Delivery, Envelope, SigningLink
from core.records.audit import list_events
from core.signing import verify_pdf
from core.states import EnvelopeState
from tests.fixtures.gateway import complete_by_services, envelope_request
from tests.fixtures.pdfs import make_pdf
from tests.fixtures.pki_plugin import load_pem_cert
from tests.gateway.conftest import LiveGateway

ERROR_KEYS = {"code", "message", "message_ja", "disposition"}


def _complete_all(live: LiveGateway, envelope_id: str) -> None:
    """Every party acts, as the signing pages make them (view, fill, approve)."""
    complete_by_services(live.gateway, envelope_id, "鈴木 次郎")


def test_create_send_status_list_and_no_secret_in_any_answer(
    live_gateway: Callable[..., LiveGateway],
) -> None:
    live = live_gateway()
    token = live.token("e-bid")
    with live.client(token) as client:
        # Eight-digit codes: a four-digit one turns up by chance in random hex ids now and then.
        created = client.post(
            "/api/v1/envelopes",
            json=envelope_request(codes=("90817263", "24681357", "35792468")),
        )
        assert created.status_code == 201, created.text
        body = created.json()
        assert body["state"] == "draft" and body["state_ja"] == "下書き"
        assert [p["role"] for p in body["parties"]] == ["approver", "signer", "signer"]
        assert body["metadata"] == {
            "amount": 31389000,
            "counterparty": "株式会社髙橋建設",
            "transaction_date": "2025-10-01",
            "deadline": "2025-10-08",
            "department": None,  # the client has no department and the request named none
        }
        assert [d["name"] for d in body["documents"]] == ["工事請負契約書.pdf", "請書.pdf"]
        sent = client.post(f"/api/v1/envelopes/{body['id']}/send")
        assert sent.status_code == 200
        assert sent.json()["state"] == "sent"
        assert [p["state"] for p in sent.json()["parties"]] == ["sent", "waiting", "waiting"]
        status = client.get(f"/api/v1/envelopes/{body['id']}").json()
        listed = client.get("/api/v1/envelopes", params={"state": "sent"}).json()
        assert listed["total"] == 1 and listed["items"][0]["id"] == body["id"]
        assert client.get("/api/v1/envelopes", params={"state": "draft"}).json()["total"] == 0
    # The access codes and the link tokens appear in no answer and nowhere in clear.
    for text in (created.text, sent.text, json.dumps(status)):
        assert "24681357" not in text and "access_code" not in text and "/sign/" not in text
    with live.gateway.sessions() as session:
        hashes = [row.code_hash for row in session.scalars(select(AccessCode))]
        assert len(hashes) == 3 and all(h.startswith("scrypt-hmac$") for h in hashes)
        assert not any("24681357" in h or "90817263" in h for h in hashes)
        deliveries = session.scalars(select(Delivery)).all()
        assert [d.payload["kind"] for d in deliveries] == ["signing_request"]
        assert "token" not in json.dumps(deliveries[0].payload)
        token_row = session.scalar(select(ApiClient))
        assert token_row is not None and token not in (token_row.token_hash, token_row.token_hint)


def test_multipart_create_and_validation_errors_share_one_shape(
    live_gateway: Callable[..., LiveGateway],
) -> None:
    live = live_gateway()
    with live.client(live.token("docs")) as client:
        meta = envelope_request()
        meta.pop("documents")
        files = [
            ("documents", ("工事請負契約書.pdf", make_pdf(pages=2), "application/pdf")),
            ("documents", ("請書.pdf", make_pdf(pages=1), "application/pdf")),
        ]
        created = client.post("/api/v1/envelopes", data={"envelope": json.dumps(meta)}, files=files)
        assert created.status_code == 201, created.text
        assert [d["name"] for d in created.json()["documents"]] == [
            "工事請負契約書.pdf",
            "請書.pdf",
        ]

        bad = client.post("/api/v1/envelopes", json={"title": ""})
        assert bad.status_code == 422
        assert set(bad.json()["error"]) >= ERROR_KEYS
        assert bad.json()["error"]["code"] == "request.invalid"

        no_code = envelope_request()
        no_code["parties"][1].pop("access_code")
        answer = client.post("/api/v1/envelopes", json=no_code)
        assert answer.status_code == 422
        assert answer.json()["error"]["code"] == "party.access_code_required"
        assert answer.json()["error"]["message_ja"].startswith("2番目の署名者")

        not_pdf = envelope_request(documents=[{"name": "a.pdf", "content_base64": "aGVsbG8="}])
        refused = client.post("/api/v1/envelopes", json=not_pdf)
        assert refused.status_code == 422
        assert refused.json()["error"]["code"].startswith("document.")

        wrong_type = client.post(
            "/api/v1/envelopes", content=b"x", headers={"Content-Type": "text/plain"}
        )
        assert wrong_type.status_code == 415
        assert wrong_type.json()["error"]["code"] == "request.unsupported_media_type"

        missing = client.get("/api/v1/envelopes/" + "0" * 32)
        assert missing.status_code == 404
        assert missing.json() == {
            "error": {
                "code": "not_found.envelope",
                "message": f"no envelope {'0' * 32}",
                "message_ja": "指定された封筒が見つかりません。",
                "disposition": "fatal",
            }
        }
    with httpx.Client(base_url=live.url) as anonymous:
        unauthorized = anonymous.get("/api/v1/envelopes")
        assert unauthorized.status_code == 401
        assert unauthorized.headers["www-authenticate"] == "Bearer"
        assert unauthorized.json()["error"]["code"] == "auth.invalid_token"
        health = anonymous.get("/healthz").json()
        assert (health["status"], health["database"]) == ("ok", "ok")
        assert anonymous.get("/no/such/route").json()["error"]["code"] == "not_found.route"


def test_a_system_sees_only_its_own_envelopes(live_gateway: Callable[..., LiveGateway]) -> None:
    live = live_gateway()
    with live.client(live.token("e-bid")) as mine, live.client(live.token("finance")) as other:
        envelope_id = mine.post("/api/v1/envelopes", json=envelope_request()).json()["id"]
        for method, path in [
            ("GET", f"/api/v1/envelopes/{envelope_id}"),
            ("POST", f"/api/v1/envelopes/{envelope_id}/send"),
            ("POST", f"/api/v1/envelopes/{envelope_id}/cancel"),
            ("POST", f"/api/v1/envelopes/{envelope_id}/parties/1/resend"),
            ("GET", f"/api/v1/envelopes/{envelope_id}/documents/0"),
            ("GET", f"/api/v1/envelopes/{envelope_id}/certificate"),
        ]:
            answer = other.request(method, path)
            assert answer.status_code == 404, (method, path, answer.text)
            assert answer.json()["error"]["code"] == "not_found.envelope"
        assert other.get("/api/v1/envelopes").json()["total"] == 0
        amend = envelope_request(amends=envelope_id)
        assert other.post("/api/v1/envelopes", json=amend).status_code == 404
        assert mine.get(f"/api/v1/envelopes/{envelope_id}").json()["state"] == "draft"
    read_only = live.token("viewer", scopes=["envelopes:read"])
    with live.client(read_only) as viewer:
        refused = viewer.post("/api/v1/envelopes", json=envelope_request())
        assert refused.status_code == 403 and refused.json()["error"]["code"] == "auth.forbidden"


def test_idempotency_key_returns_the_first_result_even_when_racing(
    live_gateway: Callable[..., LiveGateway],
) -> None:
    live = live_gateway()
    token = live.token("e-bid")
    body = envelope_request()
    with live.client(token) as client:
        first = client.post("/api/v1/envelopes", json=body, headers={"Idempotency-Key": "award-1"})
        again = client.post("/api/v1/envelopes", json=body, headers={"Idempotency-Key": "award-1"})
        assert first.status_code == again.status_code == 201
        assert again.headers["idempotent-replayed"] == "true"
        assert again.json()["id"] == first.json()["id"]
        changed = dict(body, title="別の件名")
        reused = client.post(
            "/api/v1/envelopes", json=changed, headers={"Idempotency-Key": "award-1"}
        )
        assert reused.status_code == 409
        assert reused.json()["error"]["code"] == "idempotency.key_reused"

    answers: list[httpx.Response] = []

    def create() -> None:
        with live.client(token) as c:
            answers.append(
                c.post("/api/v1/envelopes", json=body, headers={"Idempotency-Key": "award-2"})
            )

    threads = [threading.Thread(target=create) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert [a.status_code for a in answers] == [201] * 4, [a.text for a in answers]
    assert len({a.json()["id"] for a in answers}) == 1
    with live.gateway.sessions() as session:
        assert len(session.scalars(select(Envelope)).all()) == 2


def test_cancel_tells_the_parties_and_only_before_completion(
    live_gateway: Callable[..., LiveGateway],
) -> None:
    live = live_gateway()
    with live.client(live.token("e-bid")) as client:
        envelope_id = client.post("/api/v1/envelopes", json=envelope_request(send=True)).json()[
            "id"
        ]
        cancelled = client.post(
            f"/api/v1/envelopes/{envelope_id}/cancel", json={"reason": "金額誤り"}
        )
        assert cancelled.status_code == 200 and cancelled.json()["state"] == "cancelled"
        again = client.post(f"/api/v1/envelopes/{envelope_id}/cancel")
        assert again.status_code == 409
        assert again.json()["error"]["code"] == "state.illegal_transition"

        done_id = client.post("/api/v1/envelopes", json=envelope_request(send=True)).json()["id"]
        _complete_all(live, done_id)
        late = client.post(f"/api/v1/envelopes/{done_id}/cancel")
        assert late.status_code == 409
    with live.gateway.sessions() as session:
        kinds = [
            (d.payload["kind"], d.payload["to"])
            for d in session.scalars(select(Delivery).where(Delivery.envelope_id == envelope_id))
        ]
        # Only the party already asked hears of the cancellation.
        assert ("cancel_notice", "kacho@city.example.jp") in kinds
        assert not any(k == "cancel_notice" and "takahashi" in to for k, to in kinds)
        events = [e.action for e in list_events(session=session, envelope_id=envelope_id)]
        assert "envelope.cancelled" in events


def test_downloads_and_amendment_link_on_both_certificates(
    live_gateway: Callable[..., LiveGateway], tmp_path: Path, devpki
) -> None:
    live = live_gateway()
    roots = [load_pem_cert(devpki.root_cert)]
    with live.client(live.token("e-bid")) as client:
        original = client.post("/api/v1/envelopes", json=envelope_request(send=True)).json()
        early = client.get(f"/api/v1/envelopes/{original['id']}/documents/0")
        assert early.status_code == 409 and early.json()["error"]["code"] == "state.not_completed"
        too_early = client.post("/api/v1/envelopes", json=envelope_request(amends=original["id"]))
        assert too_early.status_code == 409
        assert too_early.json()["error"]["code"] == "state.original_not_completed"
        _complete_all(live, original["id"])

        for position in (0, 1):
            pdf = client.get(f"/api/v1/envelopes/{original['id']}/documents/{position}")
            assert pdf.status_code == 200 and pdf.headers["content-type"] == "application/pdf"
            assert "filename*=UTF-8''" in pdf.headers["content-disposition"]
            report = verify_pdf(pdf.content, trust_roots=roots)
            assert report.ok and sum(s.kind == "approval" for s in report.signatures) == 3

        amendment = client.post(
            "/api/v1/envelopes",
            json=envelope_request(
                amends=original["id"], title="市道１号線舗装補修工事(変更)", send=True
            ),
        ).json()
        assert amendment["amends"] == original["id"]
        _complete_all(live, amendment["id"])
        assert client.get(f"/api/v1/envelopes/{original['id']}").json()["amended_by"] == [
            amendment["id"]
        ]
        texts = {}
        for key, envelope in (("original", original), ("amendment", amendment)):
            cert = client.get(f"/api/v1/envelopes/{envelope['id']}/certificate")
            assert cert.status_code == 200
            path = tmp_path / f"{key}.pdf"
            path.write_bytes(cert.content)
            texts[key] = subprocess.run(
                ["pdftotext", "-layout", str(path), "-"], capture_output=True, text=True, check=True
            ).stdout
    assert "原契約" in texts["amendment"] and original["management_number"] in texts["amendment"]
    assert "変更契約" in texts["original"] and amendment["management_number"] in texts["original"]
    with live.gateway.sessions() as session:
        actions = [e.action for e in list_events(session=session, envelope_id=original["id"])]
        assert actions.count("document.downloaded") == 2
        assert "certificate.downloaded" in actions and "certificate.reissued" in actions
        state = get_envelope(session=session, envelope_id=amendment["id"]).state
        assert state is EnvelopeState.COMPLETED


def test_resend_replaces_the_link_and_unlocks(live_gateway: Callable[..., LiveGateway]) -> None:
    live = live_gateway()
    with live.client(live.token("e-bid")) as client:
        envelope_id = client.post("/api/v1/envelopes", json=envelope_request(send=True)).json()[
            "id"
        ]
        assert client.post(f"/api/v1/envelopes/{envelope_id}/parties/2/resend").status_code == 409
        assert client.post(f"/api/v1/envelopes/{envelope_id}/parties/9/resend").status_code == 404
        again = client.post(f"/api/v1/envelopes/{envelope_id}/parties/1/resend")
        assert again.status_code == 200
    with live.gateway.sessions() as session:
        kinds = [d.payload["kind"] for d in session.scalars(select(Delivery))]
        assert kinds == ["signing_request", "signing_request"]
        assert session.scalars(select(SigningLink)).all() == []  # links are made at sending


def test_a_body_nested_100k_deep_is_refused_not_a_500(
    live_gateway: Callable[..., LiveGateway],
) -> None:
    live = live_gateway()
    with live.client(live.token("e-bid")) as client:
        for body in ("[" * 100_000 + "]" * 100_000, '{"a":' * 100_000 + "1" + "}" * 100_000):
            answer = client.post(
                "/api/v1/envelopes", content=body, headers={"Content-Type": "application/json"}
            )
            assert answer.status_code == 422, answer.text
            assert answer.json()["error"]["code"] == "request.invalid"  # FastAPI's JSON parse
        # the server is fine afterwards
        assert client.get("/api/v1/envelopes").status_code == 200
