"""The envelope's life after creation: get, send, hand over to the next party,
decline, cancel, expire. State changes go through :mod:`core.states`; each change
and its audit events commit in one transaction.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.orm import Session, joinedload, selectinload
from sqlalchemy.orm.attributes import set_committed_value

from core.envelopes.certificate_facts import operation_via
from core.envelopes.creation import check_authentication_means
from core.errors import InputError, NotFoundError, StateError
from core.intake.consent import require_consent
from core.model import Document, Envelope, Party, utcnow
from core.records.audit import record_event
from core.records.facts import require_amount
from core.runtime import Runtime
from core.signing.tasks import enqueue_seal
from core.states import (
    ACTIONABLE_PARTY_STATES,
    EnvelopeState,
    PartyRole,
    PartyState,
    check_envelope_transition,
    check_party_transition,
    envelope_state_ja,
)
from core.text import multi_line

__all__ = [
    "advance_routing",
    "cancel_envelope",
    "check_party_can_act",
    "compare_and_set",
    "decline",
    "expire_envelope",
    "get_envelope",
    "get_party",
    "require_current",
    "send_envelope",
    "set_party_state",
]


def _envelope_graph(*, joined_revisions: bool) -> tuple[Any, ...]:
    # One envelope's parties, fields, documents and revisions: the envelope joined with its
    # parties and their fields, then its documents (each SELECT a round trip to PostgreSQL,
    # paid on every approval). Joins go one way each, so no SELECT's rows grow with the
    # product of parties and revisions. The revisions are joined onto the documents only when
    # the session's transaction is new: a joined load refreshing revisions flushed earlier in
    # the same transaction left them expired rather than expunged after a rollback (the
    # compose page's failed send then could not discard their blobs), so then they are read
    # by a SELECT of their own.
    documents = selectinload(Envelope.documents)
    return (
        joinedload(Envelope.parties).joinedload(Party.fields),
        documents.joinedload(Document.revisions)
        if joined_revisions
        else documents.selectinload(Document.revisions),
    )


def get_envelope(*, session: Session, envelope_id: str) -> Envelope:
    """One envelope by id, freshly read with its documents and parties, or ``not_found.envelope``."""
    envelope = (
        session.execute(
            select(Envelope)
            .where(Envelope.id == envelope_id)
            .options(*_envelope_graph(joined_revisions=not session.in_transaction()))
            .execution_options(populate_existing=True)
        )
        .unique()
        .scalar_one_or_none()
    )
    if envelope is None:
        raise NotFoundError(
            "not_found.envelope", f"no envelope {envelope_id}", "指定された封筒が見つかりません。"
        )
    return envelope


def get_party(*, session: Session, envelope_id: str, party_id: str) -> Party:
    """One party of one envelope, read through its envelope (never by party id alone)."""
    envelope = get_envelope(session=session, envelope_id=envelope_id)
    for party in envelope.parties:
        if party.id == party_id:
            # Tie the party to this envelope object: the identity map holds objects weakly, so
            # otherwise the envelope (and the documents loaded with it) would be dropped and
            # lazily read again on first use.
            set_committed_value(party, "envelope", envelope)
            return party
    raise NotFoundError(
        "not_found.party", f"no party {party_id} in {envelope_id}", "署名者が見つかりません。"
    )


def _set_envelope_state(envelope: Envelope, target: EnvelopeState, now: dt.datetime) -> None:
    check_envelope_transition(envelope.state, target)
    envelope.state = target
    envelope.updated_at = now


def set_party_state(party: Party, target: PartyState) -> None:
    """Move a party to ``target``, refusing a transition the state machine does not allow."""
    check_party_transition(party.state, target)
    party.state = target


def advance_routing(
    session: Session, runtime: Runtime, envelope: Envelope, now: dt.datetime
) -> Party | None:
    """Hand the envelope to the next party; move it to ``sealing`` when nobody is left.

    Returns the party now asked to act, or None.
    """
    for party in envelope.parties:
        if party.state is not PartyState.WAITING:
            continue
        if party.role is PartyRole.CC:
            # A copy recipient never acts: it is told when its turn comes and routing goes on.
            set_party_state(party, PartyState.NOTIFIED)
            party.sent_at = now
            record_event(
                session=session,
                action="party.notified",
                actor="system",
                envelope_id=envelope.id,
                party_id=party.id,
                at=now,
            )
            runtime.notify(session, envelope, "party.notified", party)
            continue
        set_party_state(party, PartyState.SENT)
        party.sent_at = now
        record_event(
            session=session,
            action="party.requested",
            actor="system",
            envelope_id=envelope.id,
            party_id=party.id,
            at=now,
            detail={"routing_order": party.routing_order, "role": party.role.value},
        )
        runtime.notify(session, envelope, "party.requested", party)
        return party
    if all(p.state in (PartyState.COMPLETED, PartyState.NOTIFIED) for p in envelope.parties):
        _set_envelope_state(envelope, EnvelopeState.SEALING, now)
        enqueue_seal(session=session, envelope=envelope)
    return None


def send_envelope(
    *,
    session: Session,
    runtime: Runtime,
    envelope_id: str,
    actor: str,
    ip: str | None = None,
    via: Mapping[str, str | None] | None = None,
) -> Party:
    """Send a draft: the first acting party is asked to act. Returns that party. A construction
    contract whose consent was withdrawn meanwhile is not sent (``consent.withdrawn``), nor an
    envelope without its amount (``envelope.amount_required``, :func:`core.records.facts.require_amount`).
    ``via`` as for :func:`create_envelope`."""
    envelope = get_envelope(session=session, envelope_id=envelope_id)
    require_consent(
        session=session, contract_type=envelope.contract_type, consent_id=envelope.consent_id
    )
    check_envelope_transition(envelope.state, EnvelopeState.SENT)
    require_amount(envelope)
    check_authentication_means(session=session, envelope=envelope)
    now = utcnow()
    _set_envelope_state(envelope, EnvelopeState.SENT, now)
    envelope.sent_at = now
    record_event(
        session=session,
        action="envelope.sent",
        actor=actor,
        envelope_id=envelope.id,
        ip=ip,
        at=now,
        detail={"via": dict(via or operation_via(session=session, actor=actor))},
    )
    first = advance_routing(session, runtime, envelope, now)
    assert first is not None  # create_envelope guarantees an acting party
    session.flush()
    return first


def require_current(party: Party) -> None:
    """Refuse unless the envelope is sent and it is this party's turn to act."""
    envelope = party.envelope
    if envelope.state is not EnvelopeState.SENT:
        raise StateError(
            "state.envelope_not_open",
            f"the envelope is {envelope.state.value}; parties act only while it is sent",
            f"この封筒は「{envelope_state_ja(envelope.state)}」のため、操作できません。",
            details={"state": envelope.state.value},
        )
    if party.state is PartyState.WAITING:
        raise StateError(
            "state.not_your_turn",
            f"party {party.routing_order} cannot act before the parties ahead of it",
            "まだ順番が回ってきていません。前の署名者の手続き完了後に操作してください。",
            details={"routing_order": party.routing_order},
        )
    if party.state not in ACTIONABLE_PARTY_STATES:
        raise StateError(
            "state.already_acted",
            f"party {party.routing_order} has already acted ({party.state.value})",
            "この署名依頼は既に処理されています。",
            details={"state": party.state.value},
        )


