"""Envelope services end to end on SQLite and PostgreSQL, signing with the development PKI."""

from __future__ import annotations

import gc
import hashlib
import subprocess
import sys
import threading
import tracemalloc
from collections.abc import Callable
from dataclasses import replace
from decimal import Decimal
from pathlib import Path

import pytest
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from core.blobs import BlobStore
from core.envelopes.approvals import approve, record_approval, record_view
from core.envelopes.certificate import find_cjk_font
from core.envelopes.creation import DocumentInput, FieldInput, PartyInput, create_envelope
from core.envelopes.documents import current_documents, read_document, read_document_stream
from core.envelopes.lifecycle import (
    cancel_envelope,
    decline,
    expire_envelope,
    get_envelope,
    send_envelope,
)
from core.envelopes.sealing import completion_certificate
from core.errors import BlobError, DocumentError, StateError
from core.model import Envelope, Party
from core.pushback.outbox import DispatchResult, RetryPolicy, enqueue, list_deliveries
from core.records.audit import list_events
from core.runtime import Limits, Runtime
from core.signing import SigningEngine, SigningKey, TimestampService, verify_pdf
from core.signing.signatures import apply_pending_signature
from core.signing.worker import list_waiting, process_until_idle
from core.states import EnvelopeState, PartyRole, PartyState
from tests.fixtures.envelopes import ensure_staff, give_access_codes
from tests.fixtures.pdfs import make_pdf
from tests.fixtures.pki import LivePki

STAFF = "staff_login"
CONTRACTOR = "email+access_code"


def _parties(n_signers: int = 2) -> list[PartyInput]:
    # The internal approver is staff (signs after logging in); the others sign by link + code.
    parties = [
        PartyInput(
            PartyRole.APPROVER, "契約 花子", "kacho@city.example.jp", "開発市 契約課", staff=True
        )
    ]
    for i in range(n_signers):
        parties.append(
            PartyInput(
                PartyRole.SIGNER, f"署名者 {i + 1}", f"s{i + 1}@example.jp", f"株式会社{i + 1}"
            )
        )
    return parties


@pytest.fixture
def make_envelope(session: Session, dev_runtime: Runtime) -> Callable[..., Envelope]:
    def make(**overrides: object) -> Envelope:
        args: dict[str, object] = {
            "title": "市道１号線舗装補修工事",
            "creator": "開発市 契約課",
            "amount": Decimal("31389000"),
            "documents": [
                DocumentInput("工事請負契約書.pdf", make_pdf(pages=2)),
                DocumentInput("請書.pdf", make_pdf(pages=1)),
            ],
            "parties": _parties(),
            "fields": [
                FieldInput(document=1, party=1, label="記入日", page=1, rect=(100, 600, 300, 620)),
            ],
        }
        args.update(overrides)
        ensure_staff(session, "kacho@city.example.jp")
        envelope = create_envelope(session=session, runtime=dev_runtime, **args)  # type: ignore[arg-type]
        give_access_codes(session, envelope)
        session.commit()
        return envelope

    return make


def _act_all(session: Session, runtime: Runtime, envelope: Envelope) -> None:
    for party in list(envelope.parties):
        if party.role is PartyRole.CC:
            continue
        record_view(session=session, envelope_id=envelope.id, party_id=party.id, ip="192.0.2.10")
        values = {f.id: "令和7年10月1日" for f in party.fields}
        approve(
            session=session,
            runtime=runtime,
            envelope_id=envelope.id,
            party_id=party.id,
            values=values,
            auth_method=STAFF if party.routing_order == 1 else CONTRACTOR,
            ip="192.0.2.10",
        )


