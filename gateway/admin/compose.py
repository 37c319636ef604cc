"""Create and send an envelope from the staff pages (senders and admins), in two steps.

Step 1, ``/admin/envelopes/new``: the facts (件名, 管理番号, 取引先, 金額, 取引年月日, 締切日,
所属), the PDFs, and the parties in routing order, picked from the address book or typed, each
approver and signer with an access code. It is checked the way the API checks an envelope (the
same document limits and signing engine, the same access-code policy, codes hashed at once) and
kept as a compose draft (:mod:`gateway.admin.compose_drafts`); a refused step keeps what was
entered, the PDFs included.

Step 2, ``/admin/envelopes/new/<draft>/fields``: the pages rendered on the server; the sender drags
a text box onto a page for a party (or types its position in millimetres, without a mouse), and
「送信する」 creates the envelope, sets the access codes and sends it in one transaction (or
「下書きとして保存」 creates it unsent, to be sent from its detail page).
"""

from __future__ import annotations

import datetime as dt
import itertools
import re
import unicodedata
from collections.abc import Callable
from dataclasses import asdict, dataclass
from decimal import Decimal, InvalidOperation
from typing import Annotated, Any, TypeVar

from fastapi import APIRouter, Path, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session
from starlette.datastructures import FormData, UploadFile

from core.envelopes.address_book import list_contacts
from core.envelopes.creation import (
    DocumentInput,
    FieldInput,
    PartyInput,
    check_documents,
    check_parties,
    check_staff_party,
    create_envelope,
    discard_envelope_blobs,
)
from core.envelopes.lifecycle import send_envelope
from core.errors import GatewayError, InputError, StaffError
from core.intake.consent import (
    CONSTRUCTION,
    CONTRACT_TYPES,
    current_consent,
    has_withdrawn,
    require_consent,
)
from core.intake.contractors import find_contractor
from core.model import Staff, StaffRole
from core.signing import PageArea
from core.staff.access import chooses_department, department_for_new_envelope
from core.staff.accounts import check_email, check_name
from core.states import PartyRole
from core.text_boxes import MM, check_text_box
from gateway.admin.address_book import contact_label
from gateway.admin.compose_drafts import ComposeDraft, DraftDocument, DraftParty, DraftStore
from gateway.admin.pages import (
    admin_page,
    parse_amount,
    parse_date,
    sender_action,
    staff_with_role,
    to_login,
)
from gateway.api.envelopes import (
    check_content_length,
    check_management_number,
    hash_access_codes,
    store_access_codes,
)
from gateway.context import AppContext
from gateway.deps import ClientIpDep, ContextDep, SessionDep
from gateway.pages.render import PageBox, rect_at
from gateway.pages.signing import check_csrf, read_form

router = APIRouter(prefix="/admin", include_in_schema=False)

DraftId = Annotated[str, Path(pattern=r"^[0-9a-f]{32}$")]
T = TypeVar("T")

ROLE_JA = {
    PartyRole.APPROVER.value: "承認者",
    PartyRole.SIGNER.value: "署名者",
    PartyRole.CC.value: "CC（写し送付）",
}
_FACTS = (
    "title",
    "management_number",
    "counterparty",
    "amount",
    "transaction_date",
    "deadline",
    "department",
    "contract_type",
    "contractor_number",
)
_PARTY_COLUMNS = ("role", "pick", "company", "name", "email", "code", "auth")
_BOX_COLUMNS = ("document", "party", "page", "x1", "y1", "x2", "y2", "label", "required", "max")
# Contacts written into the page's picker; beyond them the script asks
# /admin/address-book/lookup as the sender types.
_PICKER = 200
_NEW_POSITION = ("x", "y", "w", "h", "label")  # cleared once a typed box is added


def _sender(request: Request, context: AppContext, session: Session) -> Staff | None:
    return staff_with_role(request, context, session, StaffRole.SENDER)


def _text(value: object) -> str:
    return value.strip() if isinstance(value, str) else ""


