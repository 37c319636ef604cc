"""SOAP awards synced end to end: documents inline or by path through a folder transport, a
record that fails is fetched again next run (the bookmark waits for it), dead letters are
replayed, and the bookmark can be reset by hand."""

from __future__ import annotations

from pathlib import Path

from sqlalchemy.orm import Session, sessionmaker

from connectors.csv import CsvFormat
from connectors.folder import FolderSource
from connectors.soap import MAX_RECORD_RETRIES, SoapQuery, SoapSource
from core.intake.awards import get_award
from core.intake.runs import get_cursor, list_replayable, reset_cursor
from core.model import AwardState
from core.runtime import Runtime
from mapping import load_mapping
from schedules.intake import IntakeResult, SourceSpec, replay_dead_letters, take_in_source
from tests.fixtures.intake import AUTHORITIES, policy
from tests.fixtures.pdfs import make_pdf
from tests.fixtures.soap_awards import PASSWORD, USERNAME, XSD, AwardServer, soap_award_server

__all__ = ["soap_award_server"]

PDF = make_pdf(pages=1)

MAPPING = """\
version: 1
kind: awards
format: {type: records}
award:
  id: "{awardId}"
  title: "{title}"
  amount: {column: amount, transforms: [yen]}
  award_date: {column: awardDate, transforms: [date]}
  department: "{department}"
contractor:
  name: "{contractor.name}"
  corporate_number: {column: contractor.corporateNumber, transforms: [corporate_number]}
documents:
  - name: "契約書_{awardId}"
    attachment: {first_of: [{column: contractPdf}, {value: null}]}
    path: "{awardId}.pdf"
parties:
  - role: signer
    from: contractor
  - role: signer
    from: signing_authority
"""


def _award(number: str, updated: str, **extra: object) -> dict[str, object]:
    return {"id": number, "title": f"工事{number}", "amount": "1000000", "date": "R7.10.1",
            "contractor": "株式会社テスト", "cn": "7000012050002", "updated": updated, **extra}  # fmt: skip


def _spec(server: AwardServer, documents: Path | None) -> SourceSpec:
    mapping = load_mapping(MAPPING, name="ebid.yaml")

    def opener() -> SoapSource:
        store = None
        if documents is not None:
            store = FolderSource(
                name="ebid", directory=str(documents), csv_format=CsvFormat(),
                documents_dir=str(documents),
            )  # fmt: skip
        query = SoapQuery(
            wsdl=server.wsdl_url, operation="GetAwards", record_path="awards.award",
            arguments={"office": "0001"}, username=USERNAME, password=PASSWORD, timeout=5,
            operation_timeout=5, attempts=1, response_schema=XSD, cursor_argument="since",
            cursor_field="updatedAt",
        )  # fmt: skip
        return SoapSource(name="ebid", query=query, documents=store)

    return SourceSpec("ebid", "awards", mapping, opener)


def _sync(sessions: sessionmaker[Session], runtime: Runtime, spec: SourceSpec) -> IntakeResult:
    return take_in_source(
        sessions=sessions, runtime=runtime, policy=policy(), spec=spec, authorities=AUTHORITIES
    )


