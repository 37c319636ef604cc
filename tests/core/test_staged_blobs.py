"""An approval's signature blob commits with the approval (core.staged_blobs).

The commit is the approval's one durable write: the blob's row is in it, the file is written
right after without fsync, and the signing worker's pass makes the file durable and drops the
row. What these tests hold it to: a file lost or torn before it was durable (a crash, a full
disk at the write after the commit) is read from the row, the worker writes it back, a refused
second submit leaves nothing behind, and the retention purge takes the rows with it.
"""

from __future__ import annotations

import errno
import secrets
from decimal import Decimal
from pathlib import Path

import pytest
from asn1crypto import x509
from sqlalchemy import Engine, select, text
from sqlalchemy.orm import Session, sessionmaker

from core.blobs import BlobStore, blob_path
from core.envelopes.approvals import approve
from core.envelopes.creation import DocumentInput, FieldInput, PartyInput, create_envelope
from core.envelopes.documents import read_document
from core.envelopes.lifecycle import get_envelope, send_envelope
from core.envelopes.sealing import completion_certificate
from core.errors import StateError
from core.model import StagedBlob
from core.runtime import Runtime
from core.signing import SigningEngine, verify_pdf
from core.signing.worker import process_until_idle
from core.staged_blobs import flush_staged, staged_reader
from core.states import PartyRole
from tests.fixtures.envelopes import ensure_staff, give_access_codes
from tests.fixtures.pdfs import make_pdf


@pytest.fixture
def runtime(devpki_engine: SigningEngine, tmp_path: Path) -> Runtime:
    """A runtime with the backup mirror on, as the gateway runs by default."""
    return Runtime(
        blobs=BlobStore(tmp_path / "blobs", secrets.token_bytes(32), mirror=tmp_path / "mirror"),
        signing=devpki_engine,
        buyer_name="開発市",
    )


def _sent(session: Session, runtime: Runtime) -> tuple[str, str, str]:
    ensure_staff(session, "kacho@city.example.jp")
    envelope = create_envelope(
        session=session,
        runtime=runtime,
        title="保管の順序",
        amount=Decimal("1000000"),
        creator="staff",
        documents=[DocumentInput("契約書.pdf", make_pdf(pages=1))],
        parties=[
            PartyInput(PartyRole.SIGNER, "受注 太郎", "taro@example.jp", "株式会社テスト"),
            PartyInput(PartyRole.SIGNER, "発注 花子", "hanako@city.example.jp", "開発市"),
        ],
        fields=[FieldInput(document=0, party=0, label="記入日", page=1, rect=(100, 600, 300, 620))],
    )
    give_access_codes(session, envelope)
    session.commit()
    send_envelope(session=session, runtime=runtime, envelope_id=envelope.id, actor="staff")
    session.commit()
    return envelope.id, envelope.parties[0].id, envelope.fields[0].id


def _approve(sessions: sessionmaker[Session], runtime: Runtime, ids: tuple[str, str, str]) -> None:
    envelope_id, party_id, field_id = ids
    with sessions() as session:
        approve(
            session=session,
            runtime=runtime,
            envelope_id=envelope_id,
            party_id=party_id,
            values={field_id: "令和7年10月1日"} if field_id else {},
            auth_method="email+access_code",
            ip="192.0.2.1",
        )


def _signature_blob(sessions: sessionmaker[Session], envelope_id: str) -> str:
    with sessions() as session:
        (document,) = get_envelope(session=session, envelope_id=envelope_id).documents
        newest = document.revisions[-1]
        assert newest.reason == "signature"
        return newest.blob_id


def _document(sessions: sessionmaker[Session], runtime: Runtime, envelope_id: str) -> bytes:
    with sessions() as session:
        (document,) = get_envelope(session=session, envelope_id=envelope_id).documents
        return read_document(runtime=runtime, document=document)


def _staged_ids(sessions: sessionmaker[Session]) -> set[str]:
    with sessions() as session:
        return set(session.scalars(select(StagedBlob.blob_id)))


def _files(root: Path) -> set[str]:
    return {p.name for p in root.glob("??/*") if p.is_file()}


def test_the_signature_blob_commits_with_the_approval_and_the_worker_makes_it_durable(
    sessions: sessionmaker[Session],
    runtime: Runtime,
    dev_trust_roots: list[x509.Certificate],
    tmp_path: Path,
) -> None:
    with sessions() as session:
        ids = _sent(session, runtime)
    _approve(sessions, runtime, ids)
    blob_id = _signature_blob(sessions, ids[0])
    # in the approval's own commit, and written out to the store and the mirror right after
    assert _staged_ids(sessions) == {blob_id}
    assert blob_path(runtime.blobs.root, blob_id).exists()
    assert blob_path(tmp_path / "mirror", blob_id).exists()
    signed = _document(sessions, runtime, ids[0])
    assert len(verify_pdf(signed, trust_roots=dev_trust_roots).signatures) == 1

    # the signing worker's pass: files durable, rows gone, the document unchanged
    process_until_idle(sessions=sessions, runtime=runtime, worker="test")
    assert _staged_ids(sessions) == set()
    assert _document(sessions, runtime, ids[0]) == signed
    mirror = BlobStore(tmp_path / "mirror", runtime.blobs._master_key)
    assert mirror.get(blob_id) == runtime.blobs.get(blob_id)


