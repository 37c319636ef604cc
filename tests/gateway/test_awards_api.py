"""POST /api/v1/awards/{source}: a pushed award goes through the source's mapping, idempotently."""

from __future__ import annotations

import datetime as dt
import hashlib
from collections.abc import Callable
from pathlib import Path

from core.model import Envelope
from tests.fixtures.gateway import b64, complete_by_services, run_keiyaku
from tests.fixtures.pdfs import make_pdf
from tests.gateway.conftest import LiveGateway

MAPPING = """\
version: 1
kind: awards
format: {type: records}
award:
  id: "{案件番号}"
  title: "{案件名}"
  amount: {column: 落札金額, transforms: [yen]}
  award_date: {column: 開札日, transforms: [date]}
  department: 契約課
contractor:
  name: "{落札業者名}"
  registry_code: {column: 業者番号, transforms: [nfkc]}
documents:
  - name: 契約書
    attachment: {column: contractPdf}
parties:
  - role: signer
    from: contractor
  - role: signer
    from: signing_authority
"""

XSD = """\
<?xml version="1.0" encoding="UTF-8"?>
<xs:schema xmlns:xs="http://www.w3.org/2001/XMLSchema">
  <xs:element name="award">
    <xs:complexType>
      <xs:sequence>
        <xs:element name="案件番号" type="xs:string"/>
        <xs:element name="案件名" type="xs:string"/>
        <xs:element name="落札金額" type="xs:string"/>
        <xs:element name="開札日" type="xs:string"/>
        <xs:element name="落札業者名" type="xs:string"/>
        <xs:element name="業者番号" type="xs:string"/>
        <xs:element name="contractPdf" type="xs:string"/>
      </xs:sequence>
    </xs:complexType>
  </xs:element>
</xs:schema>
"""

AWARD = {
    "案件番号": "R7-0001",
    "案件名": "市道１号線舗装補修工事",
    "落札金額": "３１，３８９，０００円",
    "開札日": "令和7年10月1日",
    "落札業者名": "株式会社髙橋建設",
    "業者番号": "０００１２３",
    "contractPdf": b64(make_pdf(pages=1)),
}


def _start(live_gateway: Callable[..., LiveGateway], tmp_path: Path, more: str = "") -> LiveGateway:
    (tmp_path / "ebid.yaml").write_text(MAPPING, encoding="utf-8")
    (tmp_path / "award.xsd").write_text(XSD, encoding="utf-8")
    extra = f"""
sources:
  ebid:
    kind: api
    mapping: {tmp_path / "ebid.yaml"}
    xsd: {tmp_path / "award.xsd"}
intake:
  signing_authorities:
    - department: "*"
      name: 開発 太郎
      email: shicho@city.example.jp
"""
    return live_gateway(extra=extra + more)


def test_a_pushed_award_is_taken_in_once(
    live_gateway: Callable[..., LiveGateway], tmp_path: Path
) -> None:
    live = _start(live_gateway, tmp_path)
    with live.client(live.token("ebid")) as http:
        first = http.post("/api/v1/awards/ebid", json=AWARD)
        assert first.status_code == 200, first.text
        body = first.json()
        assert body["created"] == 1 and body["errors"] == []
        assert body["waiting"] == 1  # no usage request from the contractor yet: it waits
        again = http.post("/api/v1/awards/ebid", json=AWARD)
        assert again.status_code == 200
        assert again.json()["created"] == 0 and again.json()["unchanged"] == 1


def test_a_bad_award_is_refused_with_its_line_error(
    live_gateway: Callable[..., LiveGateway], tmp_path: Path
) -> None:
    live = _start(live_gateway, tmp_path)
    with live.client(live.token("ebid")) as http:
        bad = http.post("/api/v1/awards/ebid", json={**AWARD, "開札日": "令和99年13月40日"})
        assert bad.status_code == 422
        (error,) = bad.json()["errors"]
        assert error["reason_ja"] and error["mapping_line"]