class Problems(list[str]):
    """The Japanese messages of everything refused in one submitted step."""

    def check(self, run: Callable[..., T], *args: Any, prefix: str = "", **kwargs: Any) -> T | None:
        """``run(*args, **kwargs)``, or None with its error's Japanese message kept (after
        ``prefix``, which says which row it is about)."""
        try:
            return run(*args, **kwargs)
        except GatewayError as exc:
            self.append(prefix + exc.message_ja)
            return None


# --- step 1: facts, documents, parties -----------------------------------------------------


@dataclass
class PartyRow:
    """One party row of the step 1 form, as typed."""

    role: str = PartyRole.SIGNER.value
    pick: str = ""
    company: str = ""
    name: str = ""
    email: str = ""
    code: str = ""
    auth: str = "code"  # "code": mailed link + access code; "staff": staff login

    @property
    def staff(self) -> bool:
        """True when the party signs as staff (staff login, no access code)."""
        return self.auth == "staff"

    def blank(self) -> bool:
        """True for a row nobody filled in (it is left out)."""
        return not (self.pick or self.company or self.name or self.email or self.code)


def _party_rows(form: FormData) -> list[PartyRow]:
    columns = [[_text(v) for v in form.getlist(f"party_{c}")] for c in _PARTY_COLUMNS]
    rows = [PartyRow(*values) for values in itertools.zip_longest(*columns, fillvalue="")]
    return [row for row in rows if not row.blank()]


def _fill_from_address_book(session: Session, staff: Staff, row: PartyRow) -> PartyRow:
    """A row whose picker holds a contact (typed or chosen without the page's script) and no
    name or address of its own takes the contact's; an unknown contact is refused."""
    if not row.pick or row.name or row.email:
        return row
    email = row.pick.rpartition("<")[2].rstrip(">").strip()
    for entry in list_contacts(session=session, staff=staff, search=email):
        if contact_label(entry) == row.pick:
            row.company, row.name, row.email = entry.company, entry.name, entry.email
            return row
    raise StaffError(
        "address_book.not_found",
        "the picked contact is not in the address book",
        f"アドレス帳に「{row.pick}」が見つかりません。候補から選ぶか、氏名とメールアドレスを入力してください。",
    )


def _parse_amount(text: str) -> Decimal | None:
    try:
        amount = parse_amount(text)
    except InvalidOperation:
        amount = Decimal(-1)
    if amount is not None and not (0 <= amount < 10**15 and amount == amount.to_integral()):
        raise InputError(
            "envelope.bad_amount",
            f"not an amount: {text!r}",
            "金額は円単位の数字で入力してください。",
        )
    return amount


def _parse_date(text: str, label: str) -> dt.date | None:
    try:
        return parse_date(text)
    except ValueError as exc:
        raise InputError(
            "envelope.bad_date",
            f"{label}: not a date: {text!r}",
            f"{label}は YYYY-MM-DD の形式で入力してください。",
        ) from exc


def _consent_of(session: Session, draft: ComposeDraft) -> tuple[str | None, str | None]:
    """The contractor (by 法人番号 or 業者番号) and, for a construction contract, its consent
    in force; ``consent.required`` / ``consent.withdrawn`` otherwise."""
    number = unicodedata.normalize("NFKC", draft.contractor_number).strip()
    contractor = None
    if number:
        contractor = find_contractor(
            session=session,
            corporate_number=number if re.fullmatch(r"[0-9]{13}", number) else None,
            registry_code=None if re.fullmatch(r"[0-9]{13}", number) else number,
        )
    if contractor is not None and has_withdrawn(session=session, contractor_id=contractor.id):
        raise InputError(
            "consent.withdrawn",
            "the contractor withdrew its consent",
            "受注者が電子契約の承諾を撤回しているため、封筒を作成できません。",
        )
    consent = None
    if draft.contract_type == CONSTRUCTION and contractor is not None:
        consent = current_consent(session=session, contractor_id=contractor.id)
    require_consent(
        session=session,
        contract_type=draft.contract_type,
        consent_id=consent.id if consent is not None else None,
    )
    return (
        contractor.id if contractor is not None else None,
        consent.id if consent is not None else None,
    )


