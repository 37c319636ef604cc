"""Who may see which envelope: the one place where roles and visibility scopes are enforced.

Every listing, search, download and certificate of the staff pages goes through
:func:`visible_envelopes` or :func:`get_visible_envelope`. An envelope outside the caller's scope
is reported exactly like one that does not exist (``not_found.envelope``), so its existence never
leaks.

Scopes: ``all`` (and every admin) sees everything; ``department`` sees its department's
envelopes; ``own`` sees the envelopes it created. Everyone also sees the envelopes in which they
are a party (a signer on the buyer's side must open what they sign). A disabled staff member sees
nothing.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence

from sqlalchemy import ColumnElement, Select, false, or_, select, true
from sqlalchemy.orm import Session

from core.errors import AuthError, NotFoundError, StaffError
from core.model import ApiClient, Envelope, Party, Staff, StaffRole, VisibilityScope
from core.records.audit import record_event

__all__ = [
    "check_client_network",
    "chooses_department",
    "department_for_new_envelope",
    "get_visible_envelope",
    "has_role",
    "require_role",
    "roles_of",
    "scope_clause",
    "scope_for",
    "set_client_networks",
    "visible_envelopes",
]


def roles_of(staff: Staff) -> frozenset[StaffRole]:
    """The roles a staff member holds (unknown names in the stored list are ignored)."""
    known = {r.value for r in StaffRole}
    return frozenset(StaffRole(r) for r in staff.roles.split(",") if r in known)


def has_role(staff: Staff, role: StaffRole) -> bool:
    """True when the (enabled) staff member holds ``role``; admins hold every role."""
    if staff.disabled:
        return False
    held = roles_of(staff)
    return role in held or StaffRole.ADMIN in held


def require_role(staff: Staff, role: StaffRole) -> None:
    """Refuse an operation the staff member's roles do not allow."""
    if not has_role(staff, role):
        raise StaffError(
            "staff.role_required",
            f"this operation needs the {role.value} role",
            "この操作を行う権限がありません。",
            details={"role": role.value},
        )


def chooses_department(staff: Staff) -> bool:
    """True when ``staff`` may file a new envelope under any department: admins and staff who
    see everything. Anyone else files under their own, or they would file envelopes where the
    colleagues of their scope cannot see them."""
    return has_role(staff, StaffRole.ADMIN) or (
        staff.scope is VisibilityScope.ALL and not staff.disabled
    )


def department_for_new_envelope(staff: Staff, requested: str | None) -> str | None:
    """The department an envelope created by ``staff`` is filed under: their own unless they
    ask for another and :func:`chooses_department` allows it (else ``staff.department_scope``)."""
    wanted = (requested or "").strip() or None
    if wanted is None or wanted == staff.department:
        return staff.department
    if chooses_department(staff):
        return wanted
    raise StaffError(
        "staff.department_scope",
        f"{staff.email} may only create envelopes for their own department",
        "所属以外の部署の契約は作成できません。",
        details={"department": wanted},
    )


_INLINE_PARTY_IDS = 500


def scope_clause(
    staff: Staff, *, party_envelope_ids: Sequence[str] | None = None
) -> ColumnElement[bool]:
    """The WHERE condition on :class:`Envelope` that a staff member's scope allows.

    ``party_envelope_ids`` (from :func:`scope_for`) replaces the "as a party" subquery by a
    literal list, or drops it when empty, so the planner can walk the department index in order.
    """
    if staff.disabled:
        return false()
    if staff.scope is VisibilityScope.ALL or StaffRole.ADMIN in roles_of(staff):
        return true()
    as_party: ColumnElement[bool]
    if party_envelope_ids is None:
        # An uncorrelated IN over the parties.email index: one probe, not one per envelope.
        as_party = Envelope.id.in_(select(Party.envelope_id).where(Party.email == staff.email))
    elif party_envelope_ids:
        as_party = Envelope.id.in_(list(party_envelope_ids))
    else:
        as_party = false()
    if staff.scope is VisibilityScope.DEPARTMENT and staff.department:
        return or_(Envelope.department == staff.department, as_party)
    return or_(Envelope.creator_email == staff.email, as_party)


def scope_for(*, session: Session, staff: Staff) -> ColumnElement[bool]:
    """:func:`scope_clause` with the staff member's own party envelopes looked up first (most
    staff are party to none or few, and a plain condition lets the indexes work)."""
    if staff.disabled or staff.scope is VisibilityScope.ALL or has_role(staff, StaffRole.ADMIN):
        return scope_clause(staff)
    ids = session.scalars(
        select(Party.envelope_id).where(Party.email == staff.email).limit(_INLINE_PARTY_IDS + 1)
    ).all()
    if len(ids) > _INLINE_PARTY_IDS:
        return scope_clause(staff)
    return scope_clause(staff, party_envelope_ids=sorted(set(ids)))


def visible_envelopes(staff: Staff) -> Select[Envelope]:
    """``SELECT`` of the envelopes a staff member may see; add filters and order to it."""
    return select(Envelope).where(scope_clause(staff))


def get_visible_envelope(*, session: Session, staff: Staff, envelope_id: str) -> Envelope:
    """One envelope through the caller's scope; out of scope and missing are the same error."""
    envelope = session.scalars(
        select(Envelope).where(Envelope.id == envelope_id, scope_for(session=session, staff=staff))
    ).one_or_none()
    if envelope is None:
        raise NotFoundError(
            "not_found.envelope",
            "no such envelope",
            "該当する契約が見つかりません。",
        )
    return envelope


def check_client_network(client: ApiClient, ip: str | None) -> None:
    """Refuse an API client calling from outside its own allow-list (none set: any address)."""
    if not client.allowed_networks:
        return
    try:
        address = ipaddress.ip_address(ip or "")
    except ValueError:
        address = None
    networks = [ipaddress.ip_network(n, strict=False) for n in client.allowed_networks]
    if address is None or not any(address in n for n in networks):
        raise AuthError(
            "auth.ip_refused",
            "this API client may not call from this address",
            "この連携先は、このネットワークからは利用できません。",
        )


def set_client_networks(*, session: Session, client: ApiClient, networks: Sequence[str]) -> None:
    """Limit an API client to ``networks`` (CIDR); an empty list lifts the limit."""
    try:
        cleaned = [str(ipaddress.ip_network(n.strip(), strict=False)) for n in networks]
    except ValueError as exc:
        raise StaffError(
            "staff.bad_network", f"not a network: {exc}", "ネットワークの指定が正しくありません。"
        ) from exc
    client.allowed_networks = cleaned or None
    record_event(
        session=session,
        action="api_client.networks",
        actor="cli",
        detail={"client": client.name, "networks": cleaned},
    )
