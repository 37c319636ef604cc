"""Staff recovery on the envelope page (senders and admins who see the envelope): resend a
request, unlock a locked link, set a new access code, correct a party's name or e-mail, replace
a signer, remind now, extend the deadline. Each goes through :mod:`core.envelopes.recovery` (or
:func:`core.envelopes.links.resend_request`), which audits it and mails whom it affects."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Path, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import Response

from core.envelopes.links import resend_request
from core.envelopes.recovery import (
    change_access_code,
    extend_deadline,
    readdress_party,
    remind_party,
    unlock_party,
)
from core.errors import InputError, NotFoundError
from core.model import Party, Staff
from gateway.admin.pages import parse_date, sender_action
from gateway.deps import ClientIpDep, ContextDep, SessionDep
from gateway.pages.signing import check_csrf, form_text, read_form

router = APIRouter(prefix="/admin", include_in_schema=False)

RoutingOrder = Annotated[int, Path(ge=1, le=1000)]
ACTIONS = ("resend", "unlock", "remind", "access-code", "readdress")


def _party(envelope: Any, routing_order: int) -> Party:
    party: Party | None = next(
        (p for p in envelope.parties if p.routing_order == routing_order), None
    )
    if party is None:
        raise NotFoundError(
            "not_found.party", f"no party {routing_order}", "署名者が見つかりません。"
        )
    return party


@router.post("/envelopes/{envelope_id}/parties/{routing_order}/{action}")
async def party_action(
    request: Request,
    envelope_id: str,
    routing_order: RoutingOrder,
    action: str,
    context: ContextDep,
    session: SessionDep,
    ip: ClientIpDep,
) -> Response:
    """One recovery action on one party (see the module docstring)."""
    if action not in ACTIONS:
        raise NotFoundError("not_found.action", f"no action {action}", "操作が見つかりません。")
    form = await read_form(request, 20)
    check_csrf(request, context, form_text(form.get("csrf_token")))
    runtime = context.gateway.runtime
    values = {
        k: form_text(form.get(k)).strip() for k in ("name", "email", "code", "reason", "auth")
    }

    def act(staff: Staff, envelope: Any) -> object:
        party = _party(envelope, routing_order)
        common: dict[str, Any] = {
            "session": session,
            "runtime": runtime,
            "envelope_id": envelope.id,
            "party_id": party.id,
            "actor": staff.email,
        }
        if action == "resend":
            return resend_request(**common)
        if action == "unlock":
            return unlock_party(**common, ip=ip)
        if action == "remind":
            return remind_party(**common, ip=ip)
        policy = context.policy
        code = values["code"]
        if action == "access-code":
            code_hash = policy.hash(policy.check_format(code))
            return change_access_code(**common, code_hash=code_hash, ip=ip)
        replace = form.get("replace") == "1"
        staff_bound = {"staff": True, "code": False}.get(values["auth"])
        return readdress_party(
            **common,
            name=values["name"],
            email=values["email"],
            staff=staff_bound,
            code_hash=policy.hash(policy.check_format(code)) if code else None,
            replace=replace,
            reason=values["reason"],
            ip=ip,
        )

    return await run_in_threadpool(sender_action, request, context, session, envelope_id, act)


@router.post("/envelopes/{envelope_id}/deadline")
async def deadline(
    request: Request, envelope_id: str, context: ContextDep, session: SessionDep, ip: ClientIpDep
) -> Response:
    """A later signing deadline (締切日)."""
    form = await read_form(request, 10)
    check_csrf(request, context, form_text(form.get("csrf_token")))
    try:
        day = parse_date(form_text(form.get("deadline")))
    except ValueError:
        day = None
    if day is None:
        raise InputError(
            "envelope.bad_deadline", "a date YYYY-MM-DD is needed", "締切日を入力してください。"
        )

    def act(staff: Staff, envelope: Any) -> object:
        return extend_deadline(session=session, runtime=context.gateway.runtime,
                               envelope_id=envelope.id, deadline=day, actor=staff.email,
                               ip=ip)  # fmt: skip

    return await run_in_threadpool(sender_action, request, context, session, envelope_id, act)
