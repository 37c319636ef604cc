"""Where a contractor's signer comes from is the admin's choice per source and contract type
(`signer:` in the mapping), and a construction contract is never made or sent without the
contractor's consent in force (建設業法19条3項), withdrawal included."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy.orm import Session, sessionmaker

from connectors.base import Source
from connectors.csv import CsvFormat
from connectors.folder import FolderSource
from connectors.inbox import ReadLock
from core.envelopes.lifecycle import get_envelope, send_envelope
from core.errors import GatewayError
from core.intake.awards import get_award
from core.intake.consent import withdraw_consent
from core.model import AwardState
from core.runtime import Runtime
from mapping import MappingSpecError, SourceMapping, load_mapping
from schedules.intake import IntakeResult, SourceSpec, take_in_source
from tests.fixtures.intake import (
    AUTHORITIES,
    MAPPINGS,
    cp932,
    policy,
    register_officials,
    registry_mapping,
    usage_mapping,
)
from tests.fixtures.pdfs import make_pdf

PDF = make_pdf(pages=1)
HEADER = "案件番号,案件名,開札日,落札金額,課所名,落札業者名,業者番号,電子契約,業種"


def _mapping(
    signer: str = "signer:\n  construction: usage_request\n  other: registry\n",
) -> SourceMapping:
    text = (MAPPINGS / "municipal.yaml").read_text(encoding="utf-8")
    text = text.replace(
        '  management_number: "R{開札日8桁}-{案件番号}"\n',
        '  management_number: "R{開札日8桁}-{案件番号}"\n  contract_type: "{業種}"\n',
    )
    return load_mapping(text + signer, name="municipal.yaml")


def _spec(name: str, folder: Path, mapping: SourceMapping) -> SourceSpec:
    folder.mkdir(parents=True, exist_ok=True)

    def opener() -> Source:
        return FolderSource(
            name=name, directory=str(folder), csv_format=CsvFormat.from_options(mapping.format),
            read_lock=ReadLock(mode="none"), documents_dir=str(folder),
        )  # fmt: skip

    return SourceSpec(name, mapping.kind, mapping, opener)


def _sync(sessions: sessionmaker[Session], runtime: Runtime, spec: SourceSpec) -> IntakeResult:
    with sessions() as session:
        register_officials(session)  # the register's officials sign as staff
    return take_in_source(
        sessions=sessions, runtime=runtime, policy=policy(), spec=spec, authorities=AUTHORITIES
    )


def test_signer_by_contract_type_and_consent_on_construction(
    sessions: sessionmaker[Session], runtime: Runtime, tmp_path: Path
) -> None:
    registry = _spec("meibo", tmp_path / "meibo", registry_mapping())
    (tmp_path / "meibo" / "m.csv").write_bytes(
        cp932(
            [
                "業者番号,商号又は名称,法人番号,メールアドレス",
                "000123,㈱髙橋建設,,info@takahashi.example.jp",
                "000456,有限会社サンプル,,keiyaku@sample.example.jp",
            ]
        )
    )
    _sync(sessions, runtime, registry)
    ebid = tmp_path / "ebid"
    for number in ("R7-001", "R7-002", "R7-003"):
        (ebid / "契約書" / "20251001").mkdir(parents=True, exist_ok=True)
        (ebid / "契約書" / "20251001" / f"{number}.pdf").write_bytes(PDF)
    rows = [
        "R7-001,市道舗装,R7.10.1,1000000,土木課,㈱髙橋建設,000123,希望,舗装工事",
        "R7-002,庁舎清掃,R7.10.1,900000,総務課,有限会社サンプル,000456,希望,清掃業務委託",
    ]
    (ebid / "a.csv").write_bytes(cp932([HEADER, *rows]))
    awards = _spec("ebid", ebid, _mapping())
    first = _sync(sessions, runtime, awards)
    assert (first.created, first.released) == (2, 0)
    with sessions() as session:
        construction = get_award(session=session, source="ebid", award_id="R7-001")
        assert construction.state is AwardState.WAITING_USAGE_REQUEST  # the registry is not consent
        other = get_award(session=session, source="ebid", award_id="R7-002")
        # A registry signer has no access code: the draft waits visibly for staff to set one.
        assert other.state is AwardState.WAITING_ACCESS_CODE and other.envelope_id
        envelope = get_envelope(session=session, envelope_id=other.envelope_id)
        assert envelope.contract_type == "other" and envelope.consent_id is None
        assert envelope.parties[0].email == "keiyaku@sample.example.jp"  # the registry address
        assert "アクセスコード未設定" in (other.note or "")
        assert envelope.state.value == "draft"

    usage = _spec("uketsuke", tmp_path / "usage", usage_mapping())
    (tmp_path / "usage" / "u.csv").write_bytes(
        cp932(
            [
                "業者番号,商号又は名称,案件番号,契約締結権限者氏名,役職,メールアドレス,アクセスコード,担当部署,担当者氏名,電話番号,提出日",
                "000123,㈱髙橋建設,,髙橋 太郎,代表取締役,takahashi@example.co.jp,1234,工事部,鈴木,03-1234-5678,令和7年10月2日",
            ]
        )
    )
    assert _sync(sessions, runtime, usage).released == 1
    with sessions() as session:
        construction = get_award(session=session, source="ebid", award_id="R7-001")
        assert construction.envelope_id is not None
        envelope = get_envelope(session=session, envelope_id=construction.envelope_id)
        assert envelope.contract_type == "construction"
        assert envelope.consent_id == construction.usage_request_id
        assert envelope.parties[0].email == "takahashi@example.co.jp"
        # The contractor withdraws its consent: the draft cannot be sent, no new envelope.
        withdraw_consent(
            session=session, consent_id=envelope.consent_id, actor="staff", reason="書面に戻す"
        )
        session.commit()
        with pytest.raises(GatewayError) as refused:
            send_envelope(session=session, runtime=runtime, envelope_id=envelope.id, actor="staff")
        assert refused.value.code == "consent.withdrawn"
        assert "撤回" in refused.value.message_ja
        session.rollback()
    (ebid / "b.csv").write_bytes(
        cp932(
            [HEADER, "R7-003,次の工事,R7.10.1,1000000,土木課,㈱髙橋建設,000123,希望,土木一式工事"]
        )
    )
    later = _sync(sessions, runtime, awards)
    assert (later.created, later.released) == (1, 0)
    with sessions() as session:
        held = get_award(session=session, source="ebid", award_id="R7-003")
        assert held.state is AwardState.WAITING_USAGE_REQUEST and "撤回" in (held.note or "")


def test_construction_signers_come_only_from_the_usage_request() -> None:
    with pytest.raises(MappingSpecError) as info:
        _mapping("signer:\n  construction: registry\n")
    assert "signer.construction must be usage_request" in info.value.message_en
    with pytest.raises(MappingSpecError) as info:
        _mapping("signer:\n  other: mapping\n")
    assert "needs name and email" in info.value.message_en
