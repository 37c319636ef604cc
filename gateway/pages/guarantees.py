"""The contractor's electronic guarantees (電子保証) on the signing pages: the signer of a
contractor enters the guarantee contract number (保証契約番号) and the authentication key
(認証キー), or uploads the issuer's notice PDF, before signing, after it, or both, as the buyer
configures (``pages.guarantee_entry``). Seed 003: the contractor registers them in the
e-contract system. The key is never shown back (only its last two characters)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from sqlalchemy.orm import Session
from starlette.datastructures import UploadFile

from core.envelopes.guarantees import (
    KIND_JA,
    MAX_NOTICE_BYTES,
    GuaranteeInput,
    add_guarantee,
    import_notice,
    list_guarantees,
    masked_key,
)
from core.errors import GatewayError, InputError
from core.model import GuaranteeKind, Party
from core.states import EnvelopeState, PartyState
from gateway.context import AppContext
from gateway.deps import ContextDep
from gateway.pages.signing import Token, check_csrf, render_page, require_session

router = APIRouter(include_in_schema=False)

_DONE = (PartyState.COMPLETED, PartyState.SIGNING)
_AFTER_STATES = (EnvelopeState.SENT, EnvelopeState.SEALING, EnvelopeState.COMPLETED)


def entry_open(party: Party, mode: str) -> bool:
    """Whether this party may enter guarantees now under ``mode`` (off, before, after, both)."""
    state = party.envelope.state
    before = (
        state is EnvelopeState.SENT
        and party.state not in _DONE
        and party.state is not PartyState.DECLINED
    )
    after = party.state in _DONE and state in _AFTER_STATES
    return (mode in ("before", "both") and before) or (mode in ("after", "both") and after)


def install(context: AppContext) -> None:
    """Offer ``guarantee_entry(party)`` to the page templates (the link on the documents and
    done pages), so the signing module itself needs no change."""
    mode = context.gateway.settings.pages.guarantee_entry

    def guarantee_entry(party: Party) -> bool:
        return entry_open(party, mode)

    context.templates.globals["guarantee_entry"] = guarantee_entry


def _base(token: str) -> str:
    return f"/sign/{token}"


def _page(
    request: Request,
    context: AppContext,
    session: Session,
    token: str,
    party: Party,
    *,
    error: str | None = None,
    saved: bool = False,
    status: int = 200,
) -> HTMLResponse:
    envelope = party.envelope
    rows = list_guarantees(session=session, envelope_id=envelope.id)
    return render_page(
        request,
        context,
        "pages/guarantees.html",
        status=status,
        base=_base(token),
        envelope=envelope,
        party=party,
        guarantees=[{"kind_ja": KIND_JA[r.kind], "row": r, "key": masked_key(r)} for r in rows],
        kinds=[(k.value, KIND_JA[k]) for k in GuaranteeKind],
        open=entry_open(party, context.gateway.settings.pages.guarantee_entry),
        error=error,
        saved=saved,
    )


def _closed() -> InputError:
    return InputError(
        "guarantee.entry_closed",
        "guarantees cannot be entered on the signing pages at this point",
        "現在、この画面から電子保証を登録することはできません。契約担当課へお問い合わせください。",
    )


@router.get("/sign/{token}/guarantees", response_class=HTMLResponse)
def guarantees_page(token: Token, request: Request, context: ContextDep) -> Response:
    """What the contractor has registered, and the form to add one."""
    with context.gateway.sessions() as session:
        checked = require_session(request, context, session, token)
        if isinstance(checked, RedirectResponse):
            return checked
        _link, party = checked
        saved = request.query_params.get("saved") == "1"
        return _page(request, context, session, token, party, saved=saved)


async def _add(request: Request, context: AppContext, token: str, act: Any) -> Response:
    form = await request.form(max_files=1, max_fields=10)
    check_csrf(request, context, str(form.get("csrf_token") or ""))

    def run() -> Response:
        with context.gateway.sessions() as session:
            checked = require_session(request, context, session, token)
            if isinstance(checked, RedirectResponse):
                return checked
            _link, party = checked
            try:
                if not entry_open(party, context.gateway.settings.pages.guarantee_entry):
                    raise _closed()
                act(session, party, form)
                session.commit()
            except GatewayError as exc:
                session.rollback()
                return _page(
                    request, context, session, token, party, error=exc.message_ja, status=422
                )
        return RedirectResponse(f"{_base(token)}/guarantees?saved=1", status_code=303)

    return await run_in_threadpool(run)


def _actor(party: Party) -> str:
    return f"{party.name} <{party.email}>"


@router.post("/sign/{token}/guarantees")
async def add(token: Token, request: Request, context: ContextDep) -> Response:
    """Register one reference typed in by the contractor."""

    def act(session: Session, party: Party, form: Any) -> None:
        add_guarantee(
            session=session,
            runtime=context.gateway.runtime,
            envelope_id=party.envelope_id,
            reference=GuaranteeInput(
                kind=str(form.get("kind") or ""),
                contract_number=str(form.get("contract_number") or ""),
                authentication_key=str(form.get("authentication_key") or ""),
                issuer=str(form.get("issuer") or ""),
            ),
            actor=_actor(party),
            source="signing_page",
        )

    return await _add(request, context, token, act)


@router.post("/sign/{token}/guarantees/notice")
async def add_notice(token: Token, request: Request, context: ContextDep) -> Response:
    """Register the reference printed on the issuer's notice PDF."""

    def act(session: Session, party: Party, form: Any) -> None:
        upload = form.get("notice")
        data = upload.file.read(MAX_NOTICE_BYTES + 1) if isinstance(upload, UploadFile) else b""
        import_notice(
            session=session,
            runtime=context.gateway.runtime,
            envelope_id=party.envelope_id,
            data=data,
            actor=_actor(party),
        )

    return await _add(request, context, token, act)
