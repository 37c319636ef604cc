"""Re-timestamping: a document sealed under a short-lived TSA certificate still verifies after
that certificate lapsed, because an archive timestamp from a long-lived TSA was added in time.

Time moves forward through ``verify_pdf(moment=...)``: validation as of a day after the first
TSA certificate expired, against an offline PKI made for the test (``tests.fixtures.ltv_pki``).
"""

from __future__ import annotations

import datetime as dt
import secrets
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from core.archive import list_documents_due, renew_due_timestamps
from core.audit import list_events
from core.blobs import BlobStore
from core.envelopes import (
    DocumentInput,
    PartyInput,
    Runtime,
    create_envelope,
    read_document,
    send_envelope,
)
from core.model import Document, Envelope
from core.signing import SigningEngine, verify_pdf
from core.states import EnvelopeState, PartyRole
from schedules import retimestamp
from tests.fixtures.envelopes import complete_parties, give_access_codes
from tests.fixtures.ltv_pki import LtvPki, create_ltv_pki
from tests.fixtures.pdfs import make_pdf


@pytest.fixture(scope="module")
def ltv_pki(tmp_path_factory: pytest.TempPathFactory) -> LtvPki:
    return create_ltv_pki(tmp_path_factory.mktemp("ltv"), short_hours=3)


@pytest.fixture(scope="module")
def short_engine(ltv_pki: LtvPki) -> Iterator[SigningEngine]:
    engine = ltv_pki.engine("short")
    try:
        yield engine
    finally:
        engine.close()


@pytest.fixture(scope="module")
def long_engine(ltv_pki: LtvPki) -> Iterator[SigningEngine]:
    engine = ltv_pki.engine("long")
    try:
        yield engine
    finally:
        engine.close()


def _complete_envelope(session: Session, runtime: Runtime) -> Envelope:
    envelope = create_envelope(
        session=session,
        runtime=runtime,
        title="庁舎空調設備保守業務委託",
        creator="開発市 契約課",
        documents=[DocumentInput("委託契約書.pdf", make_pdf(pages=1))],
        parties=[
            PartyInput(PartyRole.APPROVER, "契約 花子", "kacho@city.example.jp", "開発市"),
            PartyInput(PartyRole.SIGNER, "署名者 一郎", "s1@example.jp", "株式会社一"),
        ],
        fields=[],
    )
    give_access_codes(session, envelope)
    session.commit()
    send_envelope(session=session, runtime=runtime, envelope_id=envelope.id, actor="開発市")
    session.commit()
    complete_parties(session, runtime, envelope.id)
    session.refresh(envelope)
    assert envelope.state is EnvelopeState.COMPLETED
    return envelope


def test_archive_timestamp_keeps_a_document_valid_after_the_first_tsa_lapses(
    sessions: sessionmaker[Session],
    ltv_pki: LtvPki,
    short_engine: SigningEngine,
    long_engine: SigningEngine,
    tmp_path: Path,
) -> None:
    blobs = BlobStore(tmp_path / "blobs", secrets.token_bytes(32))
    today = Runtime(blobs=blobs, signing=short_engine, buyer_name="開発市")
    # the TSA certificate was rotated: renewals are signed by the long-lived TSA
    rotated = Runtime(blobs=blobs, signing=long_engine, buyer_name="開発市")
    roots = [ltv_pki.root]
    after_lapse = ltv_pki.short_expires_at + dt.timedelta(days=1)

    with sessions() as session:
        envelope = _complete_envelope(session, today)
        document = envelope.documents[0]
        assert document.timestamp_expires_at == ltv_pki.short_expires_at
        sealed = read_document(runtime=today, document=document)
        document_id, envelope_id = document.id, envelope.id

    assert verify_pdf(sealed, trust_roots=roots).ok
    # without renewal, the same check a day after the TSA certificate lapsed fails
    stale = verify_pdf(sealed, trust_roots=roots, moment=after_lapse)
    assert not stale.ok
    assert any("TSA" in p for s in stale.signatures for p in s.problems)

    with sessions() as session:
        # not yet due with a one-hour margin, due with a one-day margin
        assert list_documents_due(session=session, margin=dt.timedelta(hours=1)) == []
        due = list_documents_due(session=session, margin=dt.timedelta(days=1))
        assert [d.id for d in due] == [document_id]

    report = retimestamp.run(
        sessions=sessions, runtime=rotated, margin=dt.timedelta(days=1), batch_size=10
    )
    assert report.renewed == [document_id] and report.failed == {}

    with sessions() as session:
        document = session.get_one(Document, document_id)
        assert document.timestamp_expires_at == ltv_pki.long_expires_at
        assert [r.reason for r in document.revisions][-2:] == ["seal", "archive"]
        assert document.revisions[-1].kind == "append"
        renewed = read_document(runtime=rotated, document=document)
        events = list_events(session=session, envelope_id=envelope_id)
        archive_events = [e for e in events if e.action == "document.retimestamped"]
        assert len(archive_events) == 1
        assert archive_events[0].detail["document_id"] == document_id
        assert archive_events[0].detail["expires_at"].endswith("+09:00")
    assert renewed.startswith(sealed)

    for moment in (None, after_lapse):
        result = verify_pdf(renewed, trust_roots=roots, moment=moment)
        assert result.ok, (moment, result.as_dict())
        kinds = [s.kind for s in result.signatures]
        assert kinds == ["approval", "approval", "document_timestamp", "document_timestamp"]

    # independent checks: poppler validates both approvals and lists both timestamps; qpdf
    path = tmp_path / "renewed.pdf"
    path.write_bytes(renewed)
    pdfsig = subprocess.run(["pdfsig", str(path)], capture_output=True, text=True, check=True)
    assert pdfsig.stdout.count("Signature Validation: Signature is Valid.") == 2
    assert "kg_doc_timestamp_1" in pdfsig.stdout and "kg_doc_timestamp_2" in pdfsig.stdout
    subprocess.run(["qpdf", "--check", str(path)], capture_output=True, check=True)

    # nothing is due any more: the next run renews nothing
    again = retimestamp.run(sessions=sessions, runtime=rotated, margin=dt.timedelta(days=1))
    assert again.renewed == [] and again.failed == {}