def test_xml_is_validated_and_entities_refused(
    live_gateway: Callable[..., LiveGateway], tmp_path: Path
) -> None:
    live = _start(live_gateway, tmp_path)
    xml = "<award>" + "".join(f"<{k}>{v}</{k}>" for k, v in AWARD.items()) + "</award>"
    with live.client(live.token("ebid")) as http:
        ok = http.post(
            "/api/v1/awards/ebid", content=xml.encode(), headers={"Content-Type": "application/xml"}
        )
        assert ok.status_code == 200, ok.text
        assert ok.json()["created"] == 1
        missing = xml.replace("<業者番号>０００１２３</業者番号>", "")
        invalid = http.post(
            "/api/v1/awards/ebid",
            content=missing.encode(),
            headers={"Content-Type": "application/xml"},
        )
        assert invalid.status_code == 422
        assert invalid.json()["error"]["code"] == "award.xml_invalid"
        secret = tmp_path / "secret.txt"
        secret.write_text("do-not-read")
        xxe = (
            f'<?xml version="1.0"?><!DOCTYPE award [<!ENTITY x SYSTEM "file://{secret}">]>'
            + xml.replace("R7-0001", "&x;")
        )
        refused = http.post(
            "/api/v1/awards/ebid", content=xxe.encode(), headers={"Content-Type": "application/xml"}
        )
        assert refused.status_code == 422
        assert "do-not-read" not in refused.text


def test_unknown_source_scope_and_media_type(
    live_gateway: Callable[..., LiveGateway], tmp_path: Path
) -> None:
    live = _start(live_gateway, tmp_path)
    with live.client(live.token("ebid")) as http:
        assert http.post("/api/v1/awards/nope", json=AWARD).status_code == 404
        form = http.post("/api/v1/awards/ebid", data={"a": "b"})
        assert form.status_code == 415
    with live.client(live.token("reader", ["envelopes:read"])) as http:
        assert http.post("/api/v1/awards/ebid", json=AWARD).status_code == 403
    with live.client() as http:
        assert http.post("/api/v1/awards/ebid", json=AWARD).status_code == 401


def test_control_characters_in_a_pushed_award(
    live_gateway: Callable[..., LiveGateway], tmp_path: Path
) -> None:
    """A NUL (or ESC) in a field is a line error, never a 500; a multi-line title is taken."""
    live = _start(live_gateway, tmp_path)
    with live.client(live.token("ebid")) as http:
        for bad in ("市道\x00舗装", "\x1b[2J市道"):
            refused = http.post("/api/v1/awards/ebid", json={**AWARD, "案件名": bad})
            assert refused.status_code == 422, refused.text
            (error,) = refused.json()["errors"]
            assert error["code"] == "text.control_character" and "制御文字" in error["reason_ja"]
        multi_line = {**AWARD, "案件番号": "R7-0002", "案件名": "市道１号線\r\n舗装補修工事"}
        taken = http.post("/api/v1/awards/ebid", json=multi_line)
        assert taken.status_code == 200, taken.text
        assert taken.json()["created"] == 1


def test_waiting_awards_are_listed_with_why_and_staff_decide(
    live_gateway: Callable[..., LiveGateway], tmp_path: Path
) -> None:
    from tests.gateway.test_admin_pages import _csrf, _login, _staff

    live = _start(live_gateway, tmp_path)
    with live.client(live.token("ebid")) as http:
        assert http.post("/api/v1/awards/ebid", json=AWARD).status_code == 200
        second = {**AWARD, "案件番号": "R7-0002", "業者番号": ""}  # a name only
        assert http.post("/api/v1/awards/ebid", json=second).status_code == 200
        listed = http.get("/api/v1/awards", params={"state": "waiting", "source": "ebid"})
        assert listed.status_code == 200, listed.text
        by_id = {a["award_id"]: a for a in listed.json()}
        assert by_id["R7-0001"]["waiting"]["code"] == "no_usage_request"
        assert by_id["R7-0001"]["waiting"]["release_ja"]
        assert by_id["R7-0002"]["state"] == "waiting_contractor"
        assert by_id["R7-0002"]["waiting"]["code"] == "no_contractor_match"
        assert "法人番号" in by_id["R7-0002"]["waiting"]["reason_ja"]
        assert http.get("/api/v1/awards", params={"state": "sent"}).json() == []
        assert http.get("/api/v1/awards", params={"state": "nope"}).status_code == 422
        gone = http.post("/api/v1/awards/ebid/R7-0002/dismiss", json={"reason": "重複登録"})
        assert gone.status_code == 200 and gone.json()["state"] == "dismissed"
        left = http.get("/api/v1/awards").json()
        assert [a["award_id"] for a in left] == ["R7-0001"]
        unknown = http.post("/api/v1/awards/ebid/R7-0009/release", json={})
        assert unknown.status_code == 404
    with live.client(live.token("reader", ["envelopes:read"])) as http:
        assert http.get("/api/v1/awards").status_code == 403

    # The same list on the staff page, with the dismiss form (CSRF) for admins.
    _staff(live, "admin@city.example.jp", "総務課", roles="admin")
    with live.client() as client:
        assert _login(client, "admin@city.example.jp").status_code == 303
        page = client.get("/admin/awards")
        assert page.status_code == 200
        table = page.text.split('id="awards"')[1].split("</table>")[0]
        assert 'data-award="ebid:R7-0001"' in table and "利用申出書" in table
        assert "R7-0002" not in table
        done = client.post(
            "/admin/awards/ebid/R7-0001/dismiss",
            data={"reason": "紙で契約", "csrf_token": _csrf(page.text)},
            follow_redirects=False,
        )
        assert done.status_code == 303
        assert 'data-award="ebid:R7-0001"' not in client.get("/admin/awards").text
        forged = client.post("/admin/awards/ebid/R7-0001/release", data={"csrf_token": "x"})
        assert forged.status_code == 403


