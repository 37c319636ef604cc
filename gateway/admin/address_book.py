"""The address book pages (アドレス帳, ``/admin/address-book``): the list with a search, a form to
add or change a contact, delete, CSV import (all lines or none) and CSV export.

Every logged-in staff member may look and export; senders and admins may change it (the rules
live in :mod:`core.envelopes.address_book`). Every post carries the CSRF token; every change and every
export is an audit event.
"""

from __future__ import annotations

from typing import Annotated, Any
from urllib.parse import quote

from fastapi import APIRouter, Path, Query, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session
from starlette.datastructures import UploadFile

from core.envelopes.address_book import (
    ContactImportPlan,
    add_contact,
    apply_import,
    check_contact,
    count_contacts,
    delete_contact,
    export_csv,
    get_contact,
    list_contacts,
    plan_import,
    update_contact,
)
from core.errors import StaffError
from core.model import AddressBookEntry, Staff, StaffRole
from core.staff.accounts import MAX_IMPORT_BYTES
from gateway.admin.operations import PER_PAGE, PageNumber, Pager
from gateway.admin.pages import admin_page, current_staff, staff_with_role, to_login
from gateway.context import AppContext
from gateway.deps import ContextDep, SessionDep
from gateway.pages.signing import check_csrf, read_form

router = APIRouter(prefix="/admin", include_in_schema=False)

HOME = "/admin/address-book"
EntryId = Annotated[str, Path(pattern=r"^[0-9a-f]{32}$")]
_FIELDS = ("company", "name", "email", "department", "note")
_LOOKUP = 20  # contacts offered for what a sender has typed so far


def contact_label(entry: AddressBookEntry) -> str:
    """How a contact is offered in the party rows' address-book picker."""
    who = f"{entry.name} <{entry.email}>"
    return f"{entry.company} {who}" if entry.company else who


def _book_page(
    request: Request,
    context: AppContext,
    session: Session,
    staff: Staff,
    *,
    q: str = "",
    page: int = 1,
    form: dict[str, str] | None = None,
    error: str | None = None,
    plan: ContactImportPlan | None = None,
    imported: bool = False,
    status: int = 200,
) -> HTMLResponse:
    pager = Pager(
        page,
        count_contacts(session=session, staff=staff, search=q),
        HOME,
        (("q", q),) if q else (),
    )
    return admin_page(
        request,
        context,
        "admin/address_book.html",
        staff,
        entries=list_contacts(
            session=session, staff=staff, search=q, limit=PER_PAGE, offset=pager.offset
        ),
        pager=pager,
        q=q,
        form=form or {},
        error=error,
        plan=plan,
        imported=imported,
        status=status,
    )


@router.get("/address-book", response_class=HTMLResponse)
def address_book(
    request: Request,
    context: ContextDep,
    session: SessionDep,
    q: str = "",
    edit: str | None = None,
    page: PageNumber = 1,
) -> Response:
    """The contacts (searched by company, name or e-mail), a page at a time; with ``edit``,
    one in the form."""
    staff = current_staff(request, context, session)
    if staff is None:
        return to_login(request)
    form: dict[str, Any] = {}
    if edit:
        entry = get_contact(session=session, staff=staff, entry_id=edit)
        form = {"id": entry.id, **{k: getattr(entry, k) or "" for k in _FIELDS}}
    return _book_page(request, context, session, staff, q=q.strip()[:200], page=page, form=form)


@router.get("/address-book/lookup")
def lookup_contacts(
    request: Request,
    context: ContextDep,
    session: SessionDep,
    q: Annotated[str, Query(max_length=200)] = "",
) -> Response:
    """The first contacts matching what was typed in a party row's picker, as JSON for the
    create-and-send page's script (the page itself offers only the first ones)."""
    staff = current_staff(request, context, session)
    if staff is None:
        return JSONResponse({"error": "ログインしてください。"}, status_code=401)
    entries = list_contacts(session=session, staff=staff, search=q, limit=_LOOKUP)
    return JSONResponse(
        [
            {"label": contact_label(e), "company": e.company, "name": e.name, "email": e.email}
            for e in entries
        ],
        headers={"Cache-Control": "no-store"},
    )


