"""Every edge of the state machines: allowed ones pass, every other one raises StateError."""

from __future__ import annotations

import itertools

import pytest

from core.errors import StateError
from core.states import (
    ENVELOPE_TRANSITIONS,
    PARTY_TRANSITIONS,
    EnvelopeState,
    PartyState,
    check_envelope_transition,
    check_party_transition,
    envelope_state_ja,
    party_state_ja,
)

ALLOWED_ENVELOPE = {
    (EnvelopeState.DRAFT, EnvelopeState.SENT),
    (EnvelopeState.DRAFT, EnvelopeState.CANCELLED),
    (EnvelopeState.SENT, EnvelopeState.SEALING),
    (EnvelopeState.SENT, EnvelopeState.DECLINED),
    (EnvelopeState.SENT, EnvelopeState.CANCELLED),
    (EnvelopeState.SENT, EnvelopeState.EXPIRED),
    (EnvelopeState.SEALING, EnvelopeState.COMPLETED),
}

ALLOWED_PARTY = {
    (PartyState.WAITING, PartyState.SENT),
    (PartyState.WAITING, PartyState.NOTIFIED),
    (PartyState.SENT, PartyState.VIEWED),
    (PartyState.SENT, PartyState.SIGNING),
    (PartyState.SENT, PartyState.DECLINED),
    (PartyState.VIEWED, PartyState.SIGNING),
    (PartyState.VIEWED, PartyState.DECLINED),
    (PartyState.SIGNING, PartyState.COMPLETED),
}


def test_tables_are_exactly_the_documented_edges() -> None:
    assert {(a, b) for a, bs in ENVELOPE_TRANSITIONS.items() for b in bs} == ALLOWED_ENVELOPE
    assert {(a, b) for a, bs in PARTY_TRANSITIONS.items() for b in bs} == ALLOWED_PARTY


@pytest.mark.parametrize("edge", sorted(itertools.product(EnvelopeState, repeat=2)))
def test_envelope_edges(edge: tuple[EnvelopeState, EnvelopeState]) -> None:
    current, target = edge
    if edge in ALLOWED_ENVELOPE:
        check_envelope_transition(current, target)
        return
    with pytest.raises(StateError) as info:
        check_envelope_transition(current, target)
    assert info.value.code == "state.illegal_transition"
    assert info.value.details == {"object": "envelope", "from": current.value, "to": target.value}
    assert envelope_state_ja(current) in info.value.message_ja


@pytest.mark.parametrize("edge", sorted(itertools.product(PartyState, repeat=2)))
def test_party_edges(edge: tuple[PartyState, PartyState]) -> None:
    current, target = edge
    if edge in ALLOWED_PARTY:
        check_party_transition(current, target)
        return
    with pytest.raises(StateError) as info:
        check_party_transition(current, target)
    assert info.value.code == "state.illegal_transition"
    assert party_state_ja(target) in info.value.message_ja


def test_terminal_states_have_no_way_out() -> None:
    for state in (
        EnvelopeState.COMPLETED,
        EnvelopeState.DECLINED,
        EnvelopeState.CANCELLED,
        EnvelopeState.EXPIRED,
    ):
        assert not ENVELOPE_TRANSITIONS[state]
