"""A sync end to end: CP932 exports over a real OpenSSH sshd, through the mapping into awards,
envelopes and line errors, on SQLite and PostgreSQL."""

from __future__ import annotations

import dataclasses
import threading
from pathlib import Path

import pytest
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from connectors.base import Source
from connectors.csv import CsvFormat
from connectors.inbox import ReadLock
from connectors.sftp import SftpEndpoint, SftpSource
from core.drafts import ContractorRef, UsageRequestDraft
from core.envelopes.lifecycle import get_envelope, send_envelope
from core.errors import GatewayError
from core.intake.awards import get_award
from core.intake.contractors import upsert_usage_request
from core.intake.runs import list_dead_letters, list_runs
from core.model import AccessCode, Award, AwardState, DeadLetter, Envelope, Staff, SyncRun
from core.runtime import Runtime
from core.states import EnvelopeState, PartyRole
from mapping import SourceMapping
from schedules.intake import SourceSpec, take_in_source
from tests.fixtures.intake import (
    AUTHORITIES,
    HEADER,
    award_rows,
    cp932,
    municipal_mapping,
    policy,
    register_officials,
    usage_mapping,
)
from tests.fixtures.pdfs import make_pdf
from tests.fixtures.sshd import SshServer

PDF = make_pdf(pages=1)


def _endpoint(server: SshServer, **changes: object) -> SftpEndpoint:
    endpoint = SftpEndpoint(
        host=server.host,
        port=server.port,
        username=server.username,
        key_path=server.client_key,
        known_hosts=server.known_hosts,
        timeout=5,
    )
    return dataclasses.replace(endpoint, **changes)  # type: ignore[arg-type]


@pytest.fixture
def remote(sshd_server: SshServer, tmp_path: Path) -> Path:
    """A fresh remote folder tree for one test: awards/ and 契約書/<date>/ PDFs."""
    root = sshd_server.root / tmp_path.name
    (root / "awards").mkdir(parents=True)
    for day, number in (("20251001", "R7-001"), ("20251002", "R7-002"), ("20251003", "R7-003")):
        folder = root / "契約書" / day
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"{number}.pdf").write_bytes(PDF)
    return root


def _spec(server: SshServer, remote: Path, mapping: SourceMapping, **options: object) -> SourceSpec:
    def opener() -> Source:
        values: dict[str, object] = {
            "endpoint": _endpoint(server),
            "name": "ebid",
            "directory": str(remote / "awards"),
            "csv_format": CsvFormat.from_options(mapping.format),
            "read_lock": ReadLock(mode="none"),
            "documents_dir": str(remote),
        }
        values.update(options)
        return SftpSource(**values)  # type: ignore[arg-type]

    return SourceSpec("ebid", mapping.kind, mapping, opener)


def _sync(sessions: sessionmaker[Session], runtime: Runtime, spec: SourceSpec, **kw: object):  # type: ignore[no-untyped-def]
    if kw.pop("officials", True):
        with sessions() as session:
            register_officials(session)
    return take_in_source(
        sessions=sessions,
        runtime=runtime,
        policy=kw.pop("policy", None) or policy(),  # type: ignore[arg-type]
        spec=spec,
        authorities=AUTHORITIES,
        **kw,  # type: ignore[arg-type]
    )


def _consent(session: Session, registry_code: str, code: str = "1234") -> None:
    upsert_usage_request(
        session=session,
        source="uketsuke",
        draft=UsageRequestDraft(
            contractor=ContractorRef(registry_code=registry_code),
            signer_name="髙橋 太郎",
            signer_title="代表取締役",
            signer_email="takahashi@example.co.jp",
            access_code=code,
        ),
        policy=policy(),
    )


