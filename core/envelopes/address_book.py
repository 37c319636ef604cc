"""The address book (アドレス帳): the contacts staff pick parties from when they create an
envelope by hand (会社名, 氏名, メールアドレス, optionally 部署 and 備考).

One contact per (e-mail, company): the same person may appear for two companies. Any enabled
staff member may read the book; senders and admins may change it, and every change is an audit
event. The CSV import is planned first (:func:`plan_import`, which writes nothing) and applied
only when every line is good (:func:`apply_import`): a file is never half imported.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from sqlalchemy import ColumnElement, func, or_, select
from sqlalchemy.orm import Session

from core.csv_export import SafeCsvWriter, restore
from core.errors import NotFoundError, StaffError
from core.model import AddressBookEntry, Staff, StaffRole
from core.records.audit import record_event
from core.staff.access import require_role
from core.staff.accounts import check_email, check_name, import_columns, read_import_rows
from core.text import multi_line, one_line

__all__ = [
    "Contact",
    "ContactImportPlan",
    "add_contact",
    "apply_import",
    "check_contact",
    "count_contacts",
    "delete_contact",
    "export_csv",
    "get_contact",
    "list_contacts",
    "plan_import",
    "update_contact",
]

# Import headers, Japanese or English, and the order of the export.
_HEADERS = {
    "会社名": "company",
    "company": "company",
    "氏名": "name",
    "name": "name",
    "メールアドレス": "email",
    "email": "email",
    "e-mail": "email",
    "部署": "department",
    "department": "department",
    "備考": "note",
    "note": "note",
}
_REQUIRED = ("company", "name", "email")
_EXPORT_HEADER = ("会社名", "氏名", "メールアドレス", "部署", "備考")


@dataclass(frozen=True)
class Contact:
    """The values of one contact, checked and normalised (see :func:`check_contact`)."""

    company: str
    name: str
    email: str
    department: str | None = None
    note: str | None = None


def _optional(text: str | None, limit: int, label: str, *, lines: bool = False) -> str | None:
    clean = multi_line if lines else one_line
    text = clean(text or "", field=label, label_ja=label, error=StaffError)
    if len(text) > limit:
        raise StaffError(
            "address_book.too_long",
            f"{label} is longer than {limit} characters",
            f"{label}は{limit}文字以内で入力してください。",
        )
    return text or None


def check_contact(
    *,
    company: str | None,
    name: str,
    email: str,
    department: str | None = None,
    note: str | None = None,
) -> Contact:
    """The contact's values stripped, the e-mail lower-cased; ``staff.bad_email`` and friends
    (with Japanese messages) for what cannot be stored."""
    return Contact(
        company=_optional(company, 200, "会社名") or "",
        name=check_name(name),
        email=check_email(email),
        department=_optional(department, 200, "部署"),
        note=_optional(note, 2000, "備考", lines=True),
    )


def _require_reader(staff: Staff) -> None:
    if staff.disabled:
        raise StaffError(
            "staff.role_required",
            "a disabled staff member cannot read the address book",
            "この操作を行う権限がありません。",
        )


def _taken(session: Session, contact: Contact, except_id: str | None = None) -> None:
    query = select(AddressBookEntry.id).where(
        AddressBookEntry.email == contact.email, AddressBookEntry.company == contact.company
    )
    if except_id is not None:
        query = query.where(AddressBookEntry.id != except_id)
    if session.scalars(query).first() is not None:
        raise StaffError(
            "address_book.exists",
            f"a contact {contact.email} of {contact.company!r} exists",
            "同じ会社名とメールアドレスの連絡先が登録済みです。",
        )


def add_contact(*, session: Session, staff: Staff, contact: Contact) -> AddressBookEntry:
    """Add one contact (senders and admins)."""
    require_role(staff, StaffRole.SENDER)
    _taken(session, contact)
    entry = AddressBookEntry(
        company=contact.company,
        name=contact.name,
        email=contact.email,
        department=contact.department,
        note=contact.note,
        created_by=staff.email,
    )
    session.add(entry)
    session.flush()
    record_event(
        session=session,
        action="address_book.add",
        actor=staff.email,
        detail={"id": entry.id, "email": entry.email, "company": entry.company},
    )
    return entry


def get_contact(*, session: Session, staff: Staff, entry_id: str) -> AddressBookEntry:
    """One contact by id, or ``not_found.contact``."""
    _require_reader(staff)
    entry = session.get(AddressBookEntry, entry_id)
    if entry is None:
        raise NotFoundError(
            "not_found.contact", f"no contact {entry_id}", "該当する連絡先が見つかりません。"
        )
    return entry


def update_contact(
    *, session: Session, staff: Staff, entry_id: str, contact: Contact
) -> AddressBookEntry:
    """Replace one contact's values (senders and admins); records what changed."""
    require_role(staff, StaffRole.SENDER)
    entry = get_contact(session=session, staff=staff, entry_id=entry_id)
    _taken(session, contact, except_id=entry.id)
    changed = sorted(k for k, v in asdict(contact).items() if getattr(entry, k) != v)
    for key in changed:
        setattr(entry, key, getattr(contact, key))
    if changed:
        record_event(
            session=session,
            action="address_book.update",
            actor=staff.email,
            detail={"id": entry.id, "email": entry.email, "changed": changed},
        )
    return entry


def delete_contact(*, session: Session, staff: Staff, entry_id: str) -> None:
    """Remove one contact (senders and admins)."""
    require_role(staff, StaffRole.SENDER)
    entry = get_contact(session=session, staff=staff, entry_id=entry_id)
    record_event(
        session=session,
        action="address_book.delete",
        actor=staff.email,
        detail={"id": entry.id, "email": entry.email, "company": entry.company},
    )
    session.delete(entry)


