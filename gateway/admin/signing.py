"""Signing as a staff member (``/admin/inbox``, ``/admin/sign/<envelope id>/...``).

A buyer-side party bound to a staff account (an internal approver, the buyer's official) signs
here instead of through a mailed link and an access code: 署名待ち lists the envelopes whose turn
is theirs; the envelope opens in the same document view as the signing pages (tabs, pages, the
party's text boxes, checklist) with the same two steps 「完了する」 → 「署名手続きを完了する」, and
the confirmation asks for the password again (and the one-time code when the account has TOTP)
before :func:`core.signing.staff_signing.approve_as_staff` records the approval. The signing worker
applies it like any other.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path, Query, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from sqlalchemy.orm import Session

from core.envelopes.approvals import record_view
from core.envelopes.documents import document_at, read_document
from core.envelopes.lifecycle import decline
from core.errors import AuthError, StateError
from core.model import Document, Party, Staff
from core.records.audit import record_event
from core.signing.staff_signing import approve_as_staff, get_staff_party, list_awaiting
from core.states import ACTIONABLE_PARTY_STATES, EnvelopeState
from core.text_boxes import check_values_fit
from gateway.admin.pages import admin_page, current_staff, password_policy, to_login
from gateway.context import AppContext
from gateway.deps import ClientIpDep, ContextDep, SessionDep, get_client_ip
from gateway.downloads import file_response
from gateway.pages.signing import (
    CLOSED_JA,
    check_csrf,
    closed_message,
    form_text,
    page_image_response,
    read_form,
    render_documents,
    render_page,
    rotation_of_page,
)

router = APIRouter(prefix="/admin", include_in_schema=False)

EnvelopeId = Annotated[str, Path(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9]+$")]
Position = Annotated[int, Path(ge=0, le=1000)]


def _base(envelope_id: str) -> str:
    return f"/admin/sign/{envelope_id}"


@router.get("/inbox", response_class=HTMLResponse)
def inbox(request: Request, context: ContextDep, session: SessionDep) -> Response:
    """署名待ち: the envelopes waiting for this staff member's approval or signature."""
    staff = current_staff(request, context, session)
    if staff is None:
        return to_login(request)
    return admin_page(
        request,
        context,
        "admin/inbox.html",
        staff,
        items=list_awaiting(session=session, staff=staff),
    )


def _own_party(
    request: Request, context: AppContext, session: Session, envelope_id: str
) -> tuple[Staff, Party] | RedirectResponse:
    staff = current_staff(request, context, session)
    if staff is None:
        return to_login(request)
    return staff, get_staff_party(session=session, staff=staff, envelope_id=envelope_id)


def _documents(
    request: Request,
    context: AppContext,
    staff: Staff,
    party: Party,
    *,
    error: str | None = None,
    values: dict[str, str] | None = None,
    status: int = 200,
) -> HTMLResponse:
    return render_documents(
        request,
        context,
        party,
        base=_base(party.envelope.id),
        error=error,
        values=values,
        status=status,
        staff_signing=True,
        totp=bool(staff.totp_secret),
    )


@router.get("/sign/{envelope_id}", response_class=HTMLResponse)
def documents_page(
    envelope_id: EnvelopeId,
    request: Request,
    context: ContextDep,
    session: SessionDep,
    ip: ClientIpDep,
) -> Response:
    """The envelope to sign, in the signing pages' document view."""
    checked = _own_party(request, context, session, envelope_id)
    if isinstance(checked, RedirectResponse):
        return checked
    staff, party = checked
    if closed_message(party) is not None:
        return RedirectResponse(f"{_base(envelope_id)}/done", status_code=303)
    party = record_view(session=session, envelope_id=envelope_id, party_id=party.id, ip=ip)
    record_event(
        session=session,
        action="documents.viewed",
        actor=staff.email,
        envelope_id=envelope_id,
        party_id=party.id,
        ip=ip,
        detail={"via": "staff pages"},
    )
    session.commit()
    return _documents(request, context, staff, party)


def _document(
    request: Request, context: AppContext, session: Session, envelope_id: str, position: int
) -> tuple[Staff, Party, Document] | RedirectResponse:
    checked = _own_party(request, context, session, envelope_id)
    if isinstance(checked, RedirectResponse):
        return checked
    staff, party = checked
    envelope = party.envelope
    if envelope.state in (EnvelopeState.CANCELLED, EnvelopeState.DECLINED, EnvelopeState.EXPIRED):
        raise StateError(
            "state.envelope_not_open", "the envelope is closed", CLOSED_JA[envelope.state]
        )
    return staff, party, document_at(envelope, position)


@router.get("/sign/{envelope_id}/documents/{position}/pages/{page}.png")
def page_image(
    envelope_id: EnvelopeId,
    position: Position,
    page: Annotated[int, Path(ge=1, le=100000)],
    request: Request,
    context: ContextDep,
    session: SessionDep,
    w: Annotated[int | None, Query(ge=1, le=10000)] = None,
) -> Response:
    """One page of one document, as the signing pages serve it (a palette PNG ``w`` pixels
    wide, cached per revision, revalidated by ETag)."""
    checked = _document(request, context, session, envelope_id, position)
    if isinstance(checked, RedirectResponse):
        return Response(status_code=403)
    _staff, _party, doc = checked
    return page_image_response(request, context, doc, page, w)


