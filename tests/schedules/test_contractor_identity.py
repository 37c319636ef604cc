"""A contractor is a legal entity: exports with same-name companies, JV rows without a corporate
number and a registry with repeated names, synced from a folder through the sample mappings.
Every envelope goes to its own legal entity's signer only; re-importing changes nothing."""

from __future__ import annotations

from pathlib import Path

from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker
from stdnum.jp import cn

from connectors.base import Source
from connectors.csv import CsvFormat
from connectors.folder import FolderSource
from connectors.inbox import ReadLock
from core.envelopes.lifecycle import get_envelope
from core.intake.awards import get_award
from core.model import AwardState, Contractor, ContractorConflict
from core.runtime import Runtime
from mapping import SourceMapping, load_mapping
from schedules.intake import IntakeResult, SourceSpec, take_in_source
from tests.fixtures.intake import (
    AUTHORITIES,
    MAPPINGS,
    cp932,
    municipal_mapping,
    policy,
    register_officials,
    registry_mapping,
    usage_mapping,
)
from tests.fixtures.pdfs import make_pdf

PDF = make_pdf(pages=1)


def corporate_number(serial: int) -> str:
    """A valid 法人番号 (check digit first) made from a 12-digit serial."""
    body = f"{serial:012d}"
    return cn.calc_check_digit(body) + body


YAMADA = [corporate_number(1_000_000_000 + i) for i in range(5)]

# Usage requests identified by corporate number (the portal's only key).
USAGE_BY_NUMBER = """\
version: 1
kind: usage_requests
format: {encoding: cp932, header: true}
contractor:
  name: "{商号又は名称}"
  corporate_number: {column: 法人番号, transforms: [corporate_number]}
usage_request:
  signer_name: "{氏名}"
  signer_email: {column: メールアドレス, transforms: [email]}
  access_code: {column: アクセスコード, transforms: [access_code]}
  consented_on: {column: 提出日, transforms: [date]}
"""


def _portal_row(number: str, title: str, name: str, corp: str) -> str:
    return f'"{number}","{title}","2025-10-01","1000000.00","S1","8002010","{name}","{corp}"'


def _spec(
    name: str, folder: Path, mapping: SourceMapping, documents: Path | None = None
) -> SourceSpec:
    folder.mkdir(parents=True, exist_ok=True)

    def opener() -> Source:
        return FolderSource(
            name=name,
            directory=str(folder),
            csv_format=CsvFormat.from_options(mapping.format),
            read_lock=ReadLock(mode="none"),
            documents_dir=str(documents or folder),
        )

    return SourceSpec(name, mapping.kind, mapping, opener)


def _sync(sessions: sessionmaker[Session], runtime: Runtime, spec: SourceSpec) -> IntakeResult:
    with sessions() as session:
        register_officials(session)  # the register's officials sign as staff
    return take_in_source(
        sessions=sessions, runtime=runtime, policy=policy(), spec=spec, authorities=AUTHORITIES
    )


def _portal(tmp_path: Path) -> SourceSpec:
    mapping = load_mapping(
        (MAPPINGS / "portal.yaml").read_text(encoding="utf-8"), name="portal.yaml"
    )
    inbox = tmp_path / "portal"
    (inbox / "pdf").mkdir(parents=True)
    rows = [
        _portal_row(f"P{i}", f"案件{i}", "株式会社山田建設", corp) for i, corp in enumerate(YAMADA)
    ]
    rows.append(_portal_row("P9", "共同企業体の案件", "山田・鈴木特定建設工事共同企業体", ""))
    rows.append(_portal_row("P8", "代表者名だけのJV", "㈱山田建設", ""))
    for i in [*range(5), 8, 9]:
        (inbox / "pdf" / f"P{i}.pdf").write_bytes(PDF)
    (inbox / "awards.csv").write_bytes(b"\xef\xbb\xbf" + ("\r\n".join(rows) + "\r\n").encode())
    return _spec("portal", inbox, mapping)


