"""Staff pages (Japanese, server-rendered): login (password + optional TOTP, lockout), the
envelope list with the records-law search, the detail with per-party progress, downloads of the
signed documents and the completion certificate, cancel, and the monthly report with an SVG chart.

Every envelope is looked up through :mod:`core.staff.access` (out of scope answers 404 like a missing
one); every post carries the CSRF token; login, view, download and cancel are audit events.
A login is a server-side session (:mod:`core.staff.sessions`): the cookie holds its random token,
signed with the server's session key, and logout, a password change, disabling the account or an
admin's "end sessions" ends it on the server, so a copied cookie stops working.
"""

from __future__ import annotations

import base64
import datetime as dt
from collections.abc import Callable
from decimal import Decimal
from typing import Any
from urllib.parse import quote, urlencode

from fastapi import APIRouter, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from sqlalchemy import select
from sqlalchemy.orm import Session
from starlette.datastructures import UploadFile

from core.envelopes.documents import document_at, read_document
from core.envelopes.labels import action_ja, auth_method_ja, party_auth_ja
from core.envelopes.lifecycle import cancel_envelope
from core.envelopes.recovery import locked_party_ids
from core.envelopes.sealing import completion_certificate
from core.errors import StaffError
from core.intake.consent import CONTRACT_TYPE_JA, consent_json
from core.model import Staff, StaffRole
from core.records.audit import list_events, record_event
from core.records.reports import monthly_report
from core.records.search import EnvelopeQuery, SearchPage, parse_query, search_envelopes, waiting_on
from core.signing.worker import list_waiting
from core.staff.access import get_visible_envelope, has_role, require_role
from core.staff.accounts import (
    MAX_IMPORT_BYTES,
    PasswordPolicy,
    add_staff,
    apply_import,
    authenticate,
    get_staff,
    list_staff,
    plan_import,
    set_password,
    update_staff,
)
from core.staff.sessions import (
    SessionPolicy,
    count_live_sessions,
    end_session,
    end_staff_sessions,
    resume_session,
    start_session,
)
from core.states import EnvelopeState, envelope_state_ja, party_state_ja
from core.timezone import JST
from gateway.context import AppContext
from gateway.deps import ClientIpDep, ContextDep, SessionDep
from gateway.downloads import file_response
from gateway.pages.signing import check_csrf, render_page

router = APIRouter(prefix="/admin", include_in_schema=False)

STAFF_COOKIE = "kg_staff"
_CANCELLABLE = (EnvelopeState.DRAFT, EnvelopeState.SENT)


# --- session -----------------------------------------------------------------------------------


def password_policy(context: AppContext) -> PasswordPolicy:
    settings = context.gateway.settings.staff
    return PasswordPolicy(
        min_length=settings.password_min_length,
        max_failures=settings.max_failed_logins,
        lockout=dt.timedelta(minutes=settings.lockout_minutes),
        min_score=settings.password_min_score,
    )


def _session_policy(context: AppContext) -> SessionPolicy:
    settings = context.gateway.settings.staff
    return SessionPolicy(
        lifetime=dt.timedelta(hours=settings.session_hours),
        idle=dt.timedelta(minutes=settings.session_idle_minutes),
    )


def _session_token(request: Request, context: AppContext) -> str | None:
    return context.cookies.session_link(request.cookies.get(STAFF_COOKIE))


def current_staff(request: Request, context: AppContext, session: Session) -> Staff | None:
    """The staff member whose live session the request's cookie holds (enabled), or None."""
    return resume_session(
        session=session,
        token=_session_token(request, context),
        policy=_session_policy(context),
    )


def to_login(request: Request) -> RedirectResponse:
    """Send a caller without a live session to the login form, coming back here after it."""
    target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
    return RedirectResponse(f"/admin/login?next={quote(target)}", status_code=303)


def admin_page(
    request: Request, context: AppContext, template: str, staff: Staff | None, **values: Any
) -> HTMLResponse:
    """A staff page: ``template`` in the admin layout, with the staff member's roles for the
    navigation (``status`` among ``values`` sets the HTTP status)."""
    status = values.pop("status", 200)
    return render_page(
        request,
        context,
        template,
        status=status,
        staff=staff,
        is_sender=staff is not None and has_role(staff, StaffRole.SENDER),
        is_admin=staff is not None and has_role(staff, StaffRole.ADMIN),
        **values,
    )


