"""Consent on every API path (建設業法19条3項): a construction contract is refused without the
contractor's recorded consent, made on it once recorded, and refused again once withdrawn;
the consent shows on the envelope. Over real HTTP, SQLite and PostgreSQL."""

from __future__ import annotations

import csv
import io
import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from xml.etree import ElementTree

from sqlalchemy import select

from core.model import AuditEvent
from tests.fixtures.gateway import SECRETS, complete_by_services, envelope_request
from tests.gateway.conftest import LiveGateway

NUMBER = "7000012050002"  # a valid 法人番号
ROOT = Path(__file__).resolve().parents[2]


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


CONSENT_XSD = """\
<?xml version="1.0" encoding="UTF-8"?>
<xs:schema xmlns:xs="http://www.w3.org/2001/XMLSchema">
  <xs:element name="contract">
    <xs:complexType>
      <xs:sequence>
        <xs:element name="number" type="xs:string"/>
        <xs:element name="contract_type" type="xs:string"/>
        <xs:element name="consent_on" type="xs:string"/>
        <xs:element name="consent_measures" type="xs:string"/>
      </xs:sequence>
    </xs:complexType>
  </xs:element>
</xs:schema>
"""


def _sink(
    name: str, path: Path, record_format: str, fields: dict[str, str], extra: str = ""
) -> str:
    lines = "".join(f"          {k}: {v}\n" for k, v in fields.items())
    return (
        f"  {name}:\n    kind: folder\n    events: [completed]\n    path: {path}\n"
        f"    content:\n      documents: false\n      certificate: false\n      directory: ''\n"
        f"      record:\n        format: {record_format}\n        name: '{{management_number}}.{{ext}}'\n"
        f"{extra}        fields:\n{lines}"
    )


def test_the_consent_reaches_the_sink_records_as_json_xml_and_csv(
    live_gateway: Callable[..., LiveGateway], tmp_path: Path
) -> None:
    """A construction contract concluded on the contractor's consent: every sink record
    (JSON, XML checked against its XSD, CP932 CSV) carries the consent's date and the
    電磁的措置 agreed to, pushed by `keiyaku outbox dispatch`; a contract made without a
    consent carries empty values."""
    (tmp_path / "contract.xsd").write_text(CONSENT_XSD, encoding="utf-8")
    japanese = {"契約番号": "management_number", "契約種別": "contract_type_ja",
                "承諾日": "consent_on", "電磁的措置": "consent_measures"}  # fmt: skip
    sinks = "sinks:\n" + "".join(
        [
            _sink("as_json", tmp_path / "json", "json", japanese),
            _sink("as_csv", tmp_path / "csv", "csv", japanese, "        encoding: cp932\n"),
            _sink(
                "as_xml", tmp_path / "xml", "xml",
                {"number": "management_number", "contract_type": "contract_type",
                 "consent_on": "consent_on", "consent_measures": "consent_measures"},
                f"        xsd: {tmp_path / 'contract.xsd'}\n",
            ),
        ]
    )  # fmt: skip
    for folder in ("json", "csv", "xml"):
        (tmp_path / folder).mkdir()
    live = live_gateway(extra=sinks)
    measures = "電子契約サービスによる契約書面の交付(電子署名及びタイムスタンプ)"
    with live.client(live.token("e-bid")) as client:
        consent = client.post(
            "/api/v1/consents",
            json={
                "contractor_name": "株式会社髙橋建設",
                "contractor": {"corporate_number": NUMBER},
                "signer_name": "髙橋 一郎",
                "signer_email": "ichiro@takahashi.example.co.jp",
                "consented_on": "2026-04-01",
                "measures": measures,
            },
        )
        assert consent.status_code == 200, consent.text
        assert consent.json()["measures"] == measures
        construction = client.post(
            "/api/v1/envelopes",
            json=envelope_request(
                send=True, contract_type="construction", contractor={"corporate_number": NUMBER}
            ),
        ).json()
        other = client.post("/api/v1/envelopes", json=envelope_request(send=True)).json()
    for envelope in (construction, other):
        complete_by_services(live.gateway, envelope["id"])
    env = {k: v for k, v in os.environ.items() if not k.startswith("KEIYAKU_")}
    dispatched = subprocess.run(
        [sys.executable, "-m", "gateway.cli", "--config", str(live.config), "outbox", "dispatch"],
        capture_output=True, text=True, cwd=ROOT, env={**env, **SECRETS}, timeout=300,
    )  # fmt: skip
    assert dispatched.returncode == 0, dispatched.stdout + dispatched.stderr

    number, plain = construction["management_number"], other["management_number"]
    record = json.loads((tmp_path / "json" / f"{number}.json").read_text(encoding="utf-8"))
    assert record == {"契約番号": number, "契約種別": "建設工事", "承諾日": "2026-04-01",
                      "電磁的措置": measures}  # fmt: skip
    without = json.loads((tmp_path / "json" / f"{plain}.json").read_text(encoding="utf-8"))
    assert without["契約種別"] == "建設工事以外" and without["承諾日"] == ""
    assert without["電磁的措置"] == ""

    rows = list(
        csv.reader(io.StringIO((tmp_path / "csv" / f"{number}.csv").read_bytes().decode("cp932")))
    )
    assert rows == [["契約番号", "契約種別", "承諾日", "電磁的措置"],
                    [number, "建設工事", "2026-04-01", measures]]  # fmt: skip

    xml = ElementTree.fromstring((tmp_path / "xml" / f"{number}.xml").read_bytes())
    assert xml.findtext("contract_type") == "construction"
    assert xml.findtext("consent_on") == "2026-04-01"
    assert xml.findtext("consent_measures") == measures