@router.get("/sign/{envelope_id}/documents/{position}/download")
def download(
    envelope_id: EnvelopeId,
    position: Position,
    request: Request,
    context: ContextDep,
    session: SessionDep,
    ip: ClientIpDep,
) -> Response:
    """The document as it stands, for review (or signed, once completed)."""
    checked = _document(request, context, session, envelope_id, position)
    if isinstance(checked, RedirectResponse):
        return checked
    staff, party, doc = checked
    data = read_document(runtime=context.gateway.runtime, document=doc)
    record_event(
        session=session,
        action="document.downloaded",
        actor=staff.email,
        envelope_id=envelope_id,
        party_id=party.id,
        ip=ip,
        detail={"document": doc.name, "signatures": doc.signature_count, "via": "staff pages"},
    )
    session.commit()
    return file_response(data, doc.name)


def _complete(
    request: Request,
    context: AppContext,
    envelope_id: str,
    values: dict[str, str],
    password: str,
    totp_code: str | None,
    ip: str | None,
) -> Response:
    with context.gateway.sessions() as session:
        checked = _own_party(request, context, session, envelope_id)
        if isinstance(checked, RedirectResponse):
            return checked
        staff, party = checked
        if party.state not in ACTIONABLE_PARTY_STATES:
            return RedirectResponse(f"{_base(envelope_id)}/done", status_code=303)
        try:
            check_values_fit(
                engine=context.gateway.runtime.signing,
                party=party,
                values=values,
                rotation_of=rotation_of_page(context),
            )
            approve_as_staff(
                session=session,
                staff=staff,
                envelope_id=envelope_id,
                values=values,
                password=password,
                totp_code=totp_code,
                policy=password_policy(context),
                ip=ip,
            )
        except (AuthError, StateError) as exc:
            if isinstance(exc, StateError) and exc.code in (
                "state.already_acted",
                "state.envelope_not_open",
            ):
                return RedirectResponse(f"{_base(envelope_id)}/done", status_code=303)
            if isinstance(exc, StateError) and not exc.code.startswith("envelope.field_"):
                raise
            session.rollback()
            staff, party = get_staff_party_again(session, request, context, envelope_id)
            status = 423 if exc.code == "auth.locked" else 422
            return _documents(
                request, context, staff, party, error=exc.message_ja, values=values, status=status
            )
    return RedirectResponse(f"{_base(envelope_id)}/done", status_code=303)


def get_staff_party_again(
    session: Session, request: Request, context: AppContext, envelope_id: str
) -> tuple[Staff, Party]:
    """(staff, party) read afresh after a rollback, to show the page again with the error."""
    checked = _own_party(request, context, session, envelope_id)
    assert not isinstance(checked, RedirectResponse)
    return checked


@router.post("/sign/{envelope_id}/complete", response_class=HTMLResponse)
async def complete(envelope_id: EnvelopeId, request: Request, context: ContextDep) -> Response:
    """「署名手続きを完了する」 with the password (and one-time code) typed again."""
    form = await read_form(request, 600)
    check_csrf(request, context, form_text(form.get("csrf_token")))
    values = {
        key.removeprefix("field_"): form_text(value)
        for key, value in form.multi_items()
        if key.startswith("field_")
    }
    password = form_text(form.get("password"))[:256]
    totp_code = form_text(form.get("totp"))[:16] or None
    ip = get_client_ip(request, context)
    try:
        return await run_in_threadpool(
            _complete, request, context, envelope_id, values, password, totp_code, ip
        )
    finally:
        context.wake_signer()
        context.wake_mailer()


def _decline(
    request: Request, context: AppContext, envelope_id: str, reason: str, ip: str | None
) -> Response:
    with context.gateway.sessions() as session:
        checked = _own_party(request, context, session, envelope_id)
        if isinstance(checked, RedirectResponse):
            return checked
        staff, party = checked
        try:
            decline(
                session=session,
                runtime=context.gateway.runtime,
                envelope_id=envelope_id,
                party_id=party.id,
                reason=reason,
                ip=ip,
            )
        except StateError as exc:
            if exc.code != "envelope.decline_reason_required":
                raise
            return _documents(request, context, staff, party, error=exc.message_ja, status=422)
        session.commit()
    return RedirectResponse(f"{_base(envelope_id)}/done", status_code=303)


@router.post("/sign/{envelope_id}/decline", response_class=HTMLResponse)
async def decline_page(envelope_id: EnvelopeId, request: Request, context: ContextDep) -> Response:
    """「同意せずに却下する」 with a reason, which reaches the sender."""
    form = await read_form(request, 10)
    check_csrf(request, context, form_text(form.get("csrf_token")))
    ip = get_client_ip(request, context)
    reason = form_text(form.get("reason"))[:2000]
    response = await run_in_threadpool(_decline, request, context, envelope_id, reason, ip)
    context.wake_mailer()
    return response


@router.get("/sign/{envelope_id}/done", response_class=HTMLResponse)
def done_page(
    envelope_id: EnvelopeId, request: Request, context: ContextDep, session: SessionDep
) -> Response:
    """Where the staff member's request stands after they acted."""
    checked = _own_party(request, context, session, envelope_id)
    if isinstance(checked, RedirectResponse):
        return checked
    _staff, party = checked
    message = closed_message(party)
    if message is None:
        return RedirectResponse(_base(envelope_id), status_code=303)
    return render_page(
        request,
        context,
        "pages/done.html",
        base=_base(envelope_id),
        envelope=party.envelope,
        party=party,
        message=message,
        staff_signing=True,
    )