def test_documents_sealed_before_the_column_are_backfilled(
    sessions: sessionmaker[Session], ltv_pki: LtvPki, short_engine: SigningEngine, tmp_path: Path
) -> None:
    runtime = Runtime(
        blobs=BlobStore(tmp_path / "blobs", secrets.token_bytes(32)),
        signing=short_engine,
        buyer_name="開発市",
    )
    with sessions() as session:
        envelope = _complete_envelope(session, runtime)
        envelope.documents[0].timestamp_expires_at = None
        session.commit()
        report = renew_due_timestamps(
            session=session, runtime=runtime, margin=dt.timedelta(minutes=1)
        )
        assert report.backfilled == 1 and report.renewed == []
        expiry = session.scalars(select(Document.timestamp_expires_at)).one()
        assert expiry == ltv_pki.short_expires_at


def test_the_expiry_read_by_offsets_matches_the_full_parse(
    sessions: sessionmaker[Session],
    ltv_pki: LtvPki,
    short_engine: SigningEngine,
    long_engine: SigningEngine,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The fast path (the newest /ByteRange hole, no PDF parse) gives what pyHanko's reader
    gives, for a sealed document and for one with an archive timestamp; a document whose newest
    signature is an approval falls back to the reader and finds no document timestamp."""
    from core.signing import _engine

    blobs = BlobStore(tmp_path / "blobs", secrets.token_bytes(32))
    runtime = Runtime(blobs=blobs, signing=short_engine, buyer_name="開発市")
    with sessions() as session:
        envelope = _complete_envelope(session, runtime)
        sealed = read_document(runtime=runtime, document=envelope.documents[0])
        # the document as the approvals left it, before the seal: the revisions up to then
        approved_only = b""
        for revision in envelope.documents[0].revisions:
            if revision.reason not in ("original", "prepared", "signature"):
                break
            approved_only += blobs.get(revision.blob_id)
    renewed = long_engine.renew_archival_timestamp(sealed)
    roots = [ltv_pki.root]

    fast = [_engine.newest_timestamp_expiry(d, trust_roots=roots) for d in (sealed, renewed)]
    assert fast == [ltv_pki.short_expires_at, ltv_pki.long_expires_at]
    assert _engine._newest_token_by_offsets(sealed) is not None
    monkeypatch.setattr(_engine, "_newest_token_by_offsets", lambda data: None)
    slow = [_engine.newest_timestamp_expiry(d, trust_roots=roots) for d in (sealed, renewed)]
    assert slow == fast
    monkeypatch.undo()
    assert approved_only.count(b"/ByteRange") == 2  # both approvals, no document timestamp
    assert _engine.newest_timestamp_expiry(approved_only, trust_roots=roots) is None