def test_full_flow_signs_every_document_and_issues_a_certificate(
    session: Session,
    dev_runtime: Runtime,
    make_envelope: Callable[..., Envelope],
    dev_trust_roots: list,
    tmp_path: Path,
) -> None:
    parties = [*_parties(), PartyInput(PartyRole.CC, "写し 受取", "cc@city.example.jp")]
    envelope = make_envelope(parties=parties)
    assert envelope.state is EnvelopeState.DRAFT
    first = send_envelope(
        session=session, runtime=dev_runtime, envelope_id=envelope.id, actor="開発市 契約課"
    )
    session.commit()
    assert first.routing_order == 1 and first.state is PartyState.SENT
    assert [p.state for p in envelope.parties[1:]] == [PartyState.WAITING] * 3

    _act_all(session, dev_runtime, envelope)
    session.refresh(envelope)
    assert envelope.state is EnvelopeState.COMPLETED
    assert [p.state for p in envelope.parties] == [PartyState.COMPLETED] * 3 + [PartyState.NOTIFIED]

    docs = current_documents(runtime=dev_runtime, envelope=envelope)
    for name, data in docs:
        report = verify_pdf(data, trust_roots=dev_trust_roots)
        assert report.ok, (name, report.as_dict())
        approvals = [s for s in report.signatures if s.kind == "approval"]
        assert len(approvals) == 3
        assert [s for s in report.signatures if s.kind == "document_timestamp"]
        assert "署名者 2 様 s2@example.jp が " in approvals[2].reason
        assert approvals[2].reason.endswith(" +09:00 JSTに承認しました")
        path = tmp_path / name
        path.write_bytes(data)
        text = subprocess.run(
            ["pdftotext", str(path), "-"], capture_output=True, text=True, check=True
        ).stdout
        assert envelope.certificate_id in text  # the ID printed bottom-left on page 1
    ukesho = tmp_path / "請書.pdf"
    text = subprocess.run(
        ["pdftotext", str(ukesho), "-"], capture_output=True, text=True, check=True
    ).stdout
    assert "令和7年10月1日" in text  # the contractor's text box value is in the document

    certificate = tmp_path / "cert.pdf"
    certificate.write_bytes(completion_certificate(runtime=dev_runtime, envelope=envelope))
    text = subprocess.run(
        ["pdftotext", str(certificate), "-"], capture_output=True, text=True, check=True
    ).stdout
    assert envelope.certificate_id in text
    assert envelope.management_number in text
    assert "s1@example.jp" in text and "署名者 2" in text
    # The certificate is itself signed and timestamped by the gateway, and says what a
    # verification of the concluded files found, with each file's SHA-256.
    report = verify_pdf(certificate.read_bytes(), trust_roots=dev_trust_roots)
    assert report.ok, report.as_dict()
    assert [s.kind for s in report.signatures] == ["approval", "document_timestamp"]
    flat = "".join(text.split())
    for _name, data in docs:
        assert hashlib.sha256(data).hexdigest() in flat
    assert "全2文書の電子署名6件・ドキュメントタイムスタンプ2件を検証し、すべて有効" in flat
    assert "職員ログイン(署名時にパスワードを再入力)" in flat  # party 1's approval
    assert "メール認証＋アクセスコード" in flat  # the others'
    assert "ドキュメントタイムスタンプ(RFC3161)" in flat  # the conclusion itself
    actions = [e.action for e in list_events(session=session, envelope_id=envelope.id)]
    assert actions[:3] == ["envelope.created", "envelope.sent", "party.requested"]
    assert actions.count("party.signed") == 3
    assert actions[-1] == "envelope.completed"


def test_only_the_current_party_can_act(
    session: Session, dev_runtime: Runtime, make_envelope: Callable[..., Envelope]
) -> None:
    envelope = make_envelope()
    with pytest.raises(StateError) as info:  # not sent yet
        record_view(session=session, envelope_id=envelope.id, party_id=envelope.parties[0].id)
    assert info.value.code == "state.envelope_not_open"
    send_envelope(session=session, runtime=dev_runtime, envelope_id=envelope.id, actor="staff")
    session.commit()
    second = envelope.parties[1]
    with pytest.raises(StateError) as info:
        approve(
            session=session,
            runtime=dev_runtime,
            envelope_id=envelope.id,
            party_id=second.id,
            values={second.fields[0].id: "x"},
            auth_method=CONTRACTOR,
        )
    assert info.value.code == "state.not_your_turn"
    first = envelope.parties[0]
    approve(
        session=session,
        runtime=dev_runtime,
        envelope_id=envelope.id,
        party_id=first.id,
        values={},
        auth_method=STAFF,
    )
    with pytest.raises(StateError) as info:
        approve(
            session=session,
            runtime=dev_runtime,
            envelope_id=envelope.id,
            party_id=first.id,
            values={},
            auth_method=STAFF,
        )
    assert info.value.code == "state.already_acted"
    session.refresh(envelope)
    assert envelope.documents[0].signature_count == 1