def test_cp932_export_becomes_awards_that_wait_then_envelopes(
    sshd_server: SshServer,
    remote: Path,
    sessions: sessionmaker[Session],
    runtime: Runtime,
) -> None:
    bad = [
        "R7-010,日付が誤り,令和元年4月1日,1000,土木課,誤り建設,000321,希望",  # before 令和
        "R7-011,金額が誤り,R7.10.1,千円くらい,土木課,誤り建設,000321,希望",
        "R7-012,列が足りない,R7.10.1",
    ]
    data = (
        cp932([HEADER, *award_rows(), *bad])
        + "R7-013,文字化け,R7.10.1,1,土木課,".encode("cp932")
        + b"\x82\xff\x82,000321,\xe5\xb8\x8c\r\n"
    )
    (remote / "awards" / "awards_20251001.csv").write_bytes(data)
    spec = _spec(sshd_server, remote, municipal_mapping())
    result = _sync(sessions, runtime, spec)
    assert result.status == "succeeded"
    assert (result.records, result.created, result.skipped) == (8, 3, 1)
    assert result.errors == 4 and result.released == 0
    codes = sorted(e.code for e in result.line_errors)
    assert codes == [
        "format.column_count",
        "format.encoding",
        "mapping.bad_number",
        "mapping.date_outside_era",
    ]
    era = next(e for e in result.line_errors if e.code == "mapping.date_outside_era")
    assert (era.file, era.line, era.field) == ("awards_20251001.csv", 6, "award_date")
    assert era.mapping_line == 22  # the line of `award_date:` in municipal.yaml
    with sessions() as session:
        award = get_award(session=session, source="ebid", award_id="R7-001")
        # Visible waiting, not a failure; the deadline is 2 business days after the award.
        assert award.state is AwardState.WAITING_USAGE_REQUEST
        assert str(award.usage_request_due) == "2025-10-03"
        assert str(award.signing_due) == "2025-10-08"
        assert award.counterparty == "㈱髙橋建設" and award.amount == 12_345_000
        assert [d.name for d in award.documents] == ["工事請負契約書_R7-001.pdf"]  # 請書 optional
        dead = list_dead_letters(session=session, run_id=result.run_id)
        assert len(dead) == 4 and all(d.source == "ebid" for d in dead)
        assert any(d.record.get("案件名") == "日付が誤り" for d in dead)
        # The file was moved aside after the commit.
    assert not (remote / "awards" / "awards_20251001.csv").exists()
    assert len(list((remote / "awards" / "processed").iterdir())) == 1

    # The same file again: nothing new.
    (remote / "awards" / "again.csv").write_bytes(data)
    again = _sync(sessions, runtime, spec)
    assert (again.created, again.updated, again.unchanged) == (0, 0, 3)
    with sessions() as session:
        assert session.scalar(select(func.count()).select_from(Award)) == 3

    # The usage request arrives, but the official of the signing-authority register has no
    # staff account yet: no envelope that the official could never sign; the award says why.
    with sessions() as session:
        _consent(session, "000123")
        session.commit()
        for staff in session.scalars(select(Staff)):
            staff.disabled = True
        session.commit()
    unready = _sync(sessions, runtime, spec, officials=False)
    assert unready.released == 0
    assert [e.code for e in unready.line_errors] == ["envelope.party_not_staff"]
    with sessions() as session:
        award = get_award(session=session, source="ebid", award_id="R7-001")
        assert award.envelope_id is None and "envelope.party_not_staff" in (award.note or "")
        for staff in session.scalars(select(Staff)):
            staff.disabled = False
        session.commit()

    # Once the official is staff, the next sync makes the envelope, with the access code.
    released = _sync(sessions, runtime, spec)
    assert released.released == 1
    with sessions() as session:
        award = get_award(session=session, source="ebid", award_id="R7-001")
        assert award.state is AwardState.DRAFTED and award.envelope_id is not None
        envelope = get_envelope(session=session, envelope_id=award.envelope_id)
        assert envelope.state is EnvelopeState.DRAFT
        assert envelope.management_number == "R20251001-R7-001"
        assert [(p.role, p.email) for p in envelope.parties] == [
            (PartyRole.SIGNER, "takahashi@example.co.jp"),
            (PartyRole.SIGNER, "shicho@city.example.lg.jp"),  # 12,345,000 円 > 課長's ceiling
        ]
        assert envelope.parties[0].name == "代表取締役 髙橋 太郎"
        # The contractor signs by link + code; the official logs in to the staff pages.
        assert envelope.parties[0].staff_id is None and envelope.parties[1].staff_id is not None
        assert str(envelope.deadline) == "2025-10-08"
        code = session.get(AccessCode, envelope.parties[0].id)
        assert code is not None and "1234" not in code.code_hash


