"""Codes staff would otherwise read in English: audit actions, staff roles and scopes, party
roles each have a Japanese label."""

from __future__ import annotations

import re
from pathlib import Path

from core.envelopes.labels import action_ja
from core.model import VisibilityScope
from core.staff.accounts import roles_ja, scope_ja
from core.states import PartyRole, party_role_ja

ROOT = Path(__file__).resolve().parents[3]
# An audit action written where it is recorded: action="party.locked", or a variable assigned
# a literal next to it (core.staff.accounts's login outcomes).
_RECORDED = re.compile(
    r'action="([a-z_]+(?:\.[a-z_]+)*)"|action = "([a-z_]+\.[a-z_.]+)"|, "(login\.[a-z_]+)"'
)


def _recorded_actions() -> set[str]:
    found: set[str] = set()
    for package in ("core", "gateway", "schedules"):
        for path in (ROOT / package).rglob("*.py"):
            for match in _RECORDED.finditer(path.read_text(encoding="utf-8")):
                found.add(next(g for g in match.groups() if g))
    return found


def test_every_recorded_audit_action_has_a_japanese_label() -> None:
    actions = _recorded_actions()
    assert {"party.locked", "login.failed", "login.totp_reused", "envelope.amends"} <= actions
    missing = sorted(a for a in actions if action_ja(a) == a)
    assert missing == []
    assert action_ja("no.such_action") == "no.such_action"  # shown, never hidden


def test_roles_and_scopes_read_in_japanese() -> None:
    assert roles_ja("admin,sender") == "送信者・管理者"
    assert roles_ja("signer; sender") == "送信者・署名者"
    assert roles_ja("sender,auditor") == "送信者・auditor"  # unknown stays visible
    assert [scope_ja(s) for s in VisibilityScope] == ["本人", "所属", "全体"]
    assert scope_ja("department") == "所属"
    assert [party_role_ja(r) for r in PartyRole] == ["承認者", "署名者", "CC（写し送付）"]