def test_an_award_nested_100k_deep_is_refused_not_a_500(
    live_gateway: Callable[..., LiveGateway], tmp_path: Path
) -> None:
    live = _start(live_gateway, tmp_path)
    with live.client(live.token("ebid")) as http:
        deep = "[" * 100_000 + "]" * 100_000
        answer = http.post(
            "/api/v1/awards/ebid", content=deep, headers={"Content-Type": "application/json"}
        )
        assert answer.status_code == 422, answer.text
        assert answer.json()["error"]["code"] == "request.too_deep"
        assert http.post("/api/v1/awards/ebid", json=AWARD).status_code == 200  # still serving


# An entrustment (not construction) source whose mapping names the contractor's signer itself.
MAPPED_SIGNER = """\
version: 1
kind: awards
format: {type: records}
award:
  id: "{案件番号}"
  title: "{案件名}"
  amount: {column: 落札金額, transforms: [yen]}
  award_date: {column: 開札日, transforms: [date]}
  department: 契約課
  contract_type: other
contractor:
  name: "{落札業者名}"
  registry_code: {column: 業者番号, transforms: [nfkc]}
documents:
  - name: 契約書
    attachment: {column: contractPdf}
parties:
  - role: signer
    from: contractor
    name: "{担当者氏名}"
    email: {column: 担当者メール, transforms: [email]}
  - role: signer
    from: signing_authority
signer:
  other: mapping
"""


