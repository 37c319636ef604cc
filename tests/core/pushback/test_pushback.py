"""Push-back in core: deliveries written with the state change; content assembled at push time."""

from __future__ import annotations

import datetime as dt
from dataclasses import replace
from decimal import Decimal

import pytest
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from core.envelopes.approvals import approve
from core.envelopes.creation import DocumentInput, PartyInput, create_envelope
from core.envelopes.documents import current_documents
from core.envelopes.guarantees import GuaranteeInput, add_guarantee
from core.envelopes.lifecycle import cancel_envelope, send_envelope
from core.model import Delivery
from core.pushback.deliveries import (
    PushbackObserver,
    Subscription,
    assemble_content,
    delivery_key,
    preload_content,
)
from core.pushback.outbox import list_deliveries
from core.runtime import Runtime
from core.signing.tasks import SIGNING_TARGET
from core.states import DeliveryState, EnvelopeState, PartyRole
from core.timezone import JST
from tests.fixtures.envelopes import give_access_codes
from tests.fixtures.pdfs import make_pdf


class _Boom:
    """An observer after the push-back one that aborts the transaction."""

    def envelope_event(self, **_: object) -> None:
        raise RuntimeError("abort")


def _runtime(dev_runtime: Runtime) -> Runtime:
    observer = PushbackObserver(
        [
            Subscription("documents"),
            Subscription("finance", frozenset({"completed", "cancelled"})),
        ]
    )
    return replace(dev_runtime, observers=(observer,))


def _create(session: Session, runtime: Runtime) -> str:
    envelope = create_envelope(
        session=session,
        runtime=runtime,
        title="〇〇道路改良工事",
        creator="開発市 契約課",
        documents=[DocumentInput("工事請負契約書.pdf", make_pdf(pages=1))],
        parties=[PartyInput(PartyRole.SIGNER, "署名者", "s@example.jp", "株式会社髙橋建設")],
        counterparty="株式会社髙橋建設",
        amount=Decimal("31389000"),
        transaction_date=dt.date(2026, 4, 1),
    )
    give_access_codes(session, envelope)
    session.commit()
    return envelope.id


def test_completion_enqueues_one_delivery_per_subscribed_sink(
    session: Session, dev_runtime: Runtime
) -> None:
    runtime = _runtime(dev_runtime)
    envelope_id = _create(session, runtime)
    party = send_envelope(session=session, runtime=runtime, envelope_id=envelope_id, actor="staff")
    session.commit()
    assert list_deliveries(session=session) == []  # nothing for party.requested
    approve(
        session=session,
        runtime=runtime,
        envelope_id=envelope_id,
        party_id=party.id,
        values={},
        auth_method="email+access_code",
    )
    # the signature was applied inline in the approval's transaction (no task); the seal's
    # task is done
    signing = [d for d in list_deliveries(session=session) if d.target == SIGNING_TARGET]
    assert sorted(d.idempotency_key for d in signing) == [f"seal:{envelope_id}"]
    assert all(d.state is DeliveryState.DELIVERED for d in signing)
    rows = sorted(
        (d for d in list_deliveries(session=session) if d.target != SIGNING_TARGET),
        key=lambda d: d.target,
    )
    assert [(d.target, d.idempotency_key) for d in rows] == [
        ("documents", f"documents:{envelope_id}:completed"),
        ("finance", f"finance:{envelope_id}:completed"),
    ]
    assert all(d.state is DeliveryState.PENDING and d.envelope_id == envelope_id for d in rows)
    # The same event told again (a re-run of the step) adds nothing.
    envelope = rows[0].envelope
    assert envelope is not None
    runtime.notify(session, envelope, "envelope.completed")
    session.commit()
    assert (
        session.scalar(
            select(func.count()).select_from(Delivery).where(Delivery.target != SIGNING_TARGET)
        )
        == 2
    )

    add_guarantee(
        session=session,
        runtime=runtime,
        envelope_id=envelope_id,
        reference=GuaranteeInput(
            "前払金保証", "2070004426", "Q7xK2mP9aZ", "西日本建設業保証株式会社"
        ),
        actor="staff",
    )
    session.commit()
    content = assemble_content(
        session=session,
        runtime=runtime,
        envelope_id=envelope_id,
        event="completed",
        department="契約課",
    )
    facts = content.facts
    assert facts["management_number"] == envelope.management_number
    assert facts["contractor_name"] == "株式会社髙橋建設"
    assert facts["amount"] == Decimal("31389000")
    assert facts["concluded_at"].utcoffset() == dt.timedelta(hours=9)  # JST
    assert facts["concluded_on"] == envelope.completed_at.astimezone(JST).date()  # type: ignore[union-attr]
    assert facts["department"] == "契約課"
    (guarantee,) = content.guarantees
    assert guarantee.kind_ja == "前払金保証" and guarantee.authentication_key == "Q7xK2mP9aZ"
    assert "Q7xK2mP9aZ" not in repr(content)
    assert [d.data for d in content.documents] == [
        data for _, data in current_documents(runtime=runtime, envelope=envelope)
    ]
    assert content.certificate is not None and content.certificate[:5] == b"%PDF-"
    # A dispatcher reads a batch's rows at once: the very same content.
    rows = preload_content(session=session, envelope_ids=[envelope_id, "no-such-envelope"])
    assert set(rows.envelopes) == {envelope_id}
    preloaded = assemble_content(
        session=session,
        runtime=runtime,
        envelope_id=envelope_id,
        event="completed",
        department="契約課",
        rows=rows,
    )
    assert preloaded == content
    without = assemble_content(
        session=session,
        runtime=runtime,
        envelope_id=envelope_id,
        event="completed",
        documents=False,
        certificate=False,
        guarantee_keys=False,
    )
    assert without.documents == () and without.certificate is None
    assert without.guarantees[0].authentication_key == ""


def test_deliveries_roll_back_with_the_state_change(session: Session, dev_runtime: Runtime) -> None:
    runtime = _runtime(dev_runtime)
    envelope_id = _create(session, runtime)
    aborting = replace(runtime, observers=(*runtime.observers, _Boom()))
    with pytest.raises(RuntimeError):
        cancel_envelope(
            session=session,
            runtime=aborting,
            envelope_id=envelope_id,
            actor="staff",
            reason="金額誤り",
        )
    session.rollback()
    assert list_deliveries(session=session) == []
    cancel_envelope(
        session=session, runtime=runtime, envelope_id=envelope_id, actor="staff", reason="金額誤り"
    )
    session.commit()
    (delivery,) = list_deliveries(session=session)  # only finance asked for cancellations
    assert delivery.idempotency_key == delivery_key("finance", envelope_id, "cancelled")
    content = assemble_content(
        session=session, runtime=runtime, envelope_id=envelope_id, event="cancelled"
    )
    assert content.facts["state"] == EnvelopeState.CANCELLED.value
    assert content.documents == () and content.certificate is None  # nothing concluded


def test_unknown_events_are_refused_at_start() -> None:
    with pytest.raises(ValueError, match="expired"):
        PushbackObserver([Subscription("x", frozenset({"expired"}))])
