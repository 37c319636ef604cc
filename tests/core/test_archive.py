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
    approve,
    create_envelope,
    read_document,
    record_view,
    send_envelope,
)
from core.model import Document, Envelope
from core.signing import SigningEngine, verify_pdf
from core.states import EnvelopeState, PartyRole
from schedules import retimestamp
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
    session.commit()
    send_envelope(session=session, runtime=runtime, envelope_id=envelope.id, actor="開発市")
    session.commit()
    for party in list(envelope.parties):
        record_view(session=session, envelope_id=envelope.id, party_id=party.id, ip="192.0.2.1")
        approve(
            session=session,
            runtime=runtime,
            envelope_id=envelope.id,
            party_id=party.id,
            values={},
            auth_method="staff_login",
            ip="192.0.2.1",
        )
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