def test_same_name_companies_stay_apart_and_consent_releases_only_its_own_award(
    sessions: sessionmaker[Session], runtime: Runtime, tmp_path: Path
) -> None:
    portal = _portal(tmp_path)
    first = _sync(sessions, runtime, portal)
    assert (first.status, first.created, first.errors) == ("succeeded", 7, 0)
    with sessions() as session:
        yamada = session.scalars(
            select(Contractor).where(Contractor.name == "株式会社山田建設")
        ).all()
        assert sorted(c.corporate_number for c in yamada) == sorted(YAMADA)  # five, not one
        for award_id in ("P8", "P9"):  # JV rows: no number, never attached by name
            award = get_award(session=session, source="portal", award_id=award_id)
            assert award.contractor_id is None
            assert award.state is AwardState.WAITING_CONTRACTOR
        # The row that only names 株式会社山田建設 is reported with its five candidates.
        (candidate,) = session.scalars(
            select(ContractorConflict).where(ContractorConflict.award_id == "P8")
        ).all()
        assert candidate.kind == "name_candidate" and len(candidate.detail["candidates"]) == 5

    # One of the five consents: its award alone is released, to its signer alone.
    usage = load_mapping(USAGE_BY_NUMBER, name="usage.yaml")
    spec = _spec("uketsuke", tmp_path / "usage", usage)
    header = "商号又は名称,法人番号,氏名,メールアドレス,アクセスコード,提出日"
    consent = (
        f"株式会社山田建設,{YAMADA[2]},山田 花子,hanako@yamada2.example.jp,1234,令和7年10月2日"
    )
    (tmp_path / "usage" / "u.csv").write_bytes(cp932([header, consent]))
    released = _sync(sessions, runtime, spec)
    assert (released.created, released.released) == (1, 1)
    with sessions() as session:
        mine = get_award(session=session, source="portal", award_id="P2")
        assert mine.state is AwardState.DRAFTED and mine.envelope_id is not None
        envelope = get_envelope(session=session, envelope_id=mine.envelope_id)
        assert [p.email for p in envelope.parties if p.email.endswith("yamada2.example.jp")] == [
            "hanako@yamada2.example.jp"
        ]
        for award_id in ("P0", "P1", "P3", "P4"):
            other = get_award(session=session, source="portal", award_id=award_id)
            assert other.state is AwardState.WAITING_USAGE_REQUEST and other.envelope_id is None

    # A consent naming the company only by name identifies nobody: a line error, nothing moves.
    (tmp_path / "usage" / "v.csv").write_bytes(
        cp932([header, "株式会社山田建設,,山田 一郎,ichiro@example.jp,5678,令和7年10月2日"])
    )
    refused = _sync(sessions, runtime, spec)
    assert [e.code for e in refused.line_errors] == ["intake.contractor_unidentified"]
    assert refused.released == 0

    # The same export again: nothing changes, no conflict is reported twice.
    (tmp_path / "portal" / "again.csv").write_bytes(
        (tmp_path / "portal" / "processed").iterdir().__next__().read_bytes()
    )
    again = _sync(sessions, runtime, portal)
    assert (again.created, again.updated, again.unchanged, again.conflicts) == (0, 0, 7, 0)
    with sessions() as session:
        assert session.scalar(select(func.count()).select_from(Contractor)) == 5


REGISTRY_HEADER = "業者番号,商号又は名称,法人番号,メールアドレス"


def _registry_rows() -> list[str]:
    """15 codes under 5 names (three companies of each name), some with two addresses, one
    company listed on two rows (two 業種) with its addresses in another order."""
    rows = []
    names = ["株式会社山田建設", "㈱鈴木工務店", "有限会社佐藤組", "田中電気株式会社", "髙橋建設㈱"]
    for i in range(15):
        code = f"{i + 1:06d}"
        corp = corporate_number(2_000_000_000 + i) if i % 2 == 0 else ""
        rows.append(
            f"{code},{names[i % 5]},{corp},info{i}@c{i}.example.jp;keiyaku{i}@c{i}.example.jp"
        )
    rows.append(f"000001,{names[0]},{corporate_number(2_000_000_000)},keiyaku0@c0.example.jp")
    return rows


