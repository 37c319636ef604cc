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
from decimal import Decimal
from pathlib import Path

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from connectors.folder import FolderSink
from connectors.outbound import ContentSpec
from core.blobs import BlobStore
from core.envelopes.creation import DocumentInput, PartyInput, create_envelope
from core.envelopes.documents import read_document
from core.envelopes.lifecycle import send_envelope
from core.model import Delivery, Document, Envelope
from core.pushback.deliveries import PushbackObserver, Subscription, delivery_key, renewal_key
from core.records.archive import (
    RenewalPolicy,
    latest_check,
    list_documents_due,
    plan_renewals,
    renew_due_timestamps,
)
from core.records.audit import list_events
from core.runtime import Runtime
from core.signing import SigningEngine, verify_pdf
from core.states import EnvelopeState, PartyRole
from schedules import pushback as dispatch
from schedules import retimestamp
from schedules.pushback import Target
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
        amount=Decimal("1000000"),
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


def test_a_renewal_with_the_same_tsa_certificate_is_a_reported_no_op(
    sessions: sessionmaker[Session],
    ltv_pki: LtvPki,
    short_engine: SigningEngine,
    long_engine: SigningEngine,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Time moves to an hour before the short TSA certificate lapses: the document is due, but
    the TSA still serves that same certificate, so a renewal would extend nothing. The run
    stamps nothing, says so, raises the alert and stores it; once the TSA serves a longer-lived
    certificate the next run renews."""
    blobs = BlobStore(tmp_path / "blobs", secrets.token_bytes(32))
    same = Runtime(blobs=blobs, signing=short_engine, buyer_name="開発市")
    rotated = Runtime(blobs=blobs, signing=long_engine, buyer_name="開発市")
    policy = RenewalPolicy(margin=dt.timedelta(days=1), min_extension=dt.timedelta(days=30))
    later = ltv_pki.short_expires_at - dt.timedelta(hours=1)
    with sessions() as session:
        envelope = _complete_envelope(session, same)
        document_id = envelope.documents[0].id
        revisions = len(envelope.documents[0].revisions)

    with sessions() as session:
        plan = plan_renewals(session=session, runtime=same, policy=policy, now=later)
    assert [(p.document_id, p.action) for p in plan.documents] == [
        (document_id, "nothing_to_extend")
    ]
    assert plan.to_stamp == [] and plan.tsa_expires_at == ltv_pki.short_expires_at
    assert plan.alert is not None and "no newer one" in plan.alert

    with caplog.at_level("INFO", logger="core.records.archive"):
        report = retimestamp.run(sessions=sessions, runtime=same, policy=policy, now=later)
    assert report.renewed == [] and report.failed == {}
    assert report.nothing_to_extend == [document_id]
    assert report.alert is not None
    assert any("nothing to extend" in r.getMessage() for r in caplog.records)
    assert any(r.levelname == "ERROR" and "alert" in r.getMessage() for r in caplog.records)
    with sessions() as session:
        document = session.get_one(Document, document_id)
        assert len(document.revisions) == revisions  # no paid stamp, no bytes added
        assert document.timestamp_expires_at == ltv_pki.short_expires_at
        check = latest_check(session=session)
        assert check is not None and check.nothing_to_extend == 1 and check.renewed == 0
        assert check.alert == report.alert and check.tsa_expires_at == ltv_pki.short_expires_at
        assert not [
            e
            for e in list_events(session=session, envelope_id=envelope.id)
            if e.action == "document.retimestamped"
        ]

    # the TSA now signs with a certificate valid for ten years: the same run renews
    report = retimestamp.run(sessions=sessions, runtime=rotated, policy=policy, now=later)
    assert report.renewed == [document_id] and report.nothing_to_extend == []
    assert report.alert is None
    with sessions() as session:
        document = session.get_one(Document, document_id)
        assert len(document.revisions) == revisions + 1
        assert document.timestamp_expires_at == ltv_pki.long_expires_at
        check = latest_check(session=session)
        assert check is not None and check.renewed == 1 and check.alert is None
    # and nothing is due any more, with the next wave when the long certificate nears its end
    with sessions() as session:
        plan = plan_renewals(session=session, runtime=rotated, policy=policy, now=later)
    assert plan.documents == []
    assert plan.next_wave_expires_at == ltv_pki.long_expires_at
    assert plan.next_wave_due_at == ltv_pki.long_expires_at - policy.margin
    assert plan.next_wave_documents >= 1


def test_a_flagged_algorithm_renews_even_when_nothing_extends(
    sessions: sessionmaker[Session], ltv_pki: LtvPki, short_engine: SigningEngine, tmp_path: Path
) -> None:
    runtime = Runtime(
        blobs=BlobStore(tmp_path / "blobs", secrets.token_bytes(32)),
        signing=short_engine,
        buyer_name="開発市",
    )
    later = ltv_pki.short_expires_at - dt.timedelta(hours=1)
    with sessions() as session:
        document_id = _complete_envelope(session, runtime).documents[0].id
    with sessions() as session:
        facts = short_engine.timestamp_facts(
            read_document(runtime=runtime, document=session.get_one(Document, document_id))
        )
    assert facts is not None and facts.digest_algorithm == "sha256"
    flagged = RenewalPolicy(margin=dt.timedelta(days=1), flagged_algorithms=frozenset({"sha256"}))
    by_certificate = RenewalPolicy(
        margin=dt.timedelta(days=1),
        flagged_certificates=frozenset({facts.tsa_certificate_sha256}),
    )
    with sessions() as session:
        plan = plan_renewals(session=session, runtime=runtime, policy=by_certificate, now=later)
        assert [(p.document_id, p.action) for p in plan.documents] == [(document_id, "flagged")]
    report = retimestamp.run(sessions=sessions, runtime=runtime, policy=flagged, now=later)
    assert report.renewed == [document_id] and report.nothing_to_extend == []


def _keys(sessions: sessionmaker[Session], ids: list[int]) -> list[str]:
    with sessions() as session:
        return [session.get_one(Delivery, i).idempotency_key for i in ids]


@pytest.fixture(scope="module")
def twenty_year_pki(tmp_path_factory: pytest.TempPathFactory) -> LtvPki:
    return create_ltv_pki(tmp_path_factory.mktemp("ltv20"), short_hours=3, long_days=20 * 365)


def test_the_renewed_copy_reaches_the_sinks_that_took_the_document_and_verifies_at_12_years(
    sessions: sessionmaker[Session], twenty_year_pki: LtvPki, tmp_path: Path
) -> None:
    """The document-management sink took the signed PDF at completion and takes renewals; the
    finance sink takes no documents; a sink added after completion took nothing. After the
    renewal only the first gets the renewed copy, as a file of its own (the completion copy
    stays), under a key of its own; that copy verifies twelve years on, the completion copy
    does not."""
    pki = twenty_year_pki
    observer = PushbackObserver(
        [
            Subscription("documents", renewals=True),
            Subscription("finance", renewals=False),
        ]
    )
    blobs = BlobStore(tmp_path / "blobs", secrets.token_bytes(32))
    short, long = pki.engine("short"), pki.engine("long")
    try:
        today = Runtime(blobs=blobs, signing=short, buyer_name="開発市", observers=(observer,))
        with sessions() as session:
            envelope = _complete_envelope(session, today)
            envelope_id, document_id = envelope.id, envelope.documents[0].id
            management_number = envelope.management_number
        folder = tmp_path / "dms"
        targets = {"documents": Target(FolderSink(name="documents", root=folder), ContentSpec())}
        first = dispatch.run_until_idle(sessions=sessions, runtime=today, targets=targets)
        assert _keys(sessions, first.delivered) == [
            delivery_key("documents", envelope_id, "completed")
        ]
        completion_copy = folder / f"{management_number}_委託契約書.pdf"
        assert completion_copy.exists()

        # a sink configured later took nothing, so it is sent no renewed copy either
        late = PushbackObserver(
            [*observer.subscriptions, Subscription("archive_later", renewals=True)]
        )
        rotated = Runtime(blobs=blobs, signing=long, buyer_name="開発市", observers=(late,))
        later = pki.short_expires_at - dt.timedelta(hours=1)
        report = retimestamp.run(
            sessions=sessions,
            runtime=rotated,
            policy=RenewalPolicy(margin=dt.timedelta(days=1)),
            now=later,
        )
        assert report.renewed == [document_id]
        with sessions() as session:
            keys = session.scalars(select(Delivery.idempotency_key)).all()
        renewed_key = renewal_key("documents", envelope_id, document_id, 1)
        assert [k for k in keys if ":renewed:" in k] == [renewed_key]

        second = dispatch.run_until_idle(sessions=sessions, runtime=rotated, targets=targets)
        assert _keys(sessions, second.delivered) == [renewed_key]
        renewed_copy = folder / f"{management_number}_委託契約書_r1.pdf"
        assert renewed_copy.exists() and completion_copy.exists()
        # a second pass finds nothing: the renewal is delivered once
        again = dispatch.run_until_idle(sessions=sessions, runtime=rotated, targets=targets)
        assert again.delivered == []
    finally:
        short.close()
        long.close()

    twelve_years = pki.short_expires_at + dt.timedelta(days=12 * 366)
    roots = [pki.root]
    assert verify_pdf(renewed_copy.read_bytes(), trust_roots=roots, moment=twelve_years).ok
    assert not verify_pdf(completion_copy.read_bytes(), trust_roots=roots, moment=twelve_years).ok