@pytest.mark.parametrize("damage", ["lost", "torn"])
def test_a_file_lost_before_it_was_durable_is_read_from_its_row_and_written_back(
    sessions: sessionmaker[Session],
    runtime: Runtime,
    dev_trust_roots: list[x509.Certificate],
    damage: str,
) -> None:
    runtime.blobs.fallback = staged_reader(sessions)  # as open_gateway wires it
    with sessions() as session:
        ids = _sent(session, runtime)
    _approve(sessions, runtime, ids)
    signed = _document(sessions, runtime, ids[0])
    path = blob_path(runtime.blobs.root, _signature_blob(sessions, ids[0]))
    # what a power loss can leave of a file written without fsync
    if damage == "lost":
        path.unlink()
    else:
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])

    assert _document(sessions, runtime, ids[0]) == signed
    assert flush_staged(sessions=sessions, runtime=runtime) == 1
    runtime.blobs.fallback = None  # from now on the file alone
    assert _document(sessions, runtime, ids[0]) == signed
    assert len(verify_pdf(signed, trust_roots=dev_trust_roots).signatures) == 1


def test_a_full_disk_after_the_commit_fails_nothing_the_signer_was_told(
    sessions: sessionmaker[Session],
    runtime: Runtime,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    runtime.blobs.fallback = staged_reader(sessions)
    with sessions() as session:
        ids = _sent(session, runtime)
    real = BlobStore.write_sealed

    def disk_full(self: BlobStore, blob_id: str, content: bytes, *, durable: bool) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(BlobStore, "write_sealed", disk_full)
    _approve(sessions, runtime, ids)  # committed: no error for the signer
    blob_id = _signature_blob(sessions, ids[0])
    assert not blob_path(runtime.blobs.root, blob_id).exists()
    signed = _document(sessions, runtime, ids[0])  # from the row
    assert signed.startswith(b"%PDF-")

    # still full on the worker's pass: the row stays, the pass goes on
    process_until_idle(sessions=sessions, runtime=runtime, worker="test")
    assert _staged_ids(sessions) == {blob_id}
    monkeypatch.setattr(BlobStore, "write_sealed", real)
    process_until_idle(sessions=sessions, runtime=runtime, worker="test")
    assert _staged_ids(sessions) == set()
    assert blob_path(runtime.blobs.root, blob_id).exists()
    runtime.blobs.fallback = None
    assert _document(sessions, runtime, ids[0]) == signed


def test_a_refused_second_submit_leaves_no_blob_behind(
    sessions: sessionmaker[Session], runtime: Runtime
) -> None:
    with sessions() as session:
        ids = _sent(session, runtime)
    _approve(sessions, runtime, ids)
    files, staged = _files(runtime.blobs.root), _staged_ids(sessions)
    with pytest.raises(StateError) as refused:
        _approve(sessions, runtime, ids)
    assert refused.value.code == "state.already_acted"
    # signed, but never committed: nothing of it in the store or the database
    assert _files(runtime.blobs.root) == files
    assert _staged_ids(sessions) == staged


def test_a_commit_is_durable_when_it_returns(db_engine: Engine) -> None:
    # the approval's commit is its one durable write: SQLite's WAL default (NORMAL) would not be
    query = (
        "PRAGMA synchronous" if db_engine.dialect.name == "sqlite" else "SHOW synchronous_commit"
    )
    with db_engine.connect() as conn:
        assert str(conn.execute(text(query)).scalar()) in ("2", "on")  # FULL / on


def test_the_seal_and_the_certificate_commit_with_the_completion(
    sessions: sessionmaker[Session],
    runtime: Runtime,
    dev_trust_roots: list[x509.Certificate],
) -> None:
    runtime.blobs.fallback = staged_reader(sessions)
    with sessions() as session:
        ids = _sent(session, runtime)
    _approve(sessions, runtime, ids)
    envelope_id = ids[0]
    with sessions() as session:
        second = get_envelope(session=session, envelope_id=envelope_id).parties[1].id
    _approve(sessions, runtime, (envelope_id, second, ""))  # the last one: it seals
    with sessions() as session:
        envelope = get_envelope(session=session, envelope_id=envelope_id)
        assert envelope.state == "completed" and envelope.certificate_blob_id is not None
        (document,) = envelope.documents
        seal = document.revisions[-1]
        assert seal.reason == "seal"
        certificate_id = envelope.certificate_blob_id
        certificate = completion_certificate(runtime=runtime, envelope=envelope)
    assert {seal.blob_id, certificate_id} <= _staged_ids(sessions)
    sealed = _document(sessions, runtime, envelope_id)
    report = verify_pdf(sealed, trust_roots=dev_trust_roots)
    assert [s.kind for s in report.signatures] == ["approval", "approval", "document_timestamp"]
    # a crash lost both files before they were durable: read from the rows, then flushed
    for blob_id in (seal.blob_id, certificate_id):
        blob_path(runtime.blobs.root, blob_id).unlink()
    assert _document(sessions, runtime, envelope_id) == sealed
    assert runtime.blobs.get(certificate_id) == certificate
    flush_staged(sessions=sessions, runtime=runtime)
    assert _staged_ids(sessions) == set()
    runtime.blobs.fallback = None
    assert _document(sessions, runtime, envelope_id) == sealed
    assert runtime.blobs.get(certificate_id) == certificate