def _check_facts(session: Session, staff: Staff, draft: ComposeDraft, problems: Problems) -> None:
    if not draft.title or len(draft.title) > 300:
        problems.append("件名を300文字以内で入力してください。")
    if len(draft.management_number) > 64 or len(draft.counterparty) > 200:
        problems.append("管理番号は64文字以内、取引先は200文字以内で入力してください。")
    problems.check(check_management_number, session, draft.management_number or None)
    problems.check(_parse_amount, draft.amount)
    problems.check(_parse_date, draft.transaction_date, "取引年月日")
    problems.check(_parse_date, draft.deadline, "締切日")
    if draft.contract_type not in CONTRACT_TYPES:
        problems.append("契約種別(建設工事/建設工事以外)を選んでください。")
    else:
        problems.check(_consent_of, session, draft)
    before = len(problems)
    department = problems.check(department_for_new_envelope, staff, draft.department)
    if len(problems) == before:  # else the refused one stays on the form
        draft.department = department or ""


def _store_uploads(
    context: AppContext, store: DraftStore, uploads: list[DocumentInput], problems: Problems
) -> list[DraftDocument] | None:
    """The uploaded PDFs, stored once the limits and the signing engine accept them; None when
    nothing was uploaded or the upload is refused."""
    if not uploads:
        return None
    runtime = context.gateway.runtime
    infos = problems.check(check_documents, runtime=runtime, documents=uploads)
    if infos is None:
        return None
    return [
        DraftDocument(d.name, store.put_document(d.data), len(d.data), info.page_count)
        for d, info in zip(uploads, infos, strict=True)
    ]


def _check_parties(
    context: AppContext, session: Session, staff: Staff, rows: list[PartyRow], problems: Problems
) -> list[DraftParty]:
    before = len(problems)
    for number, row in enumerate(rows, start=1):
        prefix = f"{number}番目の署名者: "
        if problems.check(_fill_from_address_book, session, staff, row, prefix=prefix) is None:
            continue
        if row.role not in ROLE_JA:
            problems.append(prefix + "役割を選んでください。")
        row.name = problems.check(check_name, row.name, prefix=prefix) or row.name
        row.email = problems.check(check_email, row.email, prefix=prefix) or row.email
        if row.code and row.role != PartyRole.CC.value and not row.staff:
            problems.check(context.policy.check_format, row.code, prefix=prefix)
        if len(row.company) > 200:
            problems.append(prefix + "会社名は200文字以内で入力してください。")
    if len(problems) > before:
        return []
    runtime = context.gateway.runtime
    inputs = [
        PartyInput(PartyRole(r.role), r.name, r.email, r.company or None, staff=r.staff)
        for r in rows
    ]
    problems.check(check_parties, runtime=runtime, parties=inputs)
    for number, row in enumerate(rows, start=1):
        if row.staff and row.role != PartyRole.CC.value:
            problems.check(check_staff_party, session=session, email=row.email,
                           prefix=f"{number}番目の署名者: ")  # fmt: skip
    hashes = problems.check(
        hash_access_codes,
        context.policy,
        [(r.role, (r.code or None) if not r.staff else None) for r in rows],
        [r.staff and r.role != PartyRole.CC.value for r in rows],
    )
    if hashes is None:
        return []
    return [
        DraftParty(r.role, r.company, r.name, r.email, code, staff=r.staff)
        for r, code in zip(rows, hashes, strict=True)
    ]


def _departments(session: Session) -> list[str]:
    """The staff's departments, suggested to those who may choose one."""
    names = session.scalars(select(Staff.department).distinct()).all()
    return sorted({n for n in names if n})


def _step1_page(
    request: Request,
    context: AppContext,
    session: Session,
    staff: Staff,
    draft: ComposeDraft,
    rows: list[PartyRow],
    *,
    draft_id: str | None = None,
    problems: list[str] | None = None,
    status: int = 200,
) -> HTMLResponse:
    choose = chooses_department(staff)
    return admin_page(
        request,
        context,
        "admin/compose.html",
        staff,
        form=draft,
        rows=rows or [PartyRow(), PartyRow(), PartyRow()],
        roles=list(ROLE_JA.items()),
        contacts=[
            (contact_label(e), e)
            for e in list_contacts(session=session, staff=staff, limit=_PICKER)
        ],
        departments=_departments(session) if choose else [],
        choose_department=choose,
        draft_id=draft_id,
        limits=context.gateway.runtime.limits,
        problems=problems or [],
        status=status,
    )


