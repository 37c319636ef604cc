"""The guarantee references (電子保証) of one envelope on the staff pages: see them (keys
masked), add one by hand or from the issuer's notice PDF, record that the certificate was
confirmed at the issuer, remove a mistaken one with a reason. Senders and admins change them;
anyone who may see the envelope sees them. A change after completion reaches the finance sinks
as an update (:mod:`core.pushback.deliveries`)."""

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
    remove_guarantee,
    verify_guarantee,
)
from core.errors import GatewayError
from core.model import Envelope, GuaranteeKind, Staff, StaffRole
from core.staff.access import has_role, require_role
from core.states import envelope_state_ja
from gateway.admin.pages import admin_page, to_login, visible_envelope
from gateway.context import AppContext
from gateway.deps import ContextDep, SessionDep
from gateway.pages.signing import check_csrf

router = APIRouter(prefix="/admin", include_in_schema=False)


def _page(
    request: Request,
    context: AppContext,
    session: Session,
    staff: Staff,
    envelope: Envelope,
    *,
    error: str | None = None,
    status: int = 200,
    form: dict[str, str] | None = None,
) -> HTMLResponse:
    rows = list_guarantees(session=session, envelope_id=envelope.id)
    return admin_page(
        request,
        context,
        "admin/guarantees.html",
        staff,
        envelope=envelope,
        state_ja=envelope_state_ja,
        guarantees=[{"row": r, "kind_ja": KIND_JA[r.kind], "key": masked_key(r)} for r in rows],
        kinds=[(k.value, KIND_JA[k]) for k in GuaranteeKind],
        can_edit=has_role(staff, StaffRole.SENDER) or has_role(staff, StaffRole.ADMIN),
        error=error,
        status=status,
        form=form or {},
    )


def _url(envelope_id: str) -> str:
    return f"/admin/envelopes/{envelope_id}/guarantees"


@router.get("/envelopes/{envelope_id}/guarantees", response_class=HTMLResponse)
def guarantees_page(
    request: Request, envelope_id: str, context: ContextDep, session: SessionDep
) -> Response:
    """The envelope's guarantee references and the forms to change them."""
    staff, envelope = visible_envelope(request, context, session, envelope_id)
    if staff is None:
        return to_login(request)
    return _page(request, context, session, staff, envelope)


async def _change(
    request: Request,
    context: AppContext,
    session: Session,
    envelope_id: str,
    act: Any,
) -> Response:
    """Check CSRF and the role, run ``act(staff, envelope, form)`` and commit; a refused change
    shows the page again with the reason."""
    form = await request.form(max_files=1, max_fields=20)
    check_csrf(request, context, str(form.get("csrf_token") or ""))

    def run() -> Response:
        staff, envelope = visible_envelope(request, context, session, envelope_id)
        if staff is None:
            return to_login(request)
        require_role(staff, StaffRole.SENDER)
        try:
            act(staff, envelope, form)
            session.commit()
        except GatewayError as exc:
            session.rollback()
            values = {k: str(v) for k, v in form.items() if isinstance(v, str)}
            values.pop("authentication_key", None)  # never echoed back
            return _page(
                request,
                context,
                session,
                staff,
                envelope,
                error=exc.message_ja,
                status=422,
                form=values,
            )
        return RedirectResponse(_url(envelope.id), status_code=303)

    return await run_in_threadpool(run)


@router.post("/envelopes/{envelope_id}/guarantees")
async def add(
    request: Request, envelope_id: str, context: ContextDep, session: SessionDep
) -> Response:
    """Add one reference typed in by staff."""

    def act(staff: Staff, envelope: Envelope, form: Any) -> None:
        add_guarantee(
            session=session,
            runtime=context.gateway.runtime,
            envelope_id=envelope.id,
            reference=GuaranteeInput(
                kind=str(form.get("kind") or ""),
                contract_number=str(form.get("contract_number") or ""),
                authentication_key=str(form.get("authentication_key") or ""),
                issuer=str(form.get("issuer") or ""),
            ),
            actor=staff.email,
            source="staff_page",
        )

    return await _change(request, context, session, envelope_id, act)


@router.post("/envelopes/{envelope_id}/guarantees/notice")
async def add_notice(
    request: Request, envelope_id: str, context: ContextDep, session: SessionDep
) -> Response:
    """Add the reference printed on the issuer's notice PDF."""

    def act(staff: Staff, envelope: Envelope, form: Any) -> None:
        upload = form.get("notice")
        data = upload.file.read(MAX_NOTICE_BYTES + 1) if isinstance(upload, UploadFile) else b""
        import_notice(
            session=session,
            runtime=context.gateway.runtime,
            envelope_id=envelope.id,
            data=data,
            actor=staff.email,
        )

    return await _change(request, context, session, envelope_id, act)


@router.post("/envelopes/{envelope_id}/guarantees/{guarantee_id}/verify")
async def verify(
    request: Request, envelope_id: str, guarantee_id: str, context: ContextDep, session: SessionDep
) -> Response:
    """Record that the certificate was confirmed at the issuer."""

    def act(staff: Staff, envelope: Envelope, form: Any) -> None:
        verify_guarantee(
            session=session, envelope_id=envelope.id, guarantee_id=guarantee_id, actor=staff.email
        )

    return await _change(request, context, session, envelope_id, act)


@router.post("/envelopes/{envelope_id}/guarantees/{guarantee_id}/remove")
async def remove(
    request: Request, envelope_id: str, guarantee_id: str, context: ContextDep, session: SessionDep
) -> Response:
    """Remove a mistaken reference, with a reason."""

    def act(staff: Staff, envelope: Envelope, form: Any) -> None:
        remove_guarantee(
            session=session,
            envelope_id=envelope.id,
            guarantee_id=guarantee_id,
            actor=staff.email,
            reason=str(form.get("reason") or ""),
            runtime=context.gateway.runtime,
        )

    return await _change(request, context, session, envelope_id, act)