def test_documents_inline_or_by_path_and_a_failed_record_is_fetched_again(
    soap_award_server: AwardServer,
    sessions: sessionmaker[Session],
    runtime: Runtime,
    tmp_path: Path,
) -> None:
    documents = tmp_path / "documents"
    documents.mkdir()
    (documents / "R7-002.pdf").write_bytes(PDF)
    soap_award_server.awards = [
        _award("R7-001", "2025-10-01T09:00:00", pdf=PDF),  # inline
        _award("R7-002", "2025-10-02T09:00:00"),  # by path, in the folder
        _award("R7-003", "2025-10-03T09:00:00", amount="千円くらい"),  # fails its mapping
        _award("R7-004", "2025-10-04T09:00:00"),  # by path, not there
    ]
    spec = _spec(soap_award_server, documents)
    first = _sync(sessions, runtime, spec)
    assert (first.created, first.errors) == (3, 1)
    with sessions() as session:
        assert [
            d.origin for d in get_award(session=session, source="ebid", award_id="R7-001").documents
        ] == ["R7-001.pdf"]
        by_path = get_award(session=session, source="ebid", award_id="R7-002")
        assert by_path.documents[0].size == len(PDF)
        missing = get_award(session=session, source="ebid", award_id="R7-004")
        assert missing.state is AwardState.WAITING_DOCUMENTS
        assert "R7-004.pdf" in (missing.note or "") and "がありません" in (missing.note or "")
        # The bookmark waits before the record that failed.
        cursor = get_cursor(session=session, source="ebid")
        assert cursor["value"] == "2025-10-02T09:00:00"
        assert cursor["retry"] == {"at": "2025-10-03T09:00:00", "attempts": 1}

    # The source fixes the record: the next run fetches it again and takes it in.
    soap_award_server.awards[2]["amount"] = "1,500,000"
    (documents / "R7-004.pdf").write_bytes(PDF)
    second = _sync(sessions, runtime, spec)
    assert (second.created, second.unchanged, second.errors) == (1, 1, 0)
    with sessions() as session:
        assert get_award(session=session, source="ebid", award_id="R7-003").amount == 1_500_000
        found = get_award(session=session, source="ebid", award_id="R7-004")
        assert found.state is AwardState.WAITING_USAGE_REQUEST  # its document came
        assert get_cursor(session=session, source="ebid") == {"value": "2025-10-04T09:00:00"}


def test_a_record_that_keeps_failing_moves_on_and_is_replayed_later(
    soap_award_server: AwardServer,
    sessions: sessionmaker[Session],
    runtime: Runtime,
    tmp_path: Path,
) -> None:
    soap_award_server.awards = [
        _award("R7-001", "2025-10-01T09:00:00", pdf=PDF),
        _award("R7-002", "2025-10-02T09:00:00", amount="千円くらい"),  # a PDF by path only
    ]
    spec = _spec(soap_award_server, None)
    for attempt in range(MAX_RECORD_RETRIES + 1):
        result = _sync(sessions, runtime, spec)
        assert result.errors == 1, attempt
    with sessions() as session:
        # Given up holding the bookmark; the record is in the dead-letter store.
        assert get_cursor(session=session, source="ebid") == {"value": "2025-10-02T09:00:00"}
        assert len(list_replayable(session=session, source="ebid")) == MAX_RECORD_RETRIES + 1
    assert _sync(sessions, runtime, spec).records == 0

    # The admin fixes the mapping (here: amounts in 千円) and replays the dead letters.
    fixed = load_mapping(
        MAPPING.replace(
            "transforms: [yen]}",
            "transforms: [{replace: {pattern: 千円くらい, with: '1000'}}, yen]}",
        ),
        name="ebid.yaml",
    )
    replayed, count = replay_dead_letters(
        sessions=sessions, runtime=runtime, policy=policy(),
        spec=SourceSpec("ebid", "awards", fixed, spec.open), authorities=AUTHORITIES,
    )  # fmt: skip
    assert count == MAX_RECORD_RETRIES + 1
    assert replayed.errors == 0 and replayed.created == 1
    with sessions() as session:
        assert list_replayable(session=session, source="ebid") == []
        # Without an inline PDF and no documents transport, it says which and why.
        award = get_award(session=session, source="ebid", award_id="R7-002")
        assert award.state is AwardState.WAITING_DOCUMENTS
        assert "R7-002.pdf" in (award.note or "") and "documents" in (award.note or "")

    # Reset the bookmark: the next run reads everything after it again (idempotently).
    with sessions() as session:
        reset_cursor(session=session, source="ebid", cursor={"value": "2025-09-30"}, actor="test")
        session.commit()
    again = _sync(sessions, runtime, _spec(soap_award_server, None))
    assert again.records == 2 and again.created == 0
