"""The mapping language: errors name their YAML line; records become drafts, skips or errors."""

from __future__ import annotations

import io
from decimal import Decimal
from pathlib import Path

import pytest

from connectors.csv import CsvFormat, read_csv
from core.drafts import ContractorDraft, EnvelopeDraft, SigningAuthority
from mapping import MappingSpecError, choose_signing_authority, load_mapping
from tests.fixtures.intake import AUTHORITIES, registry_mapping

ROOT = Path(__file__).resolve().parents[2]


def _problems(text: str) -> list[str]:
    with pytest.raises(MappingSpecError) as info:
        load_mapping(text, name="m.yaml")
    assert info.value.code == "mapping.invalid"
    return list(info.value.details["problems"])


def test_every_problem_is_reported_with_its_line() -> None:
    text = """\
version: 1
kind: awards
award:
  id: "{番号}"
  titel: "{件名}"
  amount: {column: 金額, transforms: [yen, {lookup: nowhere}, kanji]}
contractor:
  name: "{業者"
documents:
  - name: 契約書
parties:
  - role: boss
fields:
  - {document: 2, party: 1, label: 日付, page: 1, rect: [0, 0, 10, 10]}
colour: blue
"""
    problems = _problems(text)
    joined = "\n".join(problems)
    assert "m.yaml:3: award: 'title' is required" in joined
    assert "m.yaml:5: award: unknown key 'titel'" in joined
    assert "m.yaml:6: award.amount: transform 'lookup': no lookup table 'nowhere'" in joined
    assert "m.yaml:6: award.amount: unknown transform 'kanji'" in joined
    assert "m.yaml:8: contractor.name: unclosed '{'" in joined
    assert "m.yaml:10: documents[1]: give path (a file), attachment (a field), or both" in joined
    assert "m.yaml:12: parties[1]: role is one of approver, signer, cc" in joined
    assert "m.yaml:14: fields[1]: document is a whole number" in joined
    assert "m.yaml:15: unknown key 'colour'" in joined


def test_yaml_syntax_and_duplicate_keys_name_the_line() -> None:
    assert _problems("award:\n  id: a\n  id: b\n")[0].startswith("m.yaml:3: not valid YAML")
    assert _problems("award: [unclosed\n")[0].startswith("m.yaml:")


def test_a_layout_never_seen_before_written_only_in_yaml() -> None:
    """Tab-separated, two title rows, amounts in 千円 units, a JV without corporate number,
    departments through a table, a path built from a formatted date."""
    mapping = load_mapping(
        """\
format: {encoding: cp932, delimiter: "\\t", skip_rows: 2, null_values: ["", "-"]}
lookups:
  部局: {道路課: 建設局道路課, 河川課: 建設局河川課}
vars:
  契約日: {column: 契約締結予定日, transforms: [date]}
  番号: {column: 契約番号, transforms: [nfkc, upper, remove_spaces]}
skip:
  - any:
      - {column: 区分, equals: 取消}
      - {column: 落札額(千円), less_than: 100, transforms: [nfkc]}
    reason: 取消または少額
award:
  id: "{番号}"
  title: {template: "{工事名}({工区})", transforms: [nfkc]}
  amount: {column: 落札額(千円), transforms: [decimal, {template: "{value}千"}, yen]}
  award_date: {var: 契約日}
  deadline: {column: 締結期限, transforms: [date], required: false}
  department: {column: 担当, transforms: [{lookup: {table: 部局}}]}
contractor:
  name: {first_of: [{column: 共同企業体名}, {column: 業者名}]}
  corporate_number: {column: 法人番号, transforms: [corporate_number]}
documents:
  - name: "{番号}_契約書"
    path: {template: "/pdf/{契約日}/{番号}.pdf"}
parties:
  - {role: signer, from: contractor}
  - {role: signer, from: signing_authority}
  - {role: cc, name: 道路課 担当, email: douro@example.lg.jp}
""",
        name="new.yaml",
    )
    lines = [
        "令和7年度 契約予定一覧",
        "作成日: R7.10.1",
        "契約番号\t工事名\t工区\t落札額(千円)\t契約締結予定日\t締結期限\t担当\t業者名\t共同企業体名\t法人番号\t区分",
        "ｋ－７－１\t国道改良工事\t第２工区\t１２，３４５\t令和7年10月1日\t-\t道路課\t\t山田・川口特定建設工事共同企業体\t\t通常",
        "k-7-2\t河川護岸工事\t-\t50\tR7.10.2\tR7.10.9\t河川課\t株式会社テスト\t\t7000012050002\t通常",
        "k-7-3\t取消工事\t-\t5000\tR7.10.3\t-\t河川課\t株式会社テスト\t\t7000012050002\t取消",
    ]  # fmt: skip
    data = ("\r\n".join(lines) + "\r\n").encode("cp932")
    records = list(
        read_csv(io.BytesIO(data), CsvFormat.from_options(mapping.format), source="s", file="f.tsv")
    )
    outcomes = [mapping.apply(r.fields, source="s", file="f.tsv", line=r.provenance.line, authorities=AUTHORITIES) for r in records]  # fmt: skip
    draft = outcomes[0].draft
    assert isinstance(draft, EnvelopeDraft), outcomes[0].errors
    assert draft.award_id == "K-7-1" and draft.title == "国道改良工事(第2工区)"
    assert draft.amount == Decimal(12_345_000) and str(draft.award_date) == "2025-10-01"
    assert draft.deadline is None and draft.department == "建設局道路課"
    assert draft.contractor.name == "山田・川口特定建設工事共同企業体"
    assert draft.contractor.corporate_number is None
    assert draft.documents[0].path == "/pdf/2025-10-01/K-7-1.pdf"
    assert draft.documents[0].name == "K-7-1_契約書.pdf"
    assert [p.source for p in draft.parties] == ["contractor", "signing_authority", "fixed"]
    assert draft.parties[1].email == "shicho@city.example.lg.jp"
    assert outcomes[1].skipped == "取消または少額"  # 50千円 < 100
    assert outcomes[2].skipped == "取消または少額"
    assert records[0].provenance.line == 4