def _matching(search: str | None) -> list[ColumnElement[bool]]:
    """Conditions keeping the contacts whose company, name or e-mail contains every word of
    ``search`` (case-insensitive; the brackets of a picked ``name <address>`` separate words)."""
    conditions: list[ColumnElement[bool]] = []
    for word in (search or "").lower().replace("<", " ").replace(">", " ").split():
        conditions.append(
            or_(
                func.lower(AddressBookEntry.company).contains(word, autoescape=True),
                func.lower(AddressBookEntry.name).contains(word, autoescape=True),
                AddressBookEntry.email.contains(word, autoescape=True),
            )
        )
    return conditions


def list_contacts(
    *,
    session: Session,
    staff: Staff,
    search: str | None = None,
    limit: int = 1000,
    offset: int = 0,
) -> Sequence[AddressBookEntry]:
    """Contacts by company and name; ``search`` keeps those whose company, name or e-mail
    contains each of its words (case-insensitive)."""
    _require_reader(staff)
    query = (
        select(AddressBookEntry)
        .where(*_matching(search))
        .order_by(AddressBookEntry.company, AddressBookEntry.name, AddressBookEntry.email)
    )
    return session.scalars(query.limit(limit).offset(offset)).all()


def count_contacts(*, session: Session, staff: Staff, search: str | None = None) -> int:
    """How many contacts :func:`list_contacts` finds for ``search``, all pages together."""
    _require_reader(staff)
    query = select(func.count(AddressBookEntry.id)).where(*_matching(search))
    return session.scalar(query) or 0


# --- CSV ---------------------------------------------------------------------------------------


@dataclass
class ContactImportPlan:
    """What an import would do: new contacts, changed ones (by e-mail and company), and the bad
    lines, each with its line number and a Japanese message."""

    created: list[Contact] = field(default_factory=list)
    updated: list[Contact] = field(default_factory=list)
    unchanged: int = 0
    errors: list[dict[str, Any]] = field(default_factory=list)


def plan_import(*, session: Session, data: bytes) -> ContactImportPlan:
    """Read an import file (UTF-8 or CP932; header 会社名,氏名,メールアドレス[,部署][,備考] or
    company,name,email[,department][,note]) and compare it with the book; writes nothing."""
    rows = read_import_rows(data)
    columns = import_columns(
        rows,
        headers=_HEADERS,
        required=_REQUIRED,
        code="address_book.import_header",
        message_ja="1行目に 会社名,氏名,メールアドレス（または company,name,email）の見出しが必要です。",
    )
    existing = {(e.email, e.company): e for e in session.scalars(select(AddressBookEntry))}
    plan = ContactImportPlan()
    seen: dict[tuple[str, str], int] = {}
    for number, row in enumerate(rows[1:], start=2):
        if not any(cell.strip() for cell in row):
            continue
        raw = {c: restore(row[i]) for i, c in enumerate(columns) if c and i < len(row)}
        try:
            contact = check_contact(
                company=raw.get("company"),
                name=raw.get("name", ""),
                email=raw.get("email", ""),
                department=raw.get("department"),
                note=raw.get("note"),
            )
        except StaffError as exc:
            plan.errors.append({"line": number, "code": exc.code, "message": exc.message_ja})
            continue
        key = (contact.email, contact.company)
        if key in seen:
            plan.errors.append(
                {
                    "line": number,
                    "code": "address_book.import_duplicate",
                    "message": f"{seen[key]}行目と同じ会社名・メールアドレスです。",
                }
            )
            continue
        seen[key] = number
        current = existing.get(key)
        if current is None:
            plan.created.append(contact)
        elif any(getattr(current, k) != v for k, v in asdict(contact).items()):
            plan.updated.append(contact)
        else:
            plan.unchanged += 1
    return plan


def apply_import(*, session: Session, staff: Staff, plan: ContactImportPlan) -> None:
    """Apply a plan from :func:`plan_import` (senders and admins); one with bad lines is refused
    whole, so nothing is imported."""
    require_role(staff, StaffRole.SENDER)
    if plan.errors:
        raise StaffError(
            "address_book.import_invalid",
            f"{len(plan.errors)} bad line(s); nothing was imported",
            "誤りのある行があるため、取り込みませんでした。",
            details={"problems": [f"line {e['line']}: {e['code']}" for e in plan.errors]},
        )
    existing = {(e.email, e.company): e for e in session.scalars(select(AddressBookEntry))}
    for contact in plan.created:
        session.add(AddressBookEntry(**asdict(contact), created_by=staff.email))
    for contact in plan.updated:
        entry = existing[(contact.email, contact.company)]
        for key, value in asdict(contact).items():
            setattr(entry, key, value)
    record_event(
        session=session,
        action="address_book.import",
        actor=staff.email,
        detail={"created": len(plan.created), "updated": len(plan.updated)},
    )


def export_csv(*, session: Session, staff: Staff) -> bytes:
    """The whole book as CSV (UTF-8 with BOM, so Excel reads the Japanese), in the import's
    format; an audit event, as it hands out personal data."""
    _require_reader(staff)
    out = io.StringIO(newline="")
    writer = SafeCsvWriter(out, lineterminator="\r\n")
    writer.writerow(_EXPORT_HEADER)
    entries = list_contacts(session=session, staff=staff, limit=1_000_000)
    for e in entries:
        writer.writerow((e.company, e.name, e.email, e.department, e.note))
    record_event(
        session=session,
        action="address_book.export",
        actor=staff.email,
        detail={"count": len(entries)},
    )
    return ("\ufeff" + out.getvalue()).encode("utf-8")
