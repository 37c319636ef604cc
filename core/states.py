"""The envelope and party state machines.

Every state change goes through :func:`check_envelope_transition` or
:func:`check_party_transition`; an edge that is not in the tables below raises
:class:`~core.errors.StateError` with code ``state.illegal_transition``.

Envelope::

    draft ──send──▶ sent ──last party signed──▶ sealing ──LTV + document timestamp──▶ completed
      │              ├──decline──▶ declined
      │              ├──deadline──▶ expired
      └──cancel──────┴──cancel──▶ cancelled

Party (``approver`` and ``signer``; a ``cc`` party goes ``waiting → notified``)::

    waiting ──its turn──▶ sent ──opened──▶ viewed
                           │                 │
                           ├──approve────────┴──▶ signing ──signature applied──▶ completed
                           └──decline────────────▶ declined

``signing`` records that the party gave the instruction (who, when, from where, how
authenticated) while the signature itself is still to be applied; a TSA outage leaves the party
there and a retry finishes it, so an envelope is never half-signed.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping

from core.errors import StateError

__all__ = [
    "ACTIONABLE_PARTY_STATES",
    "ENVELOPE_TRANSITIONS",
    "PARTY_TRANSITIONS",
    "DeliveryState",
    "EnvelopeState",
    "PartyRole",
    "PartyState",
    "check_envelope_transition",
    "check_party_transition",
    "envelope_state_ja",
    "party_role_ja",
    "party_state_ja",
]


class EnvelopeState(enum.StrEnum):
    """Where one signing case stands."""

    DRAFT = "draft"
    SENT = "sent"
    SEALING = "sealing"
    COMPLETED = "completed"
    DECLINED = "declined"
    CANCELLED = "cancelled"
    EXPIRED = "expired"


class PartyState(enum.StrEnum):
    """Where one party of an envelope stands."""

    WAITING = "waiting"
    SENT = "sent"
    VIEWED = "viewed"
    SIGNING = "signing"
    COMPLETED = "completed"
    DECLINED = "declined"
    NOTIFIED = "notified"


class PartyRole(enum.StrEnum):
    """What a party does in the routing order."""

    APPROVER = "approver"  # internal pre-approval (内部決裁); signed like any approval
    SIGNER = "signer"
    CC = "cc"  # receives copies, never acts


ENVELOPE_TRANSITIONS: Mapping[EnvelopeState, frozenset[EnvelopeState]] = {
    EnvelopeState.DRAFT: frozenset({EnvelopeState.SENT, EnvelopeState.CANCELLED}),
    EnvelopeState.SENT: frozenset(
        {
            EnvelopeState.SEALING,
            EnvelopeState.DECLINED,
            EnvelopeState.CANCELLED,
            EnvelopeState.EXPIRED,
        }
    ),
    EnvelopeState.SEALING: frozenset({EnvelopeState.COMPLETED}),
    EnvelopeState.COMPLETED: frozenset(),
    EnvelopeState.DECLINED: frozenset(),
    EnvelopeState.CANCELLED: frozenset(),
    EnvelopeState.EXPIRED: frozenset(),
}

PARTY_TRANSITIONS: Mapping[PartyState, frozenset[PartyState]] = {
    PartyState.WAITING: frozenset({PartyState.SENT, PartyState.NOTIFIED}),
    PartyState.SENT: frozenset({PartyState.VIEWED, PartyState.SIGNING, PartyState.DECLINED}),
    PartyState.VIEWED: frozenset({PartyState.SIGNING, PartyState.DECLINED}),
    PartyState.SIGNING: frozenset({PartyState.COMPLETED}),
    PartyState.COMPLETED: frozenset(),
    PartyState.DECLINED: frozenset(),
    PartyState.NOTIFIED: frozenset(),
}

# States in which a party may still act (view, approve, decline).
ACTIONABLE_PARTY_STATES = frozenset({PartyState.SENT, PartyState.VIEWED})

_ENVELOPE_JA = {
    EnvelopeState.DRAFT: "下書き",
    EnvelopeState.SENT: "署名依頼中",
    EnvelopeState.SEALING: "締結処理中",
    EnvelopeState.COMPLETED: "締結済み",
    EnvelopeState.DECLINED: "却下",
    EnvelopeState.CANCELLED: "取消",
    EnvelopeState.EXPIRED: "期限切れ",
}

_PARTY_JA = {
    PartyState.WAITING: "順番待ち",
    PartyState.SENT: "依頼済み",
    PartyState.VIEWED: "閲覧済み",
    PartyState.SIGNING: "署名処理中",
    PartyState.COMPLETED: "完了",
    PartyState.DECLINED: "却下",
    PartyState.NOTIFIED: "通知済み",
}


def envelope_state_ja(state: EnvelopeState) -> str:
    """The Japanese label staff see for an envelope state."""
    return _ENVELOPE_JA[state]


_ROLE_JA = {
    PartyRole.APPROVER: "承認者",
    PartyRole.SIGNER: "署名者",
    PartyRole.CC: "CC（写し送付）",
}


def party_role_ja(role: PartyRole) -> str:
    """The Japanese label people see for a party's role."""
    return _ROLE_JA[role]


def party_state_ja(state: PartyState) -> str:
    """The Japanese label people see for a party state."""
    return _PARTY_JA[state]


def check_envelope_transition(current: EnvelopeState, target: EnvelopeState) -> None:
    """Raise ``state.illegal_transition`` unless the envelope may go from ``current`` to ``target``."""
    if target not in ENVELOPE_TRANSITIONS[current]:
        raise StateError(
            "state.illegal_transition",
            f"envelope cannot go from {current.value} to {target.value}",
            f"封筒の状態を「{_ENVELOPE_JA[current]}」から「{_ENVELOPE_JA[target]}」に"
            "変更することはできません。",
            details={"object": "envelope", "from": current.value, "to": target.value},
        )


def check_party_transition(current: PartyState, target: PartyState) -> None:
    """Raise ``state.illegal_transition`` unless the party may go from ``current`` to ``target``."""
    if target not in PARTY_TRANSITIONS[current]:
        raise StateError(
            "state.illegal_transition",
            f"party cannot go from {current.value} to {target.value}",
            f"署名者の状態を「{_PARTY_JA[current]}」から「{_PARTY_JA[target]}」に"
            "変更することはできません。",
            details={"object": "party", "from": current.value, "to": target.value},
        )


class DeliveryState(enum.StrEnum):
    """Where one outbox row stands."""

    PENDING = "pending"  # due at next_attempt_at
    LEASED = "leased"  # claimed by a worker until lease_expires_at
    DELIVERED = "delivered"
    DEAD = "dead"  # gave up: the bound was reached or the error is permanent