def test_line_errors_carry_field_and_mapping_line() -> None:
    mapping = load_mapping(
        """\
award:
  id: "{番号}"
  title: "{件名}"
  amount: {column: 金額, transforms: [yen]}
contractor:
  name: "{業者}"
documents:
  - {name: 契約書, path: "{番号}.pdf"}
parties:
  - {role: signer, from: contractor}
""",
        name="m.yaml",
    )
    outcome = mapping.apply(
        {"番号": "1", "件名": "", "金額": "10.5", "業者": "A"}, source="s", file="f", line=9
    )
    assert outcome.draft is None
    errors = {e.field: e for e in outcome.errors}
    assert errors["title"].code == "mapping.required" and errors["title"].mapping_line == 3
    assert errors["amount"].code == "mapping.bad_amount" and errors["amount"].mapping_line == 4
    assert errors["amount"].line == 9 and errors["amount"].file == "f"
    missing = mapping.apply({"番号": "1", "件名": "x", "業者": "A"}, source="s")
    assert missing.errors[0].code == "mapping.column_missing"


def test_signing_authority_register() -> None:
    register = [
        SigningAuthority("*", None, "市長", "mayor@x.jp"),
        SigningAuthority("*", Decimal(5_000_000), "課長", "kacho@x.jp"),
        SigningAuthority("土木課", Decimal(13_000_000), "土木課長", "doboku@x.jp"),
        SigningAuthority("土木課", Decimal(5_000_000), "土木係長", "kakari@x.jp"),
    ]

    def who(department: str | None, amount: int | None) -> str | None:
        chosen = choose_signing_authority(
            register, department, None if amount is None else Decimal(amount)
        )
        return chosen.name if chosen else None

    assert who("総務課", 1_000) == "課長"
    assert who("総務課", 5_000_001) == "市長"
    assert who("土木課", 5_000_000) == "土木係長"  # the department's own entry wins the tie
    assert who("土木課", 10_000_000) == "土木課長"
    assert who("土木課", 20_000_000) == "市長"
    assert who("土木課", None) == "市長"
    assert choose_signing_authority(register[1:], "総務課", Decimal(9_000_000)) is None


def test_sample_mappings_shipped_with_init_load() -> None:
    for path in sorted((ROOT / "gateway" / "mappings").glob("*.yaml")):
        load_mapping(path.read_text(encoding="utf-8"), name=path.name)


def test_a_registry_row_gives_every_address_in_its_cell() -> None:
    outcome = registry_mapping().apply(
        {
            "業者番号": "０００１２３",
            "商号又は名称": "株式会社髙橋建設",
            "法人番号": None,
            "メールアドレス": "keiyaku@takahashi.example.co.jp; ｓｈｉｎｓａ@takahashi.example.co.jp",
        },
        source="meibo",
        line=2,
    )
    assert not outcome.errors
    assert isinstance(outcome.draft, ContractorDraft)
    assert outcome.draft.contractor.registry_code == "000123"
    assert outcome.draft.emails == (
        "keiyaku@takahashi.example.co.jp",
        "shinsa@takahashi.example.co.jp",
    )