# --- login -------------------------------------------------------------------------------------


@router.get("/login", response_class=HTMLResponse)
def login_form(request: Request, context: ContextDep, next: str = "/admin/envelopes") -> Response:
    """The login form."""
    return admin_page(request, context, "admin/login.html", None, next=_safe_next(next), error=None)


def _safe_next(target: str) -> str:
    # Only paths of the staff pages: never an absolute or protocol-relative URL.
    if target.startswith("/admin/") and not target.startswith("//"):
        return target
    return "/admin/envelopes"


@router.post("/login")
async def login(
    request: Request, context: ContextDep, session: SessionDep, ip: ClientIpDep
) -> Response:
    """Check the e-mail, password and (when enrolled) the one-time code."""
    form = await request.form()
    check_csrf(request, context, str(form.get("csrf_token") or ""))
    email = str(form.get("email") or "")
    password = str(form.get("password") or "")
    code = str(form.get("totp") or "") or None
    next_path = _safe_next(str(form.get("next") or ""))

    def attempt() -> tuple[Any, str | None]:
        outcome = authenticate(
            session=session,
            email=email,
            password=password,
            totp_code=code,
            policy=password_policy(context),
            ip=ip,
        )
        token = None
        if outcome.staff is not None:
            token = start_session(
                session=session, staff=outcome.staff, policy=_session_policy(context), ip=ip
            )
        session.commit()  # the failure count too
        return outcome, token

    outcome, token = await run_in_threadpool(attempt)
    if token is None:
        # A locked account answers like an unknown one (401, same message): no enumeration.
        status = 401
        return admin_page(
            request,
            context,
            "admin/login.html",
            None,
            next=next_path,
            error=outcome.error.message_ja,
            email=email,
            status=status,
        )
    response = RedirectResponse(next_path, status_code=303)
    lifetime = int(_session_policy(context).lifetime.total_seconds())
    response.set_cookie(
        STAFF_COOKIE,
        context.cookies.session_value(token, lifetime),
        max_age=lifetime,
        httponly=True,
        samesite="strict",
        secure=context.secure_cookies,
        path="/admin",
    )
    return response


@router.post("/logout")
async def logout(
    request: Request, context: ContextDep, session: SessionDep, ip: ClientIpDep
) -> Response:
    """End the staff session, on the server too (a copy of the cookie no longer works)."""
    form = await request.form()
    check_csrf(request, context, str(form.get("csrf_token") or ""))

    def run() -> None:
        staff = current_staff(request, context, session)
        if staff is not None:
            record_event(session=session, action="logout", actor=staff.email, ip=ip)
        end_session(session=session, token=_session_token(request, context))
        session.commit()

    await run_in_threadpool(run)
    response = RedirectResponse("/admin/login", status_code=303)
    response.delete_cookie(STAFF_COOKIE, path="/admin")
    return response


@router.get("")
@router.get("/")
def home() -> Response:
    """The staff pages start at the envelope list."""
    return RedirectResponse("/admin/envelopes", status_code=303)


# --- envelopes ---------------------------------------------------------------------------------


def parse_date(value: str | None) -> dt.date | None:
    """A form's YYYY-MM-DD date (empty: None); ValueError when unreadable."""
    return dt.date.fromisoformat(value) if value else None


def parse_amount(value: str | None) -> Decimal | None:
    """A form's yen amount, thousands commas allowed (empty: None); InvalidOperation when not
    a number."""
    if not value:
        return None
    return Decimal(value.replace(",", "").strip())


def _query(params: Any) -> EnvelopeQuery:
    # the same parser as the API and the CLI: the same conditions give the same rows
    return parse_query(
        {k: params.get(k) or "" for k in (*_FORM_KEYS, "page")}, params.getlist("state")
    )


