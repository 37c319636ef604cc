"""The inline approval's database cost and its once-only guard.

Each SQL statement is a round trip to PostgreSQL on the signer's click, so the count of one
approval is pinned (a lazy load or an ORM flush creeping back in shows up here first); the
Core statements that replaced the unit of work must still apply an approval exactly once when
several submits race, and leave the objects in the session matching the rows.
"""

from __future__ import annotations

import threading
from decimal import Decimal

from asn1crypto import x509
from sqlalchemy import Engine, event
from sqlalchemy.orm import Session, sessionmaker

from core.envelopes.approvals import approve
from core.envelopes.creation import DocumentInput, FieldInput, PartyInput, create_envelope
from core.envelopes.documents import current_documents
from core.envelopes.lifecycle import get_envelope, send_envelope
from core.errors import StateError
from core.records.audit import list_events, verify_chain
from core.runtime import Runtime
from core.signing import verify_pdf
from core.states import EnvelopeState, PartyRole, PartyState
from tests.fixtures.envelopes import ensure_staff, give_access_codes
from tests.fixtures.pdfs import make_pdf

# Statements of one approval that hands the envelope on (two documents, one field):
# PostgreSQL: envelope+parties+fields, documents+revisions (joined: the approval's transaction is
# new, see core.envelopes.lifecycle._envelope_graph), the guarded approval with its field
# values and revisions (one statement), the signature blobs themselves (core.staged_blobs: one
# multi-row insert, instead of a durable write to the store before the commit), the next party,
# the audit head, the audit links.
# SQLite runs the approval's parts one by one (no data-modifying CTEs there).
STATEMENTS = {"postgresql": 7, "sqlite": 12}


def _envelope(session: Session, runtime: Runtime) -> tuple[str, list[str], str]:
    ensure_staff(session, "kacho@city.example.jp")
    envelope = create_envelope(
        session=session,
        runtime=runtime,
        title="往復回数",
        amount=Decimal("1000000"),
        creator="staff",
        documents=[
            DocumentInput("契約書.pdf", make_pdf(pages=1)),
            DocumentInput("請書.pdf", make_pdf(pages=1)),
        ],
        parties=[
            PartyInput(PartyRole.SIGNER, "受注 太郎", "taro@example.jp", "株式会社テスト"),
            PartyInput(PartyRole.SIGNER, "発注 花子", "hanako@city.example.jp", "開発市"),
        ],
        fields=[FieldInput(document=1, party=0, label="記入日", page=1, rect=(100, 600, 300, 620))],
    )
    give_access_codes(session, envelope)
    session.commit()
    send_envelope(session=session, runtime=runtime, envelope_id=envelope.id, actor="staff")
    session.commit()
    return envelope.id, [p.id for p in envelope.parties], envelope.fields[0].id


def test_one_approval_costs_a_pinned_number_of_statements(
    sessions: sessionmaker[Session],
    db_engine: Engine,
    dev_runtime: Runtime,
    dev_trust_roots: list[x509.Certificate],
) -> None:
    with sessions() as session:
        envelope_id, (first, second), field_id = _envelope(session, dev_runtime)
    statements: list[str] = []

    def count(_conn: object, _cursor: object, statement: str, *_: object) -> None:
        statements.append(statement)

    event.listen(db_engine, "before_cursor_execute", count)
    try:
        with sessions() as session:
            party = approve(
                session=session,
                runtime=dev_runtime,
                envelope_id=envelope_id,
                party_id=first,
                values={field_id: "令和7年10月1日"},
                auth_method="email+access_code",
                ip="192.0.2.1",
            )
            # What the session holds matches the rows, with nothing left to flush.
            assert not session.dirty and not session.new
            assert party.state is PartyState.COMPLETED and party.fields[0].value == "令和7年10月1日"
            documents = party.envelope.documents
            assert [d.signature_count for d in documents] == [1, 1]
            in_session = [[(r.seq, r.id, r.kind) for r in d.revisions] for d in documents]
    finally:
        event.remove(db_engine, "before_cursor_execute", count)
    assert len(statements) == STATEMENTS[db_engine.dialect.name], "\n".join(
        s[:90] for s in statements
    )

    with sessions() as session:
        envelope = get_envelope(session=session, envelope_id=envelope_id)
        assert [p.state for p in envelope.parties] == [PartyState.COMPLETED, PartyState.SENT]
        assert envelope.parties[0].fields[0].value == "令和7年10月1日"
        assert [[(r.seq, r.id, r.kind) for r in d.revisions] for d in envelope.documents] == (
            in_session
        )
        for doc in envelope.documents:
            assert doc.signature_count == 1
            assert [r.seq for r in doc.revisions] == list(range(1, len(doc.revisions) + 1))
            assert (doc.revisions[-1].kind, doc.revisions[-1].reason) == ("append", "signature")
            assert doc.size == doc.revisions[-1].size
        approve(
            session=session,
            runtime=dev_runtime,
            envelope_id=envelope_id,
            party_id=second,
            values={},
            auth_method="email+access_code",
        )
    with sessions() as session:
        envelope = get_envelope(session=session, envelope_id=envelope_id)
        assert envelope.state is EnvelopeState.COMPLETED
        for _, data in current_documents(runtime=dev_runtime, envelope=envelope):
            assert verify_pdf(data, trust_roots=dev_trust_roots).ok
        assert verify_chain(session=session).ok


def test_racing_approvals_apply_once(sessions: sessionmaker[Session], dev_runtime: Runtime) -> None:
    with sessions() as session:
        envelope_id, (first, _), field_id = _envelope(session, dev_runtime)
    barrier = threading.Barrier(3)
    outcomes: list[str] = []

    def submit() -> None:
        with sessions() as session:
            barrier.wait()
            try:
                approve(
                    session=session,
                    runtime=dev_runtime,
                    envelope_id=envelope_id,
                    party_id=first,
                    values={field_id: "令和7年10月1日"},
                    auth_method="email+access_code",
                )
                outcomes.append("ok")
            except StateError as exc:
                outcomes.append(exc.code)

    threads = [threading.Thread(target=submit) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(outcomes) == ["ok", "state.already_acted", "state.already_acted"]
    with sessions() as session:
        envelope = get_envelope(session=session, envelope_id=envelope_id)
        assert [p.state for p in envelope.parties] == [PartyState.COMPLETED, PartyState.SENT]
        for doc in envelope.documents:
            assert doc.signature_count == 1
            assert [r.reason for r in doc.revisions].count("signature") == 1
        actions = [e.action for e in list_events(session=session, envelope_id=envelope_id)]
        assert actions.count("party.approved") == 1 and actions.count("party.signed") == 1
        assert verify_chain(session=session).ok