def test_a_mapped_signer_waits_for_an_access_code_until_staff_set_it_and_send(
    live_gateway: Callable[..., LiveGateway], tmp_path: Path
) -> None:
    from core.envelopes.lifecycle import get_envelope
    from core.model import AccessCode
    from core.states import EnvelopeState
    from gateway.runtime import access_code_policy
    from tests.fixtures.envelopes import ensure_staff
    from tests.gateway.test_admin_pages import _csrf, _login, _staff

    (tmp_path / "itaku.yaml").write_text(MAPPED_SIGNER, encoding="utf-8")
    live = live_gateway(
        extra=f"""
sources:
  itaku:
    kind: api
    mapping: {tmp_path / "itaku.yaml"}
intake:
  signing_authorities:
    - department: "*"
      name: 開発 太郎
      email: shicho@city.example.jp
"""
    )
    with live.gateway.sessions() as session:
        ensure_staff(session, "shicho@city.example.jp", "開発 太郎")  # the official signs as staff
        session.commit()
    award = {
        **{k: v for k, v in AWARD.items() if k != "業者番号"},
        "業者番号": "000777",
        "案件名": "庁舎清掃業務委託",
        "担当者氏名": "清掃 花子",
        "担当者メール": "hanako@seisou.example.jp",
    }
    token = live.token("itaku")
    with live.client(token) as http:
        pushed = http.post("/api/v1/awards/itaku", json={**award, "案件番号": "I-1"})
        assert pushed.status_code == 200, pushed.text
        assert pushed.json()["waiting"] == 1 and pushed.json()["released"] == 0
        no_amount = http.post(
            "/api/v1/awards/itaku", json={**award, "案件番号": "I-2", "落札金額": ""}
        )
        assert no_amount.status_code == 200, no_amount.text
        by_id = {a["award_id"]: a for a in http.get("/api/v1/awards").json()}
        waiting = by_id["I-1"]
        assert waiting["state"] == "waiting_access_code"
        assert waiting["state_ja"] == "アクセスコード未設定"
        assert waiting["waiting"]["code"] == "no_access_code"
        assert "アクセスコードを設定" in waiting["waiting"]["release_ja"]
        assert waiting["envelope_id"]  # its draft exists
        assert by_id["I-2"]["state"] == "waiting_amount"
        assert by_id["I-2"]["waiting"]["code"] == "no_amount"
        assert "契約金額" in by_id["I-2"]["waiting"]["reason_ja"]
        assert by_id["I-2"]["envelope_id"] is None  # nothing to send without an amount

        bad = http.post("/api/v1/awards/itaku/I-1/set-access-code", json={"access_code": "1"})
        assert bad.status_code == 422 and bad.json()["error"]["code"] == "party.bad_access_code"
        not_waiting = http.post(
            "/api/v1/awards/itaku/I-2/set-access-code", json={"access_code": "5678"}
        )
        assert not_waiting.status_code == 409
        sent = http.post("/api/v1/awards/itaku/I-1/set-access-code", json={"access_code": "5678"})
        assert sent.status_code == 200, sent.text
        assert sent.json()["state"] == "sent" and sent.json()["waiting"] is None
        assert [a["award_id"] for a in http.get("/api/v1/awards").json()] == ["I-2"]
        again = http.post("/api/v1/awards/itaku/I-1/set-access-code", json={"access_code": "5678"})
        assert again.status_code == 409
    policy = access_code_policy(live.gateway.settings)
    with live.gateway.sessions() as session:
        envelope = get_envelope(session=session, envelope_id=waiting["envelope_id"])
        assert envelope.state is EnvelopeState.SENT and envelope.amount is not None
        contractor = envelope.parties[0]
        assert contractor.email == "hanako@seisou.example.jp"
        row = session.get(AccessCode, contractor.id)
        assert row is not None and policy.matches("5678", row.code_hash)
    # Concluded, it has the three records-law facts, all from the record through the mapping
    # (the transaction date is the award date, 開札日, when the mapping names no other).
    complete_by_services(live.gateway, waiting["envelope_id"])
    with live.gateway.sessions() as session:
        envelope = get_envelope(session=session, envelope_id=waiting["envelope_id"])
        assert envelope.state is EnvelopeState.COMPLETED and envelope.completed_at is not None
        assert envelope.amount == 31_389_000
        assert envelope.transaction_date == dt.date(2025, 10, 1)
        assert envelope.counterparty == "株式会社髙橋建設"

    # The same wait on the staff page: set the code there and the envelope is sent.
    with live.client(token) as http:
        assert (
            http.post("/api/v1/awards/itaku", json={**award, "案件番号": "I-3"}).status_code == 200
        )
    _staff(live, "admin@city.example.jp", "総務課", roles="admin")
    with live.client() as client:
        assert _login(client, "admin@city.example.jp").status_code == 303
        page = client.get("/admin/awards")
        row_html = page.text.split('data-award="itaku:I-3"')[1].split("</tr>")[0]
        assert "アクセスコード未設定" in row_html and "アクセスコードを設定して送信" in row_html
        done = client.post(
            "/admin/awards/itaku/I-3/set-code",
            data={"access_code": "2468", "csrf_token": _csrf(page.text)},
            follow_redirects=False,
        )
        assert done.status_code == 303, done.text
        assert 'data-award="itaku:I-3"' not in client.get("/admin/awards").text
    with live.client(token) as http:
        listed = http.get("/api/v1/awards", params={"state": "sent"}).json()
        assert sorted(a["award_id"] for a in listed) == ["I-1", "I-3"]