@router.get("/envelopes/new", response_class=HTMLResponse)
def compose_form(
    request: Request, context: ContextDep, session: SessionDep, draft: str | None = None
) -> Response:
    """Step 1: the facts, the PDFs and the parties; with ``draft``, that draft to correct (the
    access codes are typed again: only their hashes were kept)."""
    staff = _sender(request, context, session)
    if staff is None:
        return to_login(request)
    if draft:
        entered = DraftStore(context.gateway.runtime.blobs).load(draft, staff)
        rows = [
            PartyRow(p.role, "", p.company, p.name, p.email, "", "staff" if p.staff else "code")
            for p in entered.parties
        ]
    else:
        entered, rows = ComposeDraft(staff_id=staff.id, department=staff.department or ""), []
    return _step1_page(request, context, session, staff, entered, rows, draft_id=draft)


async def _uploads(form: FormData, limit: int) -> list[DocumentInput]:
    documents = []
    for part in form.getlist("documents"):
        if isinstance(part, UploadFile) and part.filename:
            # One byte over the limit is enough for the limit check to refuse it.
            data = await part.read(limit + 1)
            if data:
                documents.append(DocumentInput(name=part.filename, data=data))
    return documents


@router.post("/envelopes/new", response_class=HTMLResponse)
async def compose_submit(request: Request, context: ContextDep, session: SessionDep) -> Response:
    """Check step 1 and keep it as a draft; on to step 2, or the form again with the problems."""
    limits = context.gateway.runtime.limits
    check_content_length(request, limits.max_envelope_bytes + 2 * 1024 * 1024)
    fields = 20 + len(_PARTY_COLUMNS) * limits.max_parties
    async with request.form(max_files=limits.max_files + 1, max_fields=fields) as form:
        check_csrf(request, context, _text(form.get("csrf_token")))
        values = {key: _text(form.get(key)) for key in _FACTS}
        rows = _party_rows(form)
        previous_id = _text(form.get("draft")) or None
        uploads = await _uploads(form, limits.max_file_bytes)

    def run() -> Response:
        staff = _sender(request, context, session)
        if staff is None:
            return to_login(request)
        store = DraftStore(context.gateway.runtime.blobs)
        previous = store.load(previous_id, staff) if previous_id else None
        draft = ComposeDraft(
            staff_id=staff.id,
            title=values["title"],
            management_number=values["management_number"],
            counterparty=values["counterparty"],
            amount=values["amount"],
            transaction_date=values["transaction_date"],
            deadline=values["deadline"],
            department=values["department"],
            contract_type=values["contract_type"],
            contractor_number=values["contractor_number"],
        )
        if previous is not None:
            draft.created_at = previous.created_at  # its PDFs are as old as that
        problems = Problems()
        _check_facts(session, staff, draft, problems)
        stored = _store_uploads(context, store, uploads, problems)
        kept = previous.documents if previous is not None else []
        draft.documents = stored if stored is not None else kept
        if not draft.documents and not uploads:
            problems.append("PDFファイルを選択してください。")
        draft.parties = _check_parties(context, session, staff, rows, problems)
        draft.ready = not problems
        draft_id = None
        if draft.documents:
            draft_id = store.save(draft, replaces=previous_id)
            if stored is not None:
                store.discard_documents(kept)
        if draft.ready:
            return RedirectResponse(f"/admin/envelopes/new/{draft_id}/fields", status_code=303)
        return _step1_page(
            request,
            context,
            session,
            staff,
            draft,
            rows,
            draft_id=draft_id,
            problems=problems,
            status=422,
        )

    return await run_in_threadpool(run)


# --- step 2: text boxes, then create and send ------------------------------------------------