def test_concurrent_submits_apply_once(
    sessions: sessionmaker[Session], dev_runtime: Runtime
) -> None:
    with sessions() as session:
        ensure_staff(session, "kacho@city.example.jp")
        envelope = create_envelope(
            session=session,
            runtime=dev_runtime,
            title="同時送信",
            amount=Decimal("1000000"),
            creator="staff",
            documents=[DocumentInput("a.pdf", make_pdf(pages=1))],
            parties=_parties(1),
        )
        give_access_codes(session, envelope)
        session.commit()
        send_envelope(session=session, runtime=dev_runtime, envelope_id=envelope.id, actor="staff")
        session.commit()
        envelope_id, party_id = envelope.id, envelope.parties[0].id
    barrier = threading.Barrier(4)
    outcomes: list[str] = []

    def submit() -> None:
        with sessions() as s:
            barrier.wait()
            try:
                record_approval(
                    session=s,
                    envelope_id=envelope_id,
                    party_id=party_id,
                    values={},
                    auth_method=STAFF,
                )
                outcomes.append("ok")
            except StateError as exc:
                outcomes.append(exc.code)

    threads = [threading.Thread(target=submit) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(outcomes) == ["ok"] + ["state.already_acted"] * 3
    with sessions() as s:
        events = [e.action for e in list_events(session=s, envelope_id=envelope_id)]
        assert events.count("party.approved") == 1


def test_decline_needs_a_reason_and_ends_the_envelope(
    session: Session, dev_runtime: Runtime, make_envelope: Callable[..., Envelope]
) -> None:
    envelope = make_envelope()
    send_envelope(session=session, runtime=dev_runtime, envelope_id=envelope.id, actor="staff")
    party = envelope.parties[0]
    with pytest.raises(StateError, match="envelope.decline_reason_required"):
        decline(
            session=session,
            runtime=dev_runtime,
            envelope_id=envelope.id,
            party_id=party.id,
            reason="  ",
        )
    decline(
        session=session,
        runtime=dev_runtime,
        envelope_id=envelope.id,
        party_id=party.id,
        reason="金額に誤りがあります",
        ip="192.0.2.1",
    )
    session.commit()
    assert envelope.state is EnvelopeState.DECLINED
    assert party.decline_reason == "金額に誤りがあります"
    with pytest.raises(StateError):
        approve(
            session=session,
            runtime=dev_runtime,
            envelope_id=envelope.id,
            party_id=party.id,
            values={},
            auth_method=STAFF,
        )
    with pytest.raises(StateError, match="state.illegal_transition"):
        cancel_envelope(
            session=session,
            runtime=dev_runtime,
            envelope_id=envelope.id,
            actor="staff",
            reason="金額誤り",
        )


def test_cancel_only_before_completion_and_expire(
    session: Session, dev_runtime: Runtime, make_envelope: Callable[..., Envelope]
) -> None:
    draft = make_envelope()
    with pytest.raises(StateError) as info:
        cancel_envelope(
            session=session, runtime=dev_runtime, envelope_id=draft.id, actor="staff", reason=" "
        )
    assert info.value.code == "envelope.cancel_reason_required"
    cancel_envelope(
        session=session, runtime=dev_runtime, envelope_id=draft.id, actor="staff", reason="誤登録"
    )
    assert draft.state is EnvelopeState.CANCELLED

    sent = make_envelope()
    send_envelope(session=session, runtime=dev_runtime, envelope_id=sent.id, actor="staff")
    expire_envelope(session=session, runtime=dev_runtime, envelope_id=sent.id)
    assert sent.state is EnvelopeState.EXPIRED
    with pytest.raises(StateError):
        send_envelope(session=session, runtime=dev_runtime, envelope_id=sent.id, actor="staff")

    done = make_envelope()
    send_envelope(session=session, runtime=dev_runtime, envelope_id=done.id, actor="staff")
    session.commit()
    _act_all(session, dev_runtime, done)
    session.refresh(done)
    assert done.state is EnvelopeState.COMPLETED
    with pytest.raises(StateError, match="state.illegal_transition"):
        cancel_envelope(
            session=session,
            runtime=dev_runtime,
            envelope_id=done.id,
            actor="staff",
            reason="金額誤り",
        )
    with pytest.raises(StateError, match="state.illegal_transition"):
        expire_envelope(session=session, runtime=dev_runtime, envelope_id=done.id)


def test_field_values_are_checked(
    session: Session, dev_runtime: Runtime, make_envelope: Callable[..., Envelope]
) -> None:
    envelope = make_envelope()
    send_envelope(session=session, runtime=dev_runtime, envelope_id=envelope.id, actor="staff")
    session.commit()
    approver, contractor = envelope.parties[0], envelope.parties[1]
    with pytest.raises(StateError, match="envelope.foreign_field"):
        approve(
            session=session,
            runtime=dev_runtime,
            envelope_id=envelope.id,
            party_id=approver.id,
            values={contractor.fields[0].id: "x"},
            auth_method=STAFF,
        )
    approve(
        session=session,
        runtime=dev_runtime,
        envelope_id=envelope.id,
        party_id=approver.id,
        values={},
        auth_method=STAFF,
    )
    field_id = contractor.fields[0].id
    with pytest.raises(StateError, match="envelope.field_required"):
        approve(
            session=session,
            runtime=dev_runtime,
            envelope_id=envelope.id,
            party_id=contractor.id,
            values={field_id: " "},
            auth_method=CONTRACTOR,
        )
    with pytest.raises(StateError, match="envelope.field_too_long"):
        approve(
            session=session,
            runtime=dev_runtime,
            envelope_id=envelope.id,
            party_id=contractor.id,
            values={field_id: "あ" * 201},
            auth_method=CONTRACTOR,
        )
    session.refresh(contractor)
    assert contractor.state is PartyState.SENT


def test_seventeen_plus_parties_in_order(
    session: Session,
    dev_runtime: Runtime,
    make_envelope: Callable[..., Envelope],
    dev_trust_roots: list,
) -> None:
    envelope = make_envelope(
        parties=_parties(17),
        fields=[],
        documents=[DocumentInput("契約書.pdf", make_pdf(pages=1))],
    )
    assert len(envelope.parties) == 18
    send_envelope(session=session, runtime=dev_runtime, envelope_id=envelope.id, actor="staff")
    session.commit()
    _act_all(session, dev_runtime, envelope)
    session.refresh(envelope)
    assert envelope.state is EnvelopeState.COMPLETED
    ((_, data),) = current_documents(runtime=dev_runtime, envelope=envelope)
    report = verify_pdf(data, trust_roots=dev_trust_roots)
    assert report.ok
    reasons = [s.reason for s in report.signatures if s.kind == "approval"]
    assert [r.split(" 様 ")[0] for r in reasons] == ["契約 花子"] + [
        f"署名者 {i}" for i in range(1, 18)
    ]


def _encrypted_pdf(tmp_path: Path) -> bytes:
    plain, enc = tmp_path / "p.pdf", tmp_path / "e.pdf"
    plain.write_bytes(make_pdf(pages=1))
    subprocess.run(
        ["qpdf", "--encrypt", "user", "owner", "256", "--", str(plain), str(enc)], check=True
    )
    return enc.read_bytes()


@pytest.mark.parametrize(
    ("case", "code"),
    [
        ("not_pdf", "document.not_pdf"),
        ("damaged", "document.damaged"),
        ("encrypted", "document.encrypted"),
        ("already_signed", "document.already_signed"),
        ("too_large", "document.too_large"),
        ("envelope_too_large", "document.envelope_too_large"),
        ("too_many_files", "document.too_many_files"),
        ("none", "document.none"),
    ],
)
def test_bad_inputs_are_refused_and_leave_nothing_behind(
    case: str,
    code: str,
    session: Session,
    dev_runtime: Runtime,
    tmp_path: Path,
    signed_pdf: bytes,
) -> None:
    small = replace(
        dev_runtime.limits, max_file_bytes=60_000, max_envelope_bytes=100_000, max_files=5
    )
    runtime = replace(
        dev_runtime, limits=small, blobs=BlobStore(tmp_path / "fresh-blobs", b"k" * 32)
    )
    pdf = make_pdf(pages=1)
    documents = {
        "not_pdf": [DocumentInput("a.pdf", "契約書".encode() * 100)],
        "damaged": [DocumentInput("a.pdf", pdf[: len(pdf) // 2])],
        "encrypted": [DocumentInput("a.pdf", _encrypted_pdf(tmp_path))],
        "already_signed": [DocumentInput("a.pdf", signed_pdf)],
        "too_large": [DocumentInput("a.pdf", make_pdf(pages=1, size_target=70_000))],
        "envelope_too_large": [
            DocumentInput(f"{i}.pdf", make_pdf(pages=1, size_target=40_000)) for i in range(3)
        ],
        "too_many_files": [DocumentInput(f"{i}.pdf", pdf) for i in range(6)],
        "none": [],
    }[case]
    with pytest.raises(DocumentError) as info:
        create_envelope(
            session=session,
            runtime=runtime,
            title="t",
            creator="staff",
            documents=documents,
            parties=_parties(1),
        )
    assert info.value.code == code
    assert info.value.message_ja  # a Japanese message for the person who uploaded it
    session.rollback()
    assert session.scalar(select(func.count()).select_from(Envelope)) == 0
    assert session.scalar(select(func.count()).select_from(Party)) == 0
    assert not (tmp_path / "fresh-blobs").exists()


def test_five_files_are_accepted_by_default(
    session: Session, make_envelope: Callable[..., Envelope], dev_runtime: Runtime
) -> None:
    assert Limits().max_files >= 5
    envelope = make_envelope(
        documents=[DocumentInput(f"別紙{i}.pdf", make_pdf(pages=1)) for i in range(5)], fields=[]
    )
    assert [d.name for d in get_envelope(session=session, envelope_id=envelope.id).documents] == [
        f"別紙{i}.pdf" for i in range(5)
    ]


def test_tsa_outage_leaves_the_envelope_waiting_then_the_worker_finishes(
    sessions: sessionmaker[Session],
    test_pki: LivePki,
    pkcs12_key: SigningKey,
    tmp_path: Path,
) -> None:
    """A real TSA (certomancer) answering 503: the approval is committed with its signing task,
    nothing is half-signed, the task keeps the error and stays due; once the TSA is back the
    signing worker signs, then seals the same way."""
    engine = SigningEngine(
        key=pkcs12_key,
        timestamps=TimestampService.from_urls(
            [test_pki.flaky_tsa_url], timeout=5, attempts=2, backoff=0.01
        ),
        trust_roots=[test_pki.root],
        font_path=find_cjk_font(),
    )
    runtime = Runtime(
        blobs=BlobStore(tmp_path / "b", b"m" * 32), signing=engine, buyer_name="開発市"
    )
    at_once = RetryPolicy(max_attempts=1000, base_delay=0.0, max_delay=0.0)

    def work() -> DispatchResult:
        return process_until_idle(sessions=sessions, runtime=runtime, worker="w", policy=at_once)

    try:
        with sessions() as session:
            ensure_staff(session, "kacho@city.example.jp")
            envelope = create_envelope(
                session=session,
                runtime=runtime,
                title="TSA障害",
                amount=Decimal("1000000"),
                creator="staff",
                documents=[DocumentInput("a.pdf", make_pdf(pages=1))],
                parties=_parties(1),
            )
            give_access_codes(session, envelope)
            send_envelope(session=session, runtime=runtime, envelope_id=envelope.id, actor="staff")
            session.commit()
            envelope_id = envelope.id
            first_id, second_id = (p.id for p in envelope.parties)
            before = [r.blob_id for r in envelope.documents[0].revisions]
            record_approval(
                session=session,
                envelope_id=envelope_id,
                party_id=first_id,
                values={},
                auth_method=STAFF,
                ip="192.0.2.1",
            )
        test_pki.flaky.fail_next(1000)
        result = work()
        assert result.retrying and not result.delivered and not result.dead
        with sessions() as session:
            envelope = get_envelope(session=session, envelope_id=envelope_id)
            first, second = envelope.parties
            assert first.state is PartyState.SIGNING  # the instruction is kept...
            assert [r.blob_id for r in envelope.documents[0].revisions] == before  # no change
            assert envelope.documents[0].signature_count == 0
            assert envelope.last_error and "tsa_unreachable" in envelope.last_error
            assert second.state is PartyState.WAITING
            (waiting,) = list_waiting(session=session)
            assert waiting.kind == "signature" and waiting.attempts >= 1
            assert waiting.last_error and "tsa_unreachable" in waiting.last_error

        test_pki.flaky.fail_next(0)
        assert work().delivered
        with sessions() as session:
            envelope = get_envelope(session=session, envelope_id=envelope_id)
            assert envelope.last_error is None
            assert envelope.documents[0].signature_count == 1
            assert [p.state for p in envelope.parties] == [PartyState.COMPLETED, PartyState.SENT]
            assert list_waiting(session=session) == []

            # The last party's seal fails the same way and the worker finishes it the same way.
            record_approval(
                session=session,
                envelope_id=envelope_id,
                party_id=second_id,
                values={},
                auth_method=CONTRACTOR,
            )
        with sessions() as session:
            # applied inline this time (as a retry of the task would): it closes its own task
            # and queues the seal with the move to ``sealing``
            apply_pending_signature(
                session=session, runtime=runtime, envelope_id=envelope_id, party_id=second_id
            )
        test_pki.flaky.fail_next(1000)
        work()
        with sessions() as session:
            envelope = get_envelope(session=session, envelope_id=envelope_id)
            assert envelope.state is EnvelopeState.SEALING and envelope.certificate_blob_id is None
            assert [w.kind for w in list_waiting(session=session)] == ["seal"]
        test_pki.flaky.fail_next(0)
        work()
        with sessions() as session:
            envelope = get_envelope(session=session, envelope_id=envelope_id)
            assert envelope.state is EnvelopeState.COMPLETED
            assert list_waiting(session=session) == []
            ((_, data),) = current_documents(runtime=runtime, envelope=envelope)
            assert verify_pdf(data, trust_roots=[test_pki.root]).ok
    finally:
        engine.close()


def test_inline_approve_commits_once_or_keeps_the_approval_for_the_worker(
    sessions: sessionmaker[Session],
    test_pki: LivePki,
    pkcs12_key: SigningKey,
    tmp_path: Path,
) -> None:
    """approve() signs before writing and commits approval and signature together (no signing
    task); with the TSA down it commits the approval alone, with its task, and the worker
    signs it later."""
    from core.errors import GatewayError
    from core.model import Delivery

    engine = SigningEngine(
        key=pkcs12_key,
        timestamps=TimestampService.from_urls(
            [test_pki.flaky_tsa_url], timeout=5, attempts=2, backoff=0.01
        ),
        trust_roots=[test_pki.root],
        font_path=find_cjk_font(),
    )
    runtime = Runtime(
        blobs=BlobStore(tmp_path / "b", b"m" * 32), signing=engine, buyer_name="開発市"
    )
    at_once = RetryPolicy(max_attempts=1000, base_delay=0.0, max_delay=0.0)
    try:
        with sessions() as session:
            ensure_staff(session, "kacho@city.example.jp")
            envelope = create_envelope(
                session=session,
                runtime=runtime,
                title="一度の書き込み",
                amount=Decimal("1000000"),
                creator="staff",
                documents=[DocumentInput("a.pdf", make_pdf(pages=1))],
                parties=_parties(1),
            )
            give_access_codes(session, envelope)
            send_envelope(session=session, runtime=runtime, envelope_id=envelope.id, actor="staff")
            session.commit()
            envelope_id = envelope.id
            first_id, second_id = (p.id for p in envelope.parties)
            approve(
                session=session,
                runtime=runtime,
                envelope_id=envelope_id,
                party_id=first_id,
                values={},
                auth_method=STAFF,
                ip="192.0.2.1",
            )
        with sessions() as session:
            envelope = get_envelope(session=session, envelope_id=envelope_id)
            assert [p.state for p in envelope.parties] == [PartyState.COMPLETED, PartyState.SENT]
            assert envelope.documents[0].signature_count == 1
            assert session.scalars(select(Delivery).where(Delivery.target == "signing")).all() == []
            actions = [e.action for e in list_events(session=session, envelope_id=envelope_id)]
            assert actions[-3:] == ["party.approved", "party.signed", "party.requested"]

            test_pki.flaky.fail_next(1000)
            with pytest.raises(GatewayError) as caught:
                approve(
                    session=session,
                    runtime=runtime,
                    envelope_id=envelope_id,
                    party_id=second_id,
                    values={},
                    auth_method=CONTRACTOR,
                )
            assert caught.value.retriable
        with sessions() as session:
            envelope = get_envelope(session=session, envelope_id=envelope_id)
            assert envelope.parties[1].state is PartyState.SIGNING  # the instruction is kept
            assert envelope.documents[0].signature_count == 1
            assert envelope.last_error and "tsa_unreachable" in envelope.last_error
            (waiting,) = list_waiting(session=session)
            assert waiting.kind == "signature" and waiting.state.value == "pending"
        test_pki.flaky.fail_next(0)
        process_until_idle(sessions=sessions, runtime=runtime, worker="w", policy=at_once)
        with sessions() as session:
            envelope = get_envelope(session=session, envelope_id=envelope_id)
            assert envelope.state is EnvelopeState.COMPLETED
            assert envelope.documents[0].signature_count == 2
            ((_, data),) = current_documents(runtime=runtime, envelope=envelope)
            assert verify_pdf(data, trust_roots=[test_pki.root]).ok
    finally:
        engine.close()


def test_signatures_are_stored_as_appends_and_a_tampered_append_is_caught(
    session: Session,
    dev_runtime: Runtime,
    make_envelope: Callable[..., Envelope],
    dev_trust_roots: list,
) -> None:
    big = make_pdf(pages=1, size_target=1_000_000)
    envelope = make_envelope(documents=[DocumentInput("大きな契約書.pdf", big)], fields=[])
    send_envelope(session=session, runtime=dev_runtime, envelope_id=envelope.id, actor="staff")
    session.commit()
    _act_all(session, dev_runtime, envelope)
    session.refresh(envelope)
    (doc,) = envelope.documents
    assert [(r.seq, r.kind, r.reason) for r in doc.revisions] == [
        (1, "full", "original"),
        (2, "append", "prepared"),
        (3, "append", "signature"),
        (4, "append", "signature"),
        (5, "append", "signature"),
        (6, "append", "seal"),
    ]
    assert doc.original_blob_id == doc.revisions[0].blob_id  # the upload is stored once
    sizes = [r.size for r in doc.revisions]
    assert sizes == sorted(sizes) and sizes[-1] == doc.size
    stored = sum(
        (dev_runtime.blobs.root / r.blob_id[:2] / r.blob_id).stat().st_size for r in doc.revisions
    )
    assert stored < 1.3 * doc.size  # not one copy of the whole file per signature
    ((_, data),) = current_documents(runtime=dev_runtime, envelope=envelope)
    assert len(data) == doc.size and verify_pdf(data, trust_roots=dev_trust_roots).ok

    path = dev_runtime.blobs.root / doc.revisions[3].blob_id[:2] / doc.revisions[3].blob_id
    raw = bytearray(path.read_bytes())
    raw[-5] ^= 0x01
    path.write_bytes(bytes(raw))
    with pytest.raises(BlobError, match="blob.tampered"):
        current_documents(runtime=dev_runtime, envelope=envelope)


def test_an_approval_holds_the_document_once(
    session: Session, dev_runtime: Runtime, make_envelope: Callable[..., Envelope]
) -> None:
    # Read a chunk at a time into one buffer, signed in place and only the increment stored:
    # no second copy of the document (per-chunk copies while decrypting took it to 2x).
    big = make_pdf(pages=1, size_target=2_000_000)
    envelope = make_envelope(documents=[DocumentInput("大きな契約書.pdf", big)], fields=[])
    first = send_envelope(session=session, runtime=dev_runtime, envelope_id=envelope.id, actor="s")
    session.commit()
    tracemalloc.start()
    try:
        approve(
            session=session,
            runtime=dev_runtime,
            envelope_id=envelope.id,
            party_id=first.id,
            values={},
            auth_method=STAFF,
        )
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert envelope.documents[0].signature_count == 1
    assert peak < 1.5 * len(big)


def test_the_seal_is_stored_as_the_bytes_it_appended_to_the_signed_document(
    session: Session,
    dev_runtime: Runtime,
    make_envelope: Callable[..., Envelope],
    dev_trust_roots: list,
) -> None:
    envelope = make_envelope(fields=[])
    send_envelope(session=session, runtime=dev_runtime, envelope_id=envelope.id, actor="staff")
    session.commit()
    _act_all(session, dev_runtime, envelope)
    session.refresh(envelope)
    assert envelope.state is EnvelopeState.COMPLETED
    for doc in envelope.documents:
        *_, signed, seal = doc.revisions
        assert (seal.kind, seal.reason) == ("append", "seal")
        data = read_document(runtime=dev_runtime, document=doc)
        assert len(data) == seal.size == doc.size
        assert dev_runtime.blobs.get(seal.blob_id) == data[signed.size :]
        report = verify_pdf(data, trust_roots=dev_trust_roots)
        assert report.ok, report.as_dict()
        assert report.signatures[-1].kind == "document_timestamp"
        assert report.signatures[-1].field_name == "kg_doc_timestamp_1"
        assert doc.timestamp_expires_at is not None


def _last_approval_peaks(
    session: Session,
    runtime: Runtime,
    make_envelope: Callable[..., Envelope],
    monkeypatch: pytest.MonkeyPatch,
    size: int,
) -> tuple[int, int, int]:
    """(document size, traced peak until the sealed document is checked, traced peak of the
    whole approval) of the last party's approval, which seals the envelope."""
    pdf = make_pdf(pages=1, size_target=size)
    envelope = make_envelope(documents=[DocumentInput("大きな契約書.pdf", pdf)], fields=[])
    send_envelope(session=session, runtime=runtime, envelope_id=envelope.id, actor="s")
    session.commit()
    *others, last = envelope.parties
    for party in [*others, last]:
        if party is last:
            sealed_at: list[int] = []
            expiry = runtime.signing.timestamp_expiry

            def noting(data: bytes) -> object:
                sealed_at.append(tracemalloc.get_traced_memory()[1])
                return expiry(data)

            monkeypatch.setattr(runtime.signing, "timestamp_expiry", noting)
            tracemalloc.start()
        approve(
            session=session,
            runtime=runtime,
            envelope_id=envelope.id,
            party_id=party.id,
            values={},
            auth_method=STAFF if party.routing_order == 1 else CONTRACTOR,
        )
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    monkeypatch.undo()
    assert envelope.state is EnvelopeState.COMPLETED
    return len(pdf), sealed_at[0], peak


def test_a_last_approval_seals_holding_the_document_once(
    session: Session,
    dev_runtime: Runtime,
    make_envelope: Callable[..., Envelope],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Read into one buffer, sealed in place and only the seal stored, as an approval is: the
    # seal holds the document once (read_document's ciphertext, plaintext and join and the
    # seal's output BytesIO held it four times). Two sizes, so that what does not grow with
    # the document cancels out: pyHanko's parsing of each signature's hex /Contents (about
    # 2.6 MB at once) and the certificate's rendering (6.5 MB).
    gc.disable()  # cyclic garbage (pyHanko's readers) would be collected at random points
    try:
        # the first of a process also loads the certificate's font: measured, then dropped
        _, small, big = (
            _last_approval_peaks(session, dev_runtime, make_envelope, monkeypatch, size)
            for size in (100_000, 1_000_000, 3_000_000)
        )
    finally:
        gc.enable()
    grown = big[0] - small[0]
    assert big[1] - small[1] < 1.5 * grown
    # Verifying the sealed document for the certificate holds it twice, inherently: pyHanko's
    # modification analysis reads every stream's bytes out of the file.
    assert big[2] - small[2] < 2.5 * grown


def test_a_document_stream_has_room_for_the_revision_appended_to_it(
    session: Session, dev_runtime: Runtime, make_envelope: Callable[..., Envelope]
) -> None:
    pdf = make_pdf(pages=1, size_target=200_000)  # room below half the document is kept
    envelope = make_envelope(documents=[DocumentInput("契約書.pdf", pdf)], fields=[])
    (doc,) = envelope.documents
    whole = read_document(runtime=dev_runtime, document=doc)
    stream = read_document_stream(dev_runtime, doc, room=50_000)
    with stream.getbuffer() as view:  # (getvalue() would trim the buffer to its bytes)
        assert view == whole and stream.tell() == len(whole)
    allocated = sys.getsizeof(stream)
    stream.write(b"%" * 50_000)  # what the signer appends: no reallocation, no copy
    assert sys.getsizeof(stream) == allocated
    # The recorded size only sizes the buffer: a wrong one reads the same bytes.
    for recorded in (len(whole) // 3, 4 * len(whole)):
        doc.revisions[-1].size = recorded
        assert read_document_stream(dev_runtime, doc, room=1000).getvalue() == whole
    session.rollback()


class _OutboxObserver:
    """Writes one outbox row per event, as the mailer and the sinks will."""

    def __init__(self, fail_on: str | None = None) -> None:
        self.fail_on = fail_on

    def envelope_event(
        self, *, session: Session, envelope: Envelope, event: str, party: Party | None
    ) -> None:
        if event == self.fail_on:
            raise RuntimeError("observer refused")
        key = f"test:{envelope.id}:{event}:{party.id if party else '-'}"
        enqueue(
            session=session,
            target="test",
            idempotency_key=key,
            payload={"event": event},
            envelope_id=envelope.id,
        )


def test_observers_write_outbox_rows_with_each_state_change(
    session: Session, dev_runtime: Runtime, make_envelope: Callable[..., Envelope]
) -> None:
    runtime = replace(dev_runtime, observers=(_OutboxObserver(),))
    envelope = make_envelope(
        parties=[*_parties(), PartyInput(PartyRole.CC, "写し", "cc@example.jp")]
    )
    send_envelope(session=session, runtime=runtime, envelope_id=envelope.id, actor="staff")
    session.commit()
    _act_all(session, runtime, envelope)
    events = [d.payload["event"] for d in reversed(list_deliveries(session=session, target="test"))]
    assert events == ["party.requested"] * 3 + ["party.notified", "envelope.completed"]

    other = make_envelope()
    send_envelope(session=session, runtime=runtime, envelope_id=other.id, actor="staff")
    session.commit()
    failing = replace(runtime, observers=(_OutboxObserver(fail_on="envelope.cancelled"),))
    with pytest.raises(RuntimeError):
        cancel_envelope(
            session=session, runtime=failing, envelope_id=other.id, actor="staff", reason="金額誤り"
        )
    session.rollback()
    assert get_envelope(session=session, envelope_id=other.id).state is EnvelopeState.SENT
    cancel_envelope(
        session=session, runtime=runtime, envelope_id=other.id, actor="staff", reason="金額誤り"
    )
    session.commit()
    newest = list_deliveries(session=session)[0]
    assert newest.payload["event"] == "envelope.cancelled"


def test_a_prepared_document_is_kept_as_its_append_or_else_whole() -> None:
    # Only what is stored of the prepared file outlives preparing: its tail when preparing
    # appended to the upload, else the whole file (a qpdf rebuild, or nothing appended).
    from core.envelopes.creation import _as_stored

    upload = b"%PDF-1.7 upload\n%%EOF\n"
    appended = _as_stored(upload, upload + b"1 0 obj stamp\n%%EOF\n")
    assert (appended.size, appended.blob, appended.append) == (
        len(upload) + 20,
        b"1 0 obj stamp\n%%EOF\n",
        True,
    )
    rebuilt = b"%PDF-1.7 rebuilt by qpdf\n%%EOF\n"
    assert _as_stored(upload, rebuilt).blob is rebuilt
    assert not _as_stored(upload, rebuilt).append
    assert (_as_stored(upload, upload).blob, _as_stored(upload, upload).append) == (upload, False)
