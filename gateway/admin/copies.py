"""Staff send a party of a concluded envelope the current copy of its documents (with the
archive timestamps added since completion) through a fresh download link: the copy mailed at
completion carries only the completion timestamp, and its link expires after 14 days."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import RedirectResponse, Response

from core.model import StaffRole
from core.records.archive import request_current_copy
from core.staff.access import require_role
from gateway.admin.pages import to_login, visible_envelope
from gateway.deps import ClientIpDep, ContextDep, SessionDep
from gateway.pages.signing import check_csrf

router = APIRouter(prefix="/admin", include_in_schema=False)


@router.post("/envelopes/{envelope_id}/copy")
async def send_current_copy(
    request: Request, envelope_id: str, context: ContextDep, session: SessionDep, ip: ClientIpDep
) -> Response:
    """Mail the chosen party a fresh download link to the current documents (senders)."""
    form = await request.form(max_files=0, max_fields=5)
    check_csrf(request, context, str(form.get("csrf_token") or ""))
    party_id = str(form.get("party_id") or "")

    def run() -> Response:
        staff, envelope = visible_envelope(request, context, session, envelope_id)
        if staff is None:
            return to_login(request)
        require_role(staff, StaffRole.SENDER)
        request_current_copy(
            session=session,
            runtime=context.gateway.runtime,
            envelope_id=envelope.id,
            party_id=party_id,
            actor=staff.email,
            ip=ip,
        )
        session.commit()
        context.wake_mailer()
        return RedirectResponse(f"/admin/envelopes/{envelope.id}?copy=sent", status_code=303)

    return await run_in_threadpool(run)