def test_staff_remap_a_waiting_award_after_the_mapping_is_fixed(
    live_gateway: Callable[..., LiveGateway], tmp_path: Path
) -> None:
    """A unit-price contract's export leaves 落札金額 empty and gives 予定総額: the awards wait
    for an amount until the admin maps 予定総額, then staff re-map them on the API, the CLI and
    the staff page (audited), and an award taken to アクセスコード未設定 is sent by the CLI."""
    from sqlalchemy import select

    from core.model import AuditEvent, Award, Delivery
    from tests.fixtures.envelopes import ensure_staff
    from tests.gateway.test_admin_pages import _csrf, _login, _staff

    mapping = tmp_path / "itaku.yaml"
    mapping.write_text(MAPPED_SIGNER, encoding="utf-8")
    live = live_gateway(
        extra=f"""
sources:
  itaku:
    kind: api
    mapping: {mapping}
intake:
  signing_authorities:
    - department: "*"
      name: 開発 太郎
      email: shicho@city.example.jp
"""
    )
    with live.gateway.sessions() as session:
        ensure_staff(session, "shicho@city.example.jp", "開発 太郎")
        session.commit()
    pdf = make_pdf(pages=1, title="単価契約書")
    unit_price = {
        **AWARD, "業者番号": "000888", "案件名": "道路清掃業務(単価契約)", "落札金額": "",
        "予定総額": "１２，０００，０００円", "担当者氏名": "単価 太郎",
        "担当者メール": "taro@tanka.example.jp", "contractPdf": b64(pdf),
    }  # fmt: skip
    token = live.token("itaku")
    with live.client(token) as http:
        for number in ("U-1", "U-2", "U-3"):
            pushed = http.post("/api/v1/awards/itaku", json={**unit_price, "案件番号": number})
            assert pushed.status_code == 200 and pushed.json()["waiting"] == 1, pushed.text
        unchanged = http.post("/api/v1/awards/itaku/U-1/remap")  # the mapping is not fixed yet
        assert unchanged.status_code == 200, unchanged.text
        assert unchanged.json()["state"] == "waiting_amount"
    with live.gateway.sessions() as session:
        kept = session.scalars(select(Award).where(Award.award_id == "U-1")).one().record
        assert kept is not None and kept["予定総額"] == "１２，０００，０００円"
        assert set(kept["contractPdf"]) == {"$award_document_sha256"}  # not the bytes again

    # The admin maps 予定総額 (the estimated total of a unit-price contract) as the amount.
    mapping.write_text(
        MAPPED_SIGNER.replace("{column: 落札金額, transforms: [yen]}",
                              "{column: 予定総額, transforms: [yen]}"),
        encoding="utf-8",
    )  # fmt: skip
    with live.client(token) as http:
        remapped = http.post("/api/v1/awards/itaku/U-1/remap")
        assert remapped.status_code == 200, remapped.text
        body = remapped.json()
        assert body["state"] == "waiting_access_code" and body["amount"] == "12000000"
        assert body["envelope_id"]
        missing = http.post("/api/v1/awards/itaku/U-9/remap")
        assert missing.status_code == 404
        unknown = http.post("/api/v1/awards/nope/U-1/remap")
        assert unknown.status_code == 404 and unknown.json()["error"]["code"] == "not_found.source"

    cli = run_keiyaku(live.config, "awards", "remap", "itaku", "U-2")
    assert cli.returncode == 0, cli.stderr
    assert "itaku:U-2: re-mapped, waiting_access_code" in cli.stdout
    listed = run_keiyaku(live.config, "awards", "list", "--source", "itaku")
    assert "itaku:U-2 waiting_access_code" in listed.stdout, listed.stdout
    assert "アクセスコードを設定すると送信します" in listed.stdout
    sent = run_keiyaku(live.config, "awards", "set-code", "itaku", "U-2", "--code", "9753")
    assert sent.returncode == 0, sent.stderr
    assert "itaku:U-2: sent" in sent.stdout

    _staff(live, "admin@city.example.jp", "総務課", roles="admin")
    with live.client() as client:
        assert _login(client, "admin@city.example.jp").status_code == 303
        page = client.get("/admin/awards")
        row = page.text.split('data-award="itaku:U-3"')[1].split("</tr>")[0]
        assert "契約金額待ち" in row and "再マッピング" in row
        done = client.post(
            "/admin/awards/itaku/U-3/remap",
            data={"csrf_token": _csrf(page.text)},
            follow_redirects=False,
        )
        assert done.status_code == 303, done.text
        row = client.get("/admin/awards").text.split('data-award="itaku:U-3"')[1]
        assert "アクセスコード未設定" in row.split("</tr>")[0]

    with live.gateway.sessions() as session:
        awards = {a.award_id: a for a in session.scalars(select(Award))}
        assert awards["U-2"].state.value == "sent"
        envelope = session.get_one(Envelope, awards["U-2"].envelope_id)
        assert envelope.amount == 12_000_000 and envelope.state.value == "sent"
        assert envelope.documents[0].original_sha256 == hashlib.sha256(pdf).hexdigest()
        request = session.scalars(
            select(Delivery).where(Delivery.envelope_id == envelope.id)
        ).first()
        assert request is not None and request.payload["kind"] == "signing_request"
        events = session.scalars(
            select(AuditEvent).where(AuditEvent.action == "award.remapped")
        ).all()
        by_award = [(e.detail["award_id"], e.detail["changed"], e.actor) for e in events]
        assert ("U-1", False, "api:itaku") in by_award and ("U-1", True, "api:itaku") in by_award
        assert any(a == "U-2" and changed and actor.startswith("cli:")
                   for a, changed, actor in by_award)  # fmt: skip
        assert ("U-3", True, "admin@city.example.jp") in by_award