@router.get("/envelopes", response_class=HTMLResponse)
def envelope_list(request: Request, context: ContextDep, session: SessionDep) -> Response:
    """The envelopes the staff member may see, searched and paginated."""
    staff = current_staff(request, context, session)
    if staff is None:
        return to_login(request)
    params = request.query_params
    error = None
    try:
        query = _query(params)
        page = search_envelopes(session=session, staff=staff, query=query)
    except StaffError as exc:
        # an invalid condition shows the error and no rows, never the unfiltered list
        error = exc.message_ja
        page = SearchPage(items=[], total=0, page=1, per_page=EnvelopeQuery().per_page)
    kept = [(k, v) for k, v in params.multi_items() if k != "page" and v]
    return admin_page(
        request,
        context,
        "admin/envelopes.html",
        staff,
        page=page,
        form={k: params.get(k, "") for k in _FORM_KEYS},
        chosen_states=set(params.getlist("state")),
        states=[(s.value, envelope_state_ja(s)) for s in EnvelopeState],
        state_ja=envelope_state_ja,
        base_query=urlencode(kept),
        error=error,
        locked_envelopes=_locked_envelopes(session, [e.id for e in page.items]),
        waiting_on=waiting_on(session=session, envelope_ids=[e.id for e in page.items]),
    )


def _locked_envelopes(session: Session, envelope_ids: list[str]) -> set[str]:
    """Which of these envelopes have a party locked out by wrong access codes."""
    from core.model import Party

    locked = locked_party_ids(session=session, envelope_ids=envelope_ids)
    if not locked:
        return set()
    return set(session.scalars(select(Party.envelope_id).where(Party.id.in_(locked))))


_FORM_KEYS = (
    "management_number",
    "keyword",
    "date_from",
    "date_to",
    "counterparty",
    "amount_min",
    "amount_max",
    "department",
)


def visible_envelope(
    request: Request, context: AppContext, session: Session, envelope_id: str
) -> Any:
    """(staff, envelope) for a logged-in staff member who may see the envelope; (None, None)
    without a session; ``not_found`` when it is out of their scope (core.staff.access)."""
    staff = current_staff(request, context, session)
    if staff is None:
        return None, None
    return staff, get_visible_envelope(session=session, staff=staff, envelope_id=envelope_id)


@router.get("/envelopes/{envelope_id}", response_class=HTMLResponse)
def envelope_detail(
    request: Request, envelope_id: str, context: ContextDep, session: SessionDep, ip: ClientIpDep
) -> Response:
    """One envelope: facts, per-party progress, documents, history."""
    staff, envelope = visible_envelope(request, context, session, envelope_id)
    if staff is None:
        return to_login(request)
    record_event(
        session=session, action="staff.view", actor=staff.email, envelope_id=envelope.id, ip=ip
    )
    session.commit()
    events = list_events(session=session, envelope_id=envelope.id)
    return admin_page(
        request,
        context,
        "admin/envelope.html",
        staff,
        envelope=envelope,
        state_ja=envelope_state_ja,
        party_state_ja=party_state_ja,
        events=events,
        cancellable=envelope.state in _CANCELLABLE and has_role(staff, StaffRole.SENDER),
        completed=envelope.state is EnvelopeState.COMPLETED,
        waiting=list_waiting(session=session, envelope_id=envelope.id),
        contract_type_ja=CONTRACT_TYPE_JA.get(envelope.contract_type or "", "未設定"),
        consent=consent_json(envelope.consent),
        locked=locked_party_ids(session=session, envelope_ids=[envelope.id]),
        party_auth_ja=party_auth_ja,
        auth_method_ja=auth_method_ja,
        action_ja=action_ja,
        forwards=[e for e in events if e.action == "party.forwarded"],
    )


def _attachment(data: bytes, name: str) -> Response:
    return file_response(data, name, no_store=False)


@router.get("/envelopes/{envelope_id}/documents/{position}")
def download_document(
    request: Request,
    envelope_id: str,
    position: int,
    context: ContextDep,
    session: SessionDep,
    ip: ClientIpDep,
) -> Response:
    """The newest revision of one document (signed as far as the routing got)."""
    staff, envelope = visible_envelope(request, context, session, envelope_id)
    if staff is None:
        return to_login(request)
    document = document_at(envelope, position)
    data = read_document(runtime=context.gateway.runtime, document=document)
    record_event(
        session=session,
        action="staff.download",
        actor=staff.email,
        envelope_id=envelope.id,
        ip=ip,
        detail={"document": document.name},
    )
    session.commit()
    return _attachment(data, document.name)