@dataclass
class PlacedBox:
    """One text box placed in step 2: document and party by index, page 1-based, ``rect``
    (x1, y1, x2, y2) in PDF points with the origin bottom-left."""

    document: int
    party: int
    page: int
    rect: tuple[float, float, float, float]
    label: str
    required: bool = True
    max_length: int = 200

    def as_field(self) -> FieldInput:
        """The box as :func:`core.envelopes.creation.create_envelope` takes it."""
        return FieldInput(
            document=self.document,
            party=self.party,
            label=self.label,
            page=self.page,
            rect=self.rect,
            required=self.required,
            max_length=self.max_length,
        )


def _posted_boxes(form: FormData, problems: Problems) -> list[PlacedBox]:
    columns = [[_text(v) for v in form.getlist(f"box_{c}")] for c in _BOX_COLUMNS]
    boxes = []
    for doc, party, page, x1, y1, x2, y2, label, required, most in zip(*columns, strict=False):
        try:
            rect = (float(x1), float(y1), float(x2), float(y2))
            boxes.append(
                PlacedBox(int(doc), int(party), int(page), rect, label, required == "1", int(most))
            )
        except ValueError:
            problems.append("テキストボックスの指定が正しくないため、取り除きました。")
    return boxes


def _number(text: str, label: str) -> float:
    try:
        return float(text)
    except ValueError as exc:
        raise InputError(
            "envelope.bad_field", f"{label}: not a number", f"{label}を数字で入力してください。"
        ) from exc


def _box_from_millimetres(form: FormData, pages_of: Callable[[int], list[PageBox]]) -> PlacedBox:
    """The box typed in the no-mouse form: page, and left, top, width, height in mm from the
    page's top-left corner, as displayed."""
    document = int(_number(_text(form.get("new_document")) or "0", "文書"))
    page = int(_number(_text(form.get("new_page")), "ページ"))
    left, top, width, height = (
        _number(_text(form.get(f"new_{key}")), label) * MM
        for key, label in (
            ("x", "左端からの位置"),
            ("y", "上端からの位置"),
            ("w", "幅"),
            ("h", "高さ"),
        )
    )
    pages = pages_of(document)
    # An unknown page gets a box nowhere, which check_box then refuses with the reason.
    box = pages[page - 1] if 1 <= page <= len(pages) else PageBox(0, 0, 0, 0)
    return PlacedBox(
        document=document,
        party=int(_number(_text(form.get("new_party")) or "-1", "署名者")),
        page=page,
        rect=rect_at(box, left, top, width, height),
        label=_text(form.get("new_label")),
        required=form.get("new_required") == "1",
        max_length=int(_number(_text(form.get("new_max")) or "200", "最大文字数")),
    )


def _field_problem(number: int, message_ja: str) -> InputError:
    return InputError(
        "envelope.bad_field",
        f"field {number} refused",
        f"{number}番目のテキストボックス: {message_ja}",
        details={"field": number},
    )


def check_box(
    number: int, box: PlacedBox, draft: ComposeDraft, pages_of: Callable[[int], list[PageBox]]
) -> None:
    """Refuse a box that is not on a page of the draft's documents, belongs to no approver or
    signer, or breaks :mod:`core.text_boxes`' rule (``envelope.bad_field``, Japanese message)."""
    if not 0 <= box.document < len(draft.documents):
        raise _field_problem(number, "文書を選んでください。")
    if not 0 <= box.party < len(draft.parties) or draft.parties[box.party].role == PartyRole.CC:
        raise _field_problem(number, "入力する承認者または署名者を選んでください。")
    check_text_box(
        number=number,
        label=box.label,
        rect=box.rect,
        max_length=box.max_length,
        page=box.page,
        pages=[
            PageArea(p.left, p.bottom, p.right, p.top, p.rotation) for p in pages_of(box.document)
        ],
    )


def _page_boxes(
    context: AppContext, store: DraftStore, draft: ComposeDraft
) -> Callable[[int], list[PageBox]]:
    """The pages (visible area, rotation) of each of the draft's documents, by index."""

    def pages_of(index: int) -> list[PageBox]:
        if not 0 <= index < len(draft.documents):
            return []
        blob_id = draft.documents[index].blob_id
        return context.pages.page_boxes(("compose", blob_id), lambda: store.document(blob_id))

    return pages_of


def _party_label(number: int, party: DraftParty) -> str:
    company = f"{party.company} " if party.company else ""
    return f"{number}. {ROLE_JA[party.role]} {company}{party.name}"