def test_changed_award_updates_the_draft_but_never_a_sent_envelope(
    sshd_server: SshServer, remote: Path, sessions: sessionmaker[Session], runtime: Runtime
) -> None:
    with sessions() as session:
        _consent(session, "000123")
        _consent(session, "000456")
        session.commit()
    rows = award_rows()
    spec = _spec(sshd_server, remote, municipal_mapping())
    (remote / "awards" / "a.csv").write_bytes(cp932([HEADER, *rows]))
    first = _sync(sessions, runtime, spec)
    assert first.released == 2
    with sessions() as session:
        sent_id = get_award(session=session, source="ebid", award_id="R7-002").envelope_id
        assert sent_id is not None
        send_envelope(session=session, runtime=runtime, envelope_id=sent_id, actor="staff")
        session.commit()
    changed = [
        rows[0].replace("市道１号線舗装工事", "市道１号線舗装工事(その２)"),
        rows[1].replace("980000円", "990000円"),
        *rows[2:],
    ]
    (remote / "awards" / "b.csv").write_bytes(cp932([HEADER, *changed]))
    second = _sync(sessions, runtime, spec)
    assert (second.updated, second.conflicts, second.created) == (1, 1, 0)
    with sessions() as session:
        draft = get_award(session=session, source="ebid", award_id="R7-001")
        envelope = session.get(Envelope, draft.envelope_id)
        assert envelope is not None and envelope.title == "市道１号線舗装工事(その２)"
        sent = get_award(session=session, source="ebid", award_id="R7-002")
        assert sent.state is AwardState.CHANGED_AFTER_SEND
        assert sent.rejected_change is not None and sent.rejected_change["amount"] == "990000"
        unchanged = session.get(Envelope, sent_id)
        assert unchanged is not None and unchanged.amount == 980000
        assert unchanged.state is EnvelopeState.SENT


def test_unknown_host_key_fails_the_run_and_is_recorded(
    sshd_server: SshServer,
    remote: Path,
    sessions: sessionmaker[Session],
    runtime: Runtime,
    tmp_path: Path,
) -> None:
    empty = tmp_path / "known_hosts"
    empty.write_text("")
    mapping = municipal_mapping()
    spec = _spec(sshd_server, remote, mapping, endpoint=_endpoint(sshd_server, known_hosts=empty))
    (remote / "awards" / "a.csv").write_bytes(cp932([HEADER, *award_rows()]))
    with pytest.raises(GatewayError) as info:
        _sync(sessions, runtime, spec)
    assert info.value.code == "sftp.host_key_unknown"
    with sessions() as session:
        (run,) = list_runs(session=session)
        assert run.status == "failed" and "host_key_unknown" in (run.message or "")
        assert session.scalar(select(func.count()).select_from(Award)) == 0
    assert (remote / "awards" / "a.csv").exists()


def test_file_dropped_during_a_sync_is_left_for_the_next(
    sshd_server: SshServer, remote: Path, sessions: sessionmaker[Session], runtime: Runtime
) -> None:
    mapping = municipal_mapping()
    spec = _spec(sshd_server, remote, mapping)
    (remote / "awards" / "a.csv").write_bytes(cp932([HEADER, *award_rows()[:2]]))
    dropped = threading.Event()

    def drop(_: int) -> None:  # the progress callback runs between batches, mid-sync
        if not dropped.is_set():
            (remote / "awards" / "b.csv").write_bytes(cp932([HEADER, award_rows()[2]]))
            dropped.set()

    first = _sync(sessions, runtime, spec, progress=drop, batch_size=1)
    assert dropped.is_set() and first.created == 2
    assert (remote / "awards" / "b.csv").exists()  # not read, not moved
    second = _sync(sessions, runtime, spec)
    assert second.created == 1 and not (remote / "awards" / "b.csv").exists()