def check_party_can_act(party: Party) -> None:
    """Raise a ``state.*`` error unless ``party`` is the one whose turn it is and has not acted."""
    require_current(party)


def compare_and_set(
    session: Session,
    model: type[Party] | type[Envelope],
    row_id: str,
    expected: frozenset[str],
    values: dict[str, Any],
    error: StateError,
) -> None:
    """Change one row only if it is still in an ``expected`` state, else roll back and raise.

    This is the once-only guard: of two concurrent attempts, one changes the row and the other
    sees no row changed.
    """
    result = session.execute(
        update(model)
        .where(model.id == row_id, model.state.in_(sorted(expected)))
        .values(**values)
        .execution_options(synchronize_session=False)
    )
    if result.rowcount != 1:  # type: ignore[attr-defined]
        session.rollback()
        raise error


def decline(
    *,
    session: Session,
    runtime: Runtime,
    envelope_id: str,
    party_id: str,
    reason: str,
    ip: str | None = None,
) -> Envelope:
    """The current party declines with a reason; the envelope ends as ``declined``."""
    party = get_party(session=session, envelope_id=envelope_id, party_id=party_id)
    require_current(party)
    reason = multi_line(reason, field="reason", label_ja="却下理由")
    if not reason:
        raise InputError(
            "envelope.decline_reason_required",
            "a decline needs a reason",
            "却下する理由を入力してください。",
        )
    now = utcnow()
    set_party_state(party, PartyState.DECLINED)
    party.decline_reason = reason
    _set_envelope_state(party.envelope, EnvelopeState.DECLINED, now)
    record_event(
        session=session,
        action="party.declined",
        actor=party.email,
        envelope_id=envelope_id,
        party_id=party.id,
        ip=ip,
        at=now,
        detail={"reason": reason},
    )
    runtime.notify(session, party.envelope, "envelope.declined", party)
    session.flush()
    return party.envelope


def cancel_envelope(
    *,
    session: Session,
    runtime: Runtime,
    envelope_id: str,
    actor: str,
    reason: str = "",
    ip: str | None = None,
) -> Envelope:
    """Cancel an envelope before completion (draft or sent), with a reason the parties
    already asked are told (``envelope.cancel_reason_required`` without one)."""
    reason = multi_line(reason, field="reason", label_ja="取消理由")
    envelope = get_envelope(session=session, envelope_id=envelope_id)
    check_envelope_transition(envelope.state, EnvelopeState.CANCELLED)
    if not reason.strip():
        raise InputError(
            "envelope.cancel_reason_required",
            "a cancel needs a reason",
            "取り消す理由を入力してください。",
        )
    now = utcnow()
    _set_envelope_state(envelope, EnvelopeState.CANCELLED, now)
    record_event(
        session=session,
        action="envelope.cancelled",
        actor=actor,
        envelope_id=envelope_id,
        ip=ip,
        at=now,
        detail={"reason": reason},
    )
    runtime.notify(session, envelope, "envelope.cancelled")
    session.flush()
    return envelope


def expire_envelope(*, session: Session, runtime: Runtime, envelope_id: str) -> Envelope:
    """The deadline passed before every party acted."""
    envelope = get_envelope(session=session, envelope_id=envelope_id)
    now = utcnow()
    _set_envelope_state(envelope, EnvelopeState.EXPIRED, now)
    record_event(
        session=session,
        action="envelope.expired",
        actor="system",
        envelope_id=envelope_id,
        at=now,
    )
    runtime.notify(session, envelope, "envelope.expired")
    session.flush()
    return envelope