def _step2_page(
    request: Request,
    context: AppContext,
    staff: Staff,
    draft_id: str,
    draft: ComposeDraft,
    boxes: list[PlacedBox],
    *,
    new: dict[str, str] | None = None,
    problems: list[str] | None = None,
    status: int = 200,
) -> HTMLResponse:
    pages_of = _page_boxes(context, DraftStore(context.gateway.runtime.blobs), draft)
    documents = [
        {
            "index": index,
            "name": doc.name,
            "pages": [
                {"number": n, "box": box, "ratio": round(box.size[1] / box.size[0], 5)}
                for n, box in enumerate(pages_of(index), start=1)
            ],
        }
        for index, doc in enumerate(draft.documents)
    ]
    parties = [
        {"index": i, "label": _party_label(i + 1, p), "fills": p.role != PartyRole.CC.value}
        for i, p in enumerate(draft.parties)
    ]
    first_filler = next((p["index"] for p in parties if p["fills"]), 0)
    return admin_page(
        request,
        context,
        "admin/compose_fields.html",
        staff,
        draft_id=draft_id,
        draft=draft,
        documents=documents,
        parties=parties,
        boxes=[
            {
                **asdict(b),
                # A posted box may name no party (it is refused, and shown to be corrected).
                "party_label": parties[b.party]["label"] if 0 <= b.party < len(parties) else "",
            }
            for b in boxes
        ],
        new={"party": str(first_filler), "required": "1", "max": "200", **(new or {})},
        problems=problems or [],
        status=status,
    )


@router.get("/envelopes/new/{draft_id}/fields", response_class=HTMLResponse)
def fields_form(
    request: Request, draft_id: DraftId, context: ContextDep, session: SessionDep
) -> Response:
    """Step 2: the pages, to place text boxes on."""
    staff = _sender(request, context, session)
    if staff is None:
        return to_login(request)
    draft = DraftStore(context.gateway.runtime.blobs).load(draft_id, staff)
    if not draft.ready:
        return RedirectResponse(f"/admin/envelopes/new?draft={draft_id}", status_code=303)
    return _step2_page(request, context, staff, draft_id, draft, [])


@router.get("/envelopes/new/{draft_id}/documents/{index}/pages/{page}.png")
def draft_page_image(
    request: Request,
    draft_id: DraftId,
    index: Annotated[int, Path(ge=0, le=1000)],
    page: Annotated[int, Path(ge=1, le=100000)],
    context: ContextDep,
    session: SessionDep,
) -> Response:
    """One page of one of the draft's PDFs, as PNG (the draft's maker only)."""
    staff = _sender(request, context, session)
    if staff is None:
        return Response(status_code=403)
    store = DraftStore(context.gateway.runtime.blobs)
    draft = store.load(draft_id, staff)
    if index >= len(draft.documents):
        return Response(status_code=404)
    blob_id = draft.documents[index].blob_id
    png = context.pages.png(("compose", blob_id), lambda: store.document(blob_id), page - 1)
    return Response(png, media_type="image/png", headers={"Cache-Control": "private, no-store"})


def _create(
    context: AppContext,
    session: Session,
    staff: Staff,
    draft: ComposeDraft,
    boxes: list[PlacedBox],
    *,
    send: bool,
    ip: str | None,
) -> str:
    """Create the envelope of a checked draft, set its access codes and (with ``send``) send
    it, all in one transaction; returns its id."""
    runtime = context.gateway.runtime
    store = DraftStore(runtime.blobs)
    check_management_number(session, draft.management_number or None)
    contractor_id, consent_id = _consent_of(session, draft)
    envelope = create_envelope(
        session=session,
        runtime=runtime,
        title=draft.title,
        creator=staff.name,
        creator_email=staff.email,
        documents=[DocumentInput(d.name, store.document(d.blob_id)) for d in draft.documents],
        parties=[
            PartyInput(PartyRole(p.role), p.name, p.email, p.company or None, staff=p.staff)
            for p in draft.parties
        ],
        fields=[box.as_field() for box in boxes],
        management_number=draft.management_number or None,
        counterparty=draft.counterparty or None,
        amount=_parse_amount(draft.amount),
        transaction_date=_parse_date(draft.transaction_date, "取引年月日"),
        deadline=_parse_date(draft.deadline, "締切日"),
        actor=staff.email,
        department=department_for_new_envelope(staff, draft.department),
        contract_type=draft.contract_type,
        consent_id=consent_id,
    )
    envelope.contractor_id = contractor_id
    try:
        store_access_codes(session, envelope, [p.code_hash for p in draft.parties])
        if send:
            send_envelope(
                session=session, runtime=runtime, envelope_id=envelope.id, actor=staff.email, ip=ip
            )
        session.commit()
    except BaseException:
        session.rollback()
        discard_envelope_blobs(runtime=runtime, envelope=envelope)
        raise
    return envelope.id