def test_read_lock_skips_a_file_still_being_written(
    sshd_server: SshServer, remote: Path, sessions: sessionmaker[Session], runtime: Runtime
) -> None:
    mapping = municipal_mapping()
    target = remote / "awards" / "growing.csv"
    target.write_bytes(cp932([HEADER, award_rows()[0]]))

    def grow(_: float) -> None:  # the writer appends while the source waits its interval
        with target.open("ab") as fh:
            fh.write(cp932([award_rows()[1]]))

    spec = _spec(
        sshd_server, remote, mapping, read_lock=ReadLock(mode="stable", interval=0.01), sleep=grow
    )
    assert _sync(sessions, runtime, spec).records == 0
    assert target.exists()
    spec = _spec(sshd_server, remote, mapping, read_lock=ReadLock(mode="stable", interval=0))
    assert _sync(sessions, runtime, spec).created == 2


def test_done_file_read_lock_and_usage_requests_over_sftp(
    sshd_server: SshServer, remote: Path, sessions: sessionmaker[Session], runtime: Runtime
) -> None:
    awards = _spec(sshd_server, remote, municipal_mapping())
    (remote / "awards" / "a.csv").write_bytes(cp932([HEADER, award_rows()[0]]))
    assert _sync(sessions, runtime, awards).created == 1
    usage = usage_mapping()
    (remote / "usage").mkdir()
    rows = [
        "業者番号,商号又は名称,案件番号,契約締結権限者氏名,役職,メールアドレス,アクセスコード,担当部署,担当者氏名,電話番号,提出日",
        "０００１２３,㈱髙橋建設,Ｒ７－００１,髙橋 太郎,代表取締役,ｔａｋａｈａｓｈｉ＠example.co.jp,１２３４,工事部,鈴木,０３-1234-5678,令和7年10月2日",
    ]  # fmt: skip
    (remote / "usage" / "u.csv").write_bytes(cp932(rows))
    spec = _spec(
        sshd_server,
        remote,
        usage,
        directory=str(remote / "usage"),
        read_lock=ReadLock(mode="done_file"),
    )
    assert _sync(sessions, runtime, spec).records == 0  # no done file yet
    (remote / "usage" / "u.csv.done").write_bytes(b"")
    result = _sync(sessions, runtime, spec)
    assert (result.created, result.released) == (1, 1)  # the waiting award is released at once
    with sessions() as session:
        award = get_award(session=session, source="ebid", award_id="R7-001")
        assert award.state is AwardState.DRAFTED
        dead = session.scalars(select(DeadLetter)).all()
        assert dead == []
        runs = session.scalars(select(SyncRun)).all()
        assert all("1234" not in str(vars(r)) for r in runs)
    assert not (remote / "usage" / "u.csv.done").exists()  # moved along with its file


def test_document_paths_cannot_leave_the_documents_folder(
    sshd_server: SshServer, remote: Path
) -> None:
    source = SftpSource(
        endpoint=_endpoint(sshd_server),
        name="ebid",
        directory=str(remote / "awards"),
        csv_format=CsvFormat(),
        documents_dir=str(remote / "契約書"),
    )
    try:
        assert source.fetch_document("20251001/R7-001.pdf") == PDF
        with pytest.raises(GatewayError) as info:
            source.fetch_document("../awards/../../../etc/passwd")
        assert info.value.code == "intake.document_path"
        with pytest.raises(GatewayError) as info:
            source.fetch_document("20251001/none.pdf")
        assert info.value.code == "intake.document_missing"
    finally:
        source.close()