@router.post("/address-book", response_class=HTMLResponse)
async def save_contact(request: Request, context: ContextDep, session: SessionDep) -> Response:
    """Add a contact, or (with ``id``) change one."""
    form = await read_form(request, 20)
    check_csrf(request, context, str(form.get("csrf_token") or ""))
    values = {k: str(form.get(k) or "") for k in ("id", *_FIELDS)}

    def run() -> Response:
        staff = staff_with_role(request, context, session, StaffRole.SENDER)
        if staff is None:
            return to_login(request)
        try:
            contact = check_contact(**{k: values[k] for k in _FIELDS})
            if values["id"]:
                update_contact(session=session, staff=staff, entry_id=values["id"], contact=contact)
            else:
                add_contact(session=session, staff=staff, contact=contact)
            session.commit()
        except StaffError as exc:
            session.rollback()
            error = exc.message_ja
        except IntegrityError:  # the same contact added at the same moment
            session.rollback()
            error = "同じ会社名とメールアドレスの連絡先が登録済みです。"
        else:  # the list shows the saved contact, however long the book
            return RedirectResponse(f"{HOME}?q={quote(contact.email)}", status_code=303)
        return _book_page(request, context, session, staff, form=values, error=error, status=422)

    return await run_in_threadpool(run)


@router.post("/address-book/{entry_id}/delete")
async def remove_contact(
    request: Request,
    entry_id: EntryId,
    context: ContextDep,
    session: SessionDep,
) -> Response:
    """Delete one contact."""
    form = await read_form(request, 5)
    check_csrf(request, context, str(form.get("csrf_token") or ""))

    def run() -> Response:
        staff = staff_with_role(request, context, session, StaffRole.SENDER)
        if staff is None:
            return to_login(request)
        delete_contact(session=session, staff=staff, entry_id=entry_id)
        session.commit()
        return RedirectResponse(HOME, status_code=303)

    return await run_in_threadpool(run)


@router.post("/address-book/import", response_class=HTMLResponse)
async def import_contacts(request: Request, context: ContextDep, session: SessionDep) -> Response:
    """Import a CSV: every line added or updated (by e-mail and company), or, when any line is
    wrong, nothing and the wrong lines listed."""
    async with request.form(max_files=1, max_fields=5) as form:
        check_csrf(request, context, str(form.get("csrf_token") or ""))
        upload = form.get("file")
        data = await upload.read(MAX_IMPORT_BYTES + 1) if isinstance(upload, UploadFile) else b""

    def run() -> Response:
        staff = staff_with_role(request, context, session, StaffRole.SENDER)
        if staff is None:
            return to_login(request)
        try:
            plan = plan_import(session=session, data=data)
        except StaffError as exc:
            return _book_page(request, context, session, staff, error=exc.message_ja, status=422)
        if plan.errors:
            return _book_page(request, context, session, staff, plan=plan, status=422)
        apply_import(session=session, staff=staff, plan=plan)
        session.commit()
        return _book_page(request, context, session, staff, plan=plan, imported=True)

    return await run_in_threadpool(run)


@router.get("/address-book/export.csv")
def export_contacts(request: Request, context: ContextDep, session: SessionDep) -> Response:
    """The whole address book as a CSV file (UTF-8 with BOM, the import's columns)."""
    staff = current_staff(request, context, session)
    if staff is None:
        return to_login(request)
    data = export_csv(session=session, staff=staff)
    session.commit()  # the export's audit event
    disposition = (
        f"attachment; filename=\"address-book.csv\"; filename*=UTF-8''{quote('アドレス帳.csv')}"
    )
    return Response(
        data,
        media_type="text/csv; charset=utf-8",
        headers={"Content-Disposition": disposition, "Cache-Control": "no-store"},
    )