@router.post("/envelopes/new/{draft_id}/fields", response_class=HTMLResponse)
async def fields_submit(
    request: Request, draft_id: DraftId, context: ContextDep, session: SessionDep, ip: ClientIpDep
) -> Response:
    """Add or remove a text box (the page again), or create the envelope: 「送信する」 sends it,
    「下書きとして保存」 keeps it as an unsent draft."""
    form = await read_form(request, 2000)
    check_csrf(request, context, _text(form.get("csrf_token")))
    action = _text(form.get("action"))
    remove = _text(form.get("remove"))
    new = {k.removeprefix("new_"): _text(v) for k, v in form.multi_items() if k.startswith("new_")}
    new["required"] = "1" if form.get("new_required") == "1" else ""

    def run() -> Response:
        staff = _sender(request, context, session)
        if staff is None:
            return to_login(request)
        store = DraftStore(context.gateway.runtime.blobs)
        draft = store.load(draft_id, staff)
        if not draft.ready:
            return RedirectResponse(f"/admin/envelopes/new?draft={draft_id}", status_code=303)
        pages_of = _page_boxes(context, store, draft)
        problems = Problems()
        boxes = _posted_boxes(form, problems)

        def again(status: int, values: dict[str, str]) -> HTMLResponse:
            return _step2_page(
                request,
                context,
                staff,
                draft_id,
                draft,
                boxes,
                new=values,
                problems=problems,
                status=status,
            )

        if remove.isdigit() and int(remove) < len(boxes):
            del boxes[int(remove)]
            return again(200, new)
        if action == "add":
            before = len(problems)
            box = problems.check(_box_from_millimetres, form, pages_of)
            if box is not None:
                problems.check(check_box, len(boxes) + 1, box, draft, pages_of)
            if box is None or len(problems) > before:
                return again(422, new)
            boxes.append(box)
            return again(200, {k: v for k, v in new.items() if k not in _NEW_POSITION})
        for number, box in enumerate(boxes, start=1):
            problems.check(check_box, number, box, draft, pages_of)
        if not problems:
            try:
                envelope_id = _create(
                    context, session, staff, draft, boxes, send=action != "save", ip=ip
                )
            except GatewayError as exc:
                session.rollback()
                problems.append(exc.message_ja)
            except IntegrityError:
                session.rollback()  # a management number taken meanwhile
                problems.append("この管理番号は既に使われています。")
        if problems:
            return again(422, new)
        store.discard(draft_id, draft)
        if action != "save":
            context.wake_mailer()
        return RedirectResponse(f"/admin/envelopes/{envelope_id}", status_code=303)

    return await run_in_threadpool(run)


# --- send a draft saved earlier --------------------------------------------------------------


@router.post("/envelopes/{envelope_id}/send")
async def send_draft(
    request: Request, envelope_id: str, context: ContextDep, session: SessionDep, ip: ClientIpDep
) -> Response:
    """Send an envelope saved as a draft (senders and admins who see it)."""
    form = await read_form(request, 10)
    check_csrf(request, context, _text(form.get("csrf_token")))

    def act(staff: Staff, envelope: Any) -> object:
        return send_envelope(
            session=session,
            runtime=context.gateway.runtime,
            envelope_id=envelope.id,
            actor=staff.email,
            ip=ip,
        )

    return await run_in_threadpool(sender_action, request, context, session, envelope_id, act)