def test_a_registry_with_repeated_names_keeps_each_code_and_reimports_as_a_no_op(
    sessions: sessionmaker[Session], runtime: Runtime, tmp_path: Path
) -> None:
    registry = _spec("meibo", tmp_path / "meibo", registry_mapping())
    data = cp932([REGISTRY_HEADER, *_registry_rows()])
    (tmp_path / "meibo" / "meibo.csv").write_bytes(data)
    first = _sync(sessions, runtime, registry)
    assert (first.created, first.errors) == (15, 0)
    with sessions() as session:
        assert session.scalar(select(func.count()).select_from(Contractor)) == 15
        emails = session.scalars(select(Contractor.email).order_by(Contractor.email)).all()
        assert len(set(emails)) == 15  # nobody shares another company's address
    (tmp_path / "meibo" / "meibo2.csv").write_bytes(data)
    again = _sync(sessions, runtime, registry)
    assert (again.created, again.updated, again.unchanged, again.conflicts) == (0, 0, 16, 0)

    # A row whose code and name disagree is reported; the code decides.
    (tmp_path / "meibo" / "typo.csv").write_bytes(
        cp932([REGISTRY_HEADER, "000002,全然違う商事株式会社,,x@other.example.jp"])
    )
    typo = _sync(sessions, runtime, registry)
    assert typo.conflicts == 1
    with sessions() as session:
        (conflict,) = session.scalars(
            select(ContractorConflict).where(ContractorConflict.kind == "code_name_mismatch")
        ).all()
        assert "000002" in conflict.message_ja and "全然違う商事" in conflict.message_ja


def test_awards_of_same_name_registry_companies_go_each_to_its_own_signer(
    sessions: sessionmaker[Session], runtime: Runtime, tmp_path: Path
) -> None:
    registry = _spec("meibo", tmp_path / "meibo", registry_mapping())
    (tmp_path / "meibo" / "m.csv").write_bytes(cp932([REGISTRY_HEADER, *_registry_rows()]))
    _sync(sessions, runtime, registry)
    header = "案件番号,案件名,開札日,落札金額,課所名,落札業者名,業者番号,電子契約"
    # Codes 000001, 000006, 000011 are three different 株式会社山田建設.
    rows = [
        f"R7-10{i},山田さんの工事{i},R7.10.1,1000000,土木課,株式会社山田建設,{code},希望"
        for i, code in enumerate(("000001", "000006", "000011"))
    ]
    awards_dir = tmp_path / "ebid"
    for i in range(3):
        folder = awards_dir / "契約書" / "20251001"
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"R7-10{i}.pdf").write_bytes(PDF)
    awards = _spec("ebid", awards_dir, municipal_mapping())
    (awards_dir / "a.csv").write_bytes(cp932([header, *rows]))
    assert _sync(sessions, runtime, awards).created == 3
    usage = _spec("uketsuke", tmp_path / "usage", usage_mapping())
    usage_header = "業者番号,商号又は名称,案件番号,契約締結権限者氏名,役職,メールアドレス,アクセスコード,担当部署,担当者氏名,電話番号,提出日"
    consents = [
        f"{code},株式会社山田建設,,署名者{i},代表取締役,signer{i}@yamada{i}.example.jp,123{i},工事部,担当,03-0000-0000,令和7年10月2日"
        for i, code in enumerate(("000001", "000006", "000011"))
    ]
    (tmp_path / "usage" / "u.csv").write_bytes(cp932([usage_header, *consents]))
    assert _sync(sessions, runtime, usage).released == 3
    with sessions() as session:
        for i in range(3):
            award = get_award(session=session, source="ebid", award_id=f"R7-10{i}")
            assert award.envelope_id is not None
            envelope = get_envelope(session=session, envelope_id=award.envelope_id)
            contractor_party = envelope.parties[0]
            assert contractor_party.email == f"signer{i}@yamada{i}.example.jp"