@router.get("/envelopes/{envelope_id}/certificate")
def download_certificate(
    request: Request, envelope_id: str, context: ContextDep, session: SessionDep, ip: ClientIpDep
) -> Response:
    """The completion certificate (締結証明書) of a completed envelope."""
    staff, envelope = visible_envelope(request, context, session, envelope_id)
    if staff is None:
        return to_login(request)
    data = completion_certificate(runtime=context.gateway.runtime, envelope=envelope)
    record_event(
        session=session,
        action="staff.download_certificate",
        actor=staff.email,
        envelope_id=envelope.id,
        ip=ip,
    )
    session.commit()
    return _attachment(data, f"締結証明書_{envelope.management_number}.pdf")


def sender_action(
    request: Request,
    context: AppContext,
    session: Session,
    envelope_id: str,
    action: Callable[[Staff, Any], object],
) -> Response:
    """Do ``action(staff, envelope)`` for a sender or admin who sees the envelope, commit, wake
    the mailer (the action's mails are in the outbox) and show the envelope again."""
    staff, envelope = visible_envelope(request, context, session, envelope_id)
    if staff is None:
        return to_login(request)
    require_role(staff, StaffRole.SENDER)
    action(staff, envelope)
    session.commit()
    context.wake_mailer()
    return RedirectResponse(f"/admin/envelopes/{envelope.id}", status_code=303)


@router.post("/envelopes/{envelope_id}/cancel")
async def cancel(
    request: Request, envelope_id: str, context: ContextDep, session: SessionDep, ip: ClientIpDep
) -> Response:
    """Cancel a draft or sent envelope (senders and admins)."""
    form = await request.form()
    check_csrf(request, context, str(form.get("csrf_token") or ""))
    reason = str(form.get("reason") or "")

    def act(staff: Staff, envelope: Any) -> object:
        return cancel_envelope(
            session=session,
            runtime=context.gateway.runtime,
            envelope_id=envelope.id,
            actor=staff.email,
            reason=reason,
            ip=ip,
        )

    return await run_in_threadpool(sender_action, request, context, session, envelope_id, act)


# --- report ------------------------------------------------------------------------------------


def bar_chart(rows: list[Any], width: int = 720, height: int = 260) -> dict[str, Any]:
    """Geometry of an SVG bar chart of monthly counts (drawn by the template, no script)."""
    top = max([r.count for r in rows] + [1])
    left, bottom, plot_h = 40, 30, height - 50
    slot = (width - left - 10) / max(1, len(rows))
    bars = []
    for i, row in enumerate(rows):
        h = plot_h * row.count / top
        x = left + i * slot + slot * 0.15
        bars.append(
            {
                "x": round(x, 1),
                "y": round(height - bottom - h, 1),
                "w": round(slot * 0.7, 1),
                "h": round(h, 1),
                "label": row.month[2:].replace("-", "/"),
                "count": row.count,
                "cx": round(x + slot * 0.35, 1),
            }
        )
    return {"width": width, "height": height, "bars": bars, "top": top, "base": height - bottom}


@router.get("/reports/monthly", response_class=HTMLResponse)
def report_page(
    request: Request, context: ContextDep, session: SessionDep, month: str | None = None
) -> Response:
    """Contracts concluded per month (last twelve months, chart) and per department."""
    from core.records.reports import parse_month

    staff = current_staff(request, context, session)
    if staff is None:
        return to_login(request)
    now = dt.datetime.now(JST)
    year, number = parse_month(month) if month else (now.year, now.month)
    rows = monthly_report(session=session, year=year, month=number, months=12, staff=staff)
    departments = sorted({d for r in rows for d in r.departments})
    return admin_page(
        request,
        context,
        "admin/report.html",
        staff,
        rows=rows,
        chart=bar_chart(rows),
        departments=departments,
        month=f"{year:04d}-{number:02d}",
    )


# --- staff management (admins) -----------------------------------------------------------------


def staff_with_role(
    request: Request, context: AppContext, session: Session, role: StaffRole
) -> Staff | None:
    """The logged-in staff member, refused (``staff.role_required``) without ``role``; None when
    nobody is logged in."""
    staff = current_staff(request, context, session)
    if staff is not None:
        require_role(staff, role)
    return staff


def admin_staff(request: Request, context: AppContext, session: Session) -> Staff | None:
    """The logged-in admin (None without a session; ``forbidden`` for other roles)."""
    return staff_with_role(request, context, session, StaffRole.ADMIN)


def _staff_page(
    request: Request,
    context: AppContext,
    session: Session,
    staff: Staff,
    *,
    error: str | None = None,
    status: int = 200,
    form: dict[str, str] | None = None,
) -> HTMLResponse:
    return admin_page(
        request,
        context,
        "admin/staff.html",
        staff,
        members=list_staff(session=session),
        live_sessions=count_live_sessions(session=session, policy=_session_policy(context)),
        error=error,
        status=status,
        form=form or {},
    )


@router.get("/staff", response_class=HTMLResponse)
def staff_list(request: Request, context: ContextDep, session: SessionDep) -> Response:
    """Every staff member, and a form to add one."""
    staff = admin_staff(request, context, session)
    if staff is None:
        return to_login(request)
    return _staff_page(request, context, session, staff)


@router.post("/staff")
async def staff_save(
    request: Request, context: ContextDep, session: SessionDep, ip: ClientIpDep
) -> Response:
    """Add a staff member, or change one (same e-mail), with an optional new password."""
    form = await request.form()
    check_csrf(request, context, str(form.get("csrf_token") or ""))
    values = {k: str(form.get(k) or "") for k in ("email", "name", "department", "roles", "scope")}
    roles = ",".join(str(r) for r in form.getlist("role"))
    password = str(form.get("password") or "")
    disabled = form.get("disabled") == "1"

    def run() -> Response:
        staff = admin_staff(request, context, session)
        if staff is None:
            return to_login(request)
        try:
            member = session.scalars(
                select(Staff).where(Staff.email == values["email"].strip().lower())
            ).first()
            if member is None:
                member = add_staff(
                    session=session,
                    name=values["name"],
                    email=values["email"],
                    roles=roles,
                    scope=values["scope"],
                    department=values["department"],
                    actor=staff.email,
                )
                session.flush()
            update_staff(
                session=session,
                staff=member,
                actor=staff.email,
                name=values["name"],
                department=values["department"],
                roles=roles,
                scope=values["scope"],
                disabled=disabled,
            )
            if password:
                set_password(
                    session=session,
                    staff=member,
                    password=password,
                    policy=password_policy(context),
                    actor=staff.email,
                )
        except StaffError as exc:
            session.rollback()
            return _staff_page(
                request, context, session, staff, error=exc.message_ja, status=422, form=values
            )
        session.commit()
        return RedirectResponse("/admin/staff", status_code=303)

    return await run_in_threadpool(run)


@router.post("/staff/import", response_class=HTMLResponse)
async def staff_import(
    request: Request, context: ContextDep, session: SessionDep, ip: ClientIpDep
) -> Response:
    """Bulk staff import from a CSV: first a preview of the diff (nothing written), then, with
    ``apply``, the same file applied (never half: a file with bad lines is refused)."""
    form = await request.form()
    check_csrf(request, context, str(form.get("csrf_token") or ""))
    upload = form.get("file")
    if isinstance(upload, UploadFile):
        data = await upload.read(MAX_IMPORT_BYTES + 1)
    else:
        data = base64.b64decode(str(form.get("content") or ""), validate=False)
    apply = form.get("apply") == "1"
    disable_missing = form.get("disable_missing") == "1"
    await form.close()  # the upload's temporary file

    def run() -> Response:
        staff = admin_staff(request, context, session)
        if staff is None:
            return to_login(request)
        plan, lines = plan_import(session=session, data=data, disable_missing=disable_missing)
        applied = False
        if apply and not plan.errors:
            apply_import(session=session, plan=plan, lines=lines, actor=staff.email, ip=ip)
            session.commit()
            applied = True
        return admin_page(
            request,
            context,
            "admin/staff_import.html",
            staff,
            plan=plan,
            applied=applied,
            content=base64.b64encode(data).decode(),
            disable_missing=disable_missing,
        )

    return await run_in_threadpool(run)


@router.post("/staff/sessions/end")
async def staff_end_sessions(
    request: Request, context: ContextDep, session: SessionDep, ip: ClientIpDep
) -> Response:
    """End every session of one staff member (a lost or shared computer)."""
    form = await request.form()
    check_csrf(request, context, str(form.get("csrf_token") or ""))
    email = str(form.get("email") or "")

    def run() -> Response:
        staff = admin_staff(request, context, session)
        if staff is None:
            return to_login(request)
        member = get_staff(session=session, email=email)
        end_staff_sessions(session=session, staff=member, actor=staff.email, ip=ip)
        session.commit()
        return RedirectResponse("/admin/staff", status_code=303)

    return await run_in_threadpool(run)
