"""The signing pages (``/sign/<token>/...``) and the completion download (``/download/<token>``).

Server-rendered Japanese pages that work in Edge and Chrome with no plugin: the access-code
page, the documents (pages rendered to PNG on the server, one tab per document, the party's
text boxes placed over the page), 「完了する」 then 「署名手続きを完了する」, 「同意せずに却下する」
with a reason, forwarding to another person, download of the documents for review, and the
completion page. Every post carries a CSRF token; every view, download, code failure, sign,
decline and forward is an audit event with the time, the IP and the actor.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated, Any
from urllib.parse import urlsplit

from fastapi import APIRouter, Path, Query, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from sqlalchemy.orm import Session
from starlette.datastructures import FormData

from core.envelopes.approvals import record_approval, record_view
from core.envelopes.documents import document_at, read_document
from core.envelopes.lifecycle import decline, get_party
from core.envelopes.links import check_access_code, forward_party, open_link
from core.errors import AuthError, GatewayError, NotFoundError, StateError
from core.model import Document, Envelope, Field, LinkPurpose, Party, SigningLink
from core.records.audit import record_event
from core.states import ACTIONABLE_PARTY_STATES, EnvelopeState, PartyState
from core.text_boxes import check_values_fit
from gateway.context import AppContext
from gateway.deps import ClientIpDep, ContextDep, SessionDep, get_client_ip
from gateway.downloads import file_response
from gateway.pages.cookies import CSRF_COOKIE, SESSION_COOKIE
from gateway.pages.render import PAGE_WIDTHS, fit_width, page_etag, placement

router = APIRouter(include_in_schema=False)

Token = Annotated[str, Path(min_length=16, max_length=128, pattern=r"^[A-Za-z0-9_-]+$")]
Position = Annotated[int, Path(ge=0, le=1000)]

AUTH_METHOD = "email+access_code"

CLOSED_JA = {
    EnvelopeState.COMPLETED: "この封筒は、全ての関係者の手続きが完了しています。",
    EnvelopeState.SEALING: "全ての署名が完了し、締結処理中です。完了後にメールでお知らせします。",
    EnvelopeState.DECLINED: "この封筒は却下されたため、手続きは終了しました。",
    EnvelopeState.CANCELLED: "この封筒は送信者により取り消されました。ご対応は不要です。",
    EnvelopeState.EXPIRED: "この封筒は期限切れのため、手続きは終了しました。",
    EnvelopeState.DRAFT: "この封筒はまだ送信されていません。",
}


# --- helpers -----------------------------------------------------------------------------


def _csrf_nonce(request: Request, context: AppContext) -> tuple[str, bool]:
    nonce = request.cookies.get(CSRF_COOKIE)
    if nonce and 16 <= len(nonce) <= 64:
        return nonce, False
    return context.cookies.new_nonce(), True


def render_page(
    request: Request,
    context: AppContext,
    template: str,
    *,
    status: int = 200,
    **values: Any,
) -> HTMLResponse:
    """A page with the buyer's name and a CSRF token for its forms."""
    nonce, new = _csrf_nonce(request, context)
    html = context.templates.get_template(template).render(
        buyer=context.gateway.runtime.buyer_name,
        contact=context.gateway.settings.buyer.contact,
        csrf_token=context.cookies.csrf_token(nonce),
        **values,
    )
    response = HTMLResponse(html, status_code=status)
    if new:
        response.set_cookie(
            CSRF_COOKIE,
            nonce,
            httponly=True,
            samesite="lax",
            secure=context.secure_cookies,
            path="/",
        )
    return response


def _own_origins(request: Request, context: AppContext) -> set[str]:
    public = urlsplit(context.gateway.settings.server.public_url)
    return {
        f"{public.scheme}://{public.netloc}",
        f"{request.url.scheme}://{request.url.netloc}",
    }


def check_csrf(request: Request, context: AppContext, token: str | None) -> None:
    """Refuse a post from another site, or without the token that matches the cookie."""
    origin = request.headers.get("origin")
    if origin and origin != "null" and origin not in _own_origins(request, context):
        raise _csrf_error()
    if not context.cookies.csrf_ok(request.cookies.get(CSRF_COOKIE), token):
        raise _csrf_error()


def _csrf_error() -> GatewayError:
    return GatewayError(
        "request.csrf",
        "missing or wrong CSRF token",
        "画面の有効期限が切れたか、不正な送信です。メールのURLからもう一度開いてください。",
    )


def _redirect(url: str) -> RedirectResponse:
    return RedirectResponse(url, status_code=303)


def _base(token: str) -> str:
    return f"/sign/{token}"


def _signed_in(request: Request, context: AppContext, link: SigningLink) -> bool:
    return context.cookies.session_link(request.cookies.get(SESSION_COOKIE)) == link.id


def _open_party(session: Session, token: str) -> tuple[SigningLink, Party]:
    link = open_link(session=session, token=token, purpose=LinkPurpose.SIGN)
    assert link.party_id is not None
    party = get_party(session=session, envelope_id=link.envelope_id, party_id=link.party_id)
    return link, party


def closed_message(party: Party) -> str | None:
    """Why this party cannot act any more, in Japanese; None while it can."""
    envelope = party.envelope
    if envelope.state is not EnvelopeState.SENT:
        return CLOSED_JA[envelope.state]
    if party.state in (PartyState.COMPLETED, PartyState.SIGNING):
        return (
            "この署名依頼の手続きは完了しています。全ての署名者の手続き完了後、"
            "「電子署名完了のお知らせ」メールをお送りします。"
        )
    if party.state is PartyState.DECLINED:
        return "この署名依頼は却下済みです。"
    if party.state not in ACTIONABLE_PARTY_STATES:
        return "まだ順番が回ってきていません。前の署名者の手続き完了後に操作してください。"
    return None


def _pdf(name: str, data: bytes, *, inline: bool = False) -> Response:
    return file_response(data, name, inline=inline)


def _document_loader(context: AppContext, document: Document) -> Callable[[], bytes]:
    runtime = context.gateway.runtime
    return lambda: read_document(runtime=runtime, document=document)


def _render_key(document: Document) -> tuple[str, int]:
    # A new revision (another party's signature) gives new page images.
    return (document.id, len(document.revisions))


def rotation_of_page(context: AppContext) -> Callable[[Field], int]:
    """The /Rotate of the page a box is on (read once per document revision and cached by the
    page renderer), for :func:`core.text_boxes.check_values_fit`."""

    def rotation(field: Field) -> int:
        doc = field.document
        boxes = context.pages.page_boxes(_render_key(doc), _document_loader(context, doc))
        return boxes[field.page - 1].rotation if 1 <= field.page <= len(boxes) else 0

    return rotation


def _documents_view(context: AppContext, envelope: Envelope, party: Party) -> list[dict[str, Any]]:
    """Documents, their pages (size as an aspect ratio) and this party's boxes, in % of the page."""
    own = [f for f in party.fields]
    views = []
    for doc in envelope.documents:
        page_boxes = context.pages.page_boxes(_render_key(doc), _document_loader(context, doc))
        pages = []
        for number, page_box in enumerate(page_boxes, start=1):
            boxes = [
                {"field": f, **placement(page_box, (f.x1, f.y1, f.x2, f.y2))}
                for f in own
                if f.document_id == doc.id and f.page == number
            ]
            width, height = page_box.size
            pages.append({"number": number, "width": width, "height": height, "boxes": boxes})
        # The revision in the image URLs: cached images stay valid until another signature.
        views.append({"doc": doc, "pages": pages, "revision": _render_key(doc)[1]})
    return views


def _checklist(envelope: Envelope, party: Party) -> list[dict[str, Any]]:
    positions = {d.id: d for d in envelope.documents}
    return [
        {"field": f, "document": positions[f.document_id]}
        for f in sorted(
            party.fields, key=lambda f: (positions[f.document_id].position, f.page, -f.y2)
        )
    ]


def render_documents(
    request: Request,
    context: AppContext,
    party: Party,
    *,
    base: str,
    error: str | None = None,
    values: dict[str, str] | None = None,
    status: int = 200,
    **extra: Any,
) -> HTMLResponse:
    """The document view with this party's boxes and the two-step 完了 (the signing pages under
    ``base``; the staff signing page passes its own ``base`` and ``extra``)."""
    envelope = party.envelope
    return render_page(
        request,
        context,
        "pages/documents.html",
        status=status,
        base=base,
        envelope=envelope,
        party=party,
        documents=_documents_view(context, envelope, party),
        checklist=_checklist(envelope, party),
        required_count=sum(1 for f in party.fields if f.required),
        values=values or {f.id: f.value or "" for f in party.fields},
        error=error,
        page_widths=PAGE_WIDTHS,
        **extra,
    )


def _documents_page(
    request: Request,
    context: AppContext,
    token: str,
    party: Party,
    *,
    error: str | None = None,
    values: dict[str, str] | None = None,
    status: int = 200,
) -> HTMLResponse:
    return render_documents(
        request, context, party, base=_base(token), error=error, values=values, status=status
    )


def require_session(
    request: Request, context: AppContext, session: Session, token: str
) -> tuple[SigningLink, Party] | RedirectResponse:
    link, party = _open_party(session, token)
    if not _signed_in(request, context, link):
        return _redirect(_base(token))
    return link, party


# --- access code -------------------------------------------------------------------------


@router.get("/sign/{token}", response_class=HTMLResponse)
def code_page(
    token: Token, request: Request, context: ContextDep, session: SessionDep, ip: ClientIpDep
) -> Response:
    """The access-code page (or where the request stands, when it is over)."""
    link, party = _open_party(session, token)
    closed = closed_message(party)
    if _signed_in(request, context, link):
        return _redirect(f"{_base(token)}/{'done' if closed else 'documents'}")
    if closed is not None:
        record_event(
            session=session,
            action="link.opened_closed",
            actor=link.email,
            envelope_id=link.envelope_id,
            party_id=party.id,
            ip=ip,
        )
        session.commit()
        return render_page(request, context, "pages/closed.html", message=closed)
    return render_page(request, context, "pages/code.html", base=_base(token), error=None)


def _submit_code(
    context: AppContext, token: str, code: str, ip: str | None
) -> tuple[str, GatewayError | None]:
    with context.gateway.sessions() as session:
        link = open_link(session=session, token=token, purpose=LinkPurpose.SIGN)
        try:
            check_access_code(
                session=session,
                runtime=context.gateway.runtime,
                link_id=link.id,
                code=code,
                policy=context.policy,
                ip=ip,
            )
        except AuthError as exc:
            if exc.code == "link.code_wrong":
                return link.id, exc
            raise
        return link.id, None


@router.post("/sign/{token}", response_class=HTMLResponse)
async def submit_code(token: Token, request: Request, context: ContextDep) -> Response:
    """Check the access code; on success, sign in to this link and show the documents."""
    form = await read_form(request, 10)
    check_csrf(request, context, form_text(form.get("csrf_token")))
    ip = get_client_ip(request, context)
    code = form_text(form.get("access_code"))[:64]
    try:
        link_id, wrong = await run_in_threadpool(_submit_code, context, token, code, ip)
    finally:
        context.wake_mailer()  # a lockout notice may be waiting
    if wrong is not None:
        return render_page(
            request,
            context,
            "pages/code.html",
            status=401,
            base=_base(token),
            error=wrong.message_ja,
        )
    response = _redirect(f"{_base(token)}/documents")
    response.set_cookie(
        SESSION_COOKIE,
        context.cookies.session_value(link_id, context.session_seconds),
        max_age=context.session_seconds,
        httponly=True,
        samesite="lax",
        secure=context.secure_cookies,
        path=_base(token),
    )
    return response


async def read_form(request: Request, max_fields: int) -> FormData:
    """The posted fields of a page form (no files accepted)."""
    async with request.form(max_files=0, max_fields=max_fields) as form:
        return form


def form_text(value: object) -> str:
    return value if isinstance(value, str) else ""


# --- documents ---------------------------------------------------------------------------


@router.get("/sign/{token}/documents", response_class=HTMLResponse)
def documents_page(
    token: Token, request: Request, context: ContextDep, session: SessionDep, ip: ClientIpDep
) -> Response:
    """The documents, page by page, with this party's text boxes and the actions."""
    checked = require_session(request, context, session, token)
    if isinstance(checked, RedirectResponse):
        return checked
    _link, party = checked
    if closed_message(party) is not None:
        return _redirect(f"{_base(token)}/done")
    party = record_view(session=session, envelope_id=party.envelope_id, party_id=party.id, ip=ip)
    record_event(
        session=session,
        action="documents.viewed",
        actor=party.email,
        envelope_id=party.envelope_id,
        party_id=party.id,
        ip=ip,
    )
    session.commit()
    return _documents_page(request, context, token, party)


def _viewable_document(
    request: Request, context: AppContext, session: Session, token: str, position: int
) -> tuple[Party, Document] | RedirectResponse:
    checked = require_session(request, context, session, token)
    if isinstance(checked, RedirectResponse):
        return checked
    _link, party = checked
    if party.envelope.state in (
        EnvelopeState.CANCELLED,
        EnvelopeState.DECLINED,
        EnvelopeState.EXPIRED,
    ):
        raise StateError(
            "state.envelope_not_open",
            "the envelope is closed",
            CLOSED_JA[party.envelope.state],
        )
    return party, document_at(party.envelope, position)


@router.get("/sign/{token}/documents/{position}/pages/{page}.png")
def page_image(
    token: Token,
    position: Position,
    page: Annotated[int, Path(ge=1, le=100000)],
    request: Request,
    context: ContextDep,
    session: SessionDep,
    w: Annotated[int | None, Query(ge=1, le=10000)] = None,
) -> Response:
    """One page of one document of this envelope (:func:`page_image_response`)."""
    checked = _viewable_document(request, context, session, token, position)
    if isinstance(checked, RedirectResponse):
        return Response(status_code=403)
    _party, doc = checked
    return page_image_response(request, context, doc, page, w)


def page_image_response(
    request: Request, context: AppContext, doc: Document, page: int, w: int | None
) -> Response:
    """Page ``page`` of ``doc`` as a palette PNG ``w`` pixels wide (snapped to the renderer's
    widths), rendered once per revision, cached by the browser for the length of a signing
    session and revalidated by ETag (304 without rendering); for the signing and staff pages."""
    width = fit_width(w)
    key = _render_key(doc)
    etag = page_etag(key, page - 1, width)
    # private: a signer's documents never sit in a shared cache. The URL names the revision
    # (``v``), so a page signed since gets a new URL rather than a stale image.
    headers = {"ETag": etag, "Cache-Control": f"private, max-age={context.session_seconds}"}
    if _etag_matches(request.headers.get("if-none-match"), etag):
        return Response(status_code=304, headers=headers)
    image = context.pages.page_image(key, _document_loader(context, doc), page - 1, width)
    return Response(image.data, media_type=image.media_type, headers=headers)


def _etag_matches(header: str | None, etag: str) -> bool:
    if not header:
        return False
    if header.strip() == "*":
        return True
    return any(tag.strip().removeprefix("W/") == etag for tag in header.split(","))


@router.get("/sign/{token}/documents/{position}/download")
def download_for_review(
    token: Token,
    position: Position,
    request: Request,
    context: ContextDep,
    session: SessionDep,
    ip: ClientIpDep,
) -> Response:
    """The document as it stands (unsigned by this party), for internal review."""
    checked = _viewable_document(request, context, session, token, position)
    if isinstance(checked, RedirectResponse):
        return checked
    party, doc = checked
    data = read_document(runtime=context.gateway.runtime, document=doc)
    record_event(
        session=session,
        action="document.downloaded",
        actor=party.email,
        envelope_id=party.envelope_id,
        party_id=party.id,
        ip=ip,
        detail={"document": doc.name, "signatures": doc.signature_count, "via": "signing page"},
    )
    session.commit()
    return _pdf(doc.name, data)


# --- complete, decline, forward ----------------------------------------------------------


def _complete(
    context: AppContext, token: str, values: dict[str, str], ip: str | None
) -> tuple[str, StateError | None]:
    """Record the approval (the signing worker applies the signature); returns where to go
    next, or a field error to show."""
    with context.gateway.sessions() as session:
        _link, party = _open_party(session, token)
        envelope_id = party.envelope_id
        try:
            # A value must fit its box in the signed PDF; refused here, with how much fits.
            check_values_fit(
                engine=context.gateway.runtime.signing,
                party=party,
                values=values,
                rotation_of=rotation_of_page(context),
            )
            record_approval(
                session=session,
                envelope_id=envelope_id,
                party_id=party.id,
                values=values,
                auth_method=AUTH_METHOD,
                ip=ip,
            )
        except StateError as exc:
            if exc.code in (
                "envelope.field_required",
                "envelope.field_too_long",
                "envelope.field_too_wide",
            ):
                return "", exc
            if exc.code in ("state.already_acted", "state.envelope_not_open"):
                return "done", None  # a double submit, or the envelope closed meanwhile
            raise
        return "done", None


@router.post("/sign/{token}/complete", response_class=HTMLResponse)
async def complete(token: Token, request: Request, context: ContextDep) -> Response:
    """「署名手続きを完了する」: the party's instruction to sign, applied exactly once."""
    form = await _party_form(request, context, token, 600)
    if isinstance(form, RedirectResponse):
        return form
    values = {
        key.removeprefix("field_"): form_text(value)
        for key, value in form.multi_items()
        if key.startswith("field_")
    }
    ip = get_client_ip(request, context)
    try:
        _where, error = await run_in_threadpool(_complete, context, token, values, ip)
    finally:
        context.wake_signer()
        context.wake_mailer()
    if error is not None:
        return await run_in_threadpool(_rerender, request, context, token, error.message_ja, values)
    return _redirect(f"{_base(token)}/done")


async def _party_form(
    request: Request, context: AppContext, token: str, max_fields: int
) -> FormData | RedirectResponse:
    """The form a signed-in party posted (complete, decline, forward), its CSRF token checked;
    or the redirect to the access-code page when this link has no session."""
    form = await read_form(request, max_fields)
    check_csrf(request, context, form_text(form.get("csrf_token")))
    checked = await run_in_threadpool(_session_party, context, request, token)
    return checked if isinstance(checked, RedirectResponse) else form


def _session_party(context: AppContext, request: Request, token: str) -> Party | RedirectResponse:
    with context.gateway.sessions() as session:
        checked = require_session(request, context, session, token)
        return checked if isinstance(checked, RedirectResponse) else checked[1]


def _rerender(
    request: Request, context: AppContext, token: str, error: str, values: dict[str, str]
) -> HTMLResponse:
    with context.gateway.sessions() as session:
        _link, party = _open_party(session, token)
        return _documents_page(
            request, context, token, party, error=error, values=values, status=422
        )


def _decline(context: AppContext, token: str, reason: str, ip: str | None) -> str | None:
    with context.gateway.sessions() as session:
        _link, party = _open_party(session, token)
        try:
            decline(
                session=session,
                runtime=context.gateway.runtime,
                envelope_id=party.envelope_id,
                party_id=party.id,
                reason=reason,
                ip=ip,
            )
        except StateError as exc:
            if exc.code in {"envelope.decline_reason_required", "text.control_character"}:
                return exc.message_ja
            raise
        session.commit()
        return None


@router.post("/sign/{token}/decline", response_class=HTMLResponse)
async def decline_page(token: Token, request: Request, context: ContextDep) -> Response:
    """「同意せずに却下する」 with a reason, which reaches the sender."""
    form = await _party_form(request, context, token, 10)
    if isinstance(form, RedirectResponse):
        return form
    ip = get_client_ip(request, context)
    error = await run_in_threadpool(
        _decline, context, token, form_text(form.get("reason"))[:2000], ip
    )
    if error is not None:
        return await run_in_threadpool(_rerender, request, context, token, error, {})
    context.wake_mailer()
    return _redirect(f"{_base(token)}/done")


def _forward(
    context: AppContext,
    token: str,
    name: str,
    email: str,
    reason: str,
    code_hash: str,
    ip: str | None,
) -> str:
    with context.gateway.sessions() as session:
        _link, party = _open_party(session, token)
        forward_party(
            session=session,
            runtime=context.gateway.runtime,
            envelope_id=party.envelope_id,
            party_id=party.id,
            name=name,
            email=email,
            reason=reason,
            code_hash=code_hash,
            ip=ip,
        )
        session.commit()
        return party.name


@router.post("/sign/{token}/forward", response_class=HTMLResponse)
async def forward(token: Token, request: Request, context: ContextDep) -> Response:
    """Hand this request to another person, with a reason and the new person's own access
    code; this link stops working at once."""
    form = await _party_form(request, context, token, 10)
    if isinstance(form, RedirectResponse):
        return form
    ip = get_client_ip(request, context)
    try:
        code = context.policy.check_format(form_text(form.get("access_code"))[:64])
        # scrypt before any session: no database lock is held while hashing
        code_hash = await run_in_threadpool(context.policy.hash, code)
        name = await run_in_threadpool(
            _forward,
            context,
            token,
            form_text(form.get("name"))[:200],
            form_text(form.get("email"))[:320],
            form_text(form.get("reason"))[:2000],
            code_hash,
            ip,
        )
    except StateError as exc:
        if not (
            exc.code.startswith("party.forward")
            or exc.code in {"party.bad_access_code", "text.control_character"}
        ):
            raise
        return await run_in_threadpool(_rerender, request, context, token, exc.message_ja, {})
    context.wake_mailer()
    response = render_page(request, context, "pages/forwarded.html", name=name)
    response.delete_cookie(SESSION_COOKIE, path=_base(token))
    return response


@router.get("/sign/{token}/done", response_class=HTMLResponse)
def done_page(token: Token, request: Request, context: ContextDep, session: SessionDep) -> Response:
    """Where the party's request stands after it acted; downloads once the envelope is done."""
    checked = require_session(request, context, session, token)
    if isinstance(checked, RedirectResponse):
        return checked
    _link, party = checked
    if closed_message(party) is None:
        return _redirect(f"{_base(token)}/documents")
    return render_page(
        request,
        context,
        "pages/done.html",
        base=_base(token),
        envelope=party.envelope,
        party=party,
        message=closed_message(party),
    )


@router.get("/sign/{token}/certificate")
def done_certificate(
    token: Token, request: Request, context: ContextDep, session: SessionDep, ip: ClientIpDep
) -> Response:
    """The completion certificate (締結証明書), from the done page once the envelope is
    concluded: the last signer need not wait for the completion mail."""
    from core.envelopes.sealing import completion_certificate

    checked = require_session(request, context, session, token)
    if isinstance(checked, RedirectResponse):
        return checked
    _link, party = checked
    envelope = party.envelope
    if envelope.state is not EnvelopeState.COMPLETED:
        raise NotFoundError(
            "not_found.certificate",
            "the envelope is not concluded yet",
            "締結証明書は、すべての手続きが完了すると表示されます。",
        )
    data = completion_certificate(runtime=context.gateway.runtime, envelope=envelope)
    record_event(
        session=session,
        action="certificate.downloaded",
        actor=party.email,
        envelope_id=envelope.id,
        party_id=party.id,
        ip=ip,
        detail={"via": "done page"},
    )
    session.commit()
    return _pdf(f"締結証明書_{envelope.management_number}.pdf", data)


# --- completion download (電子署名完了のお知らせ) ----------------------------------------------


def _download_link(session: Session, token: str) -> tuple[SigningLink, Envelope]:
    link = open_link(session=session, token=token, purpose=LinkPurpose.DOWNLOAD)
    envelope = session.get(Envelope, link.envelope_id)
    assert envelope is not None
    return link, envelope


@router.get("/download/{token}", response_class=HTMLResponse)
def download_page(
    token: Token, request: Request, context: ContextDep, session: SessionDep, ip: ClientIpDep
) -> Response:
    """全ての手続きが完了しました: the signed documents, for 14 days after the mail."""
    link, envelope = _download_link(session, token)
    record_event(
        session=session,
        action="download.viewed",
        actor=link.email,
        envelope_id=envelope.id,
        party_id=link.party_id,
        ip=ip,
    )
    session.commit()
    return render_page(
        request,
        context,
        "pages/download.html",
        base=f"/download/{token}",
        envelope=envelope,
        expires_at=link.expires_at,
    )


@router.get("/download/{token}/documents/{position}")
def download_signed(
    token: Token,
    position: Position,
    context: ContextDep,
    session: SessionDep,
    ip: ClientIpDep,
) -> Response:
    """One signed document."""
    link, envelope = _download_link(session, token)
    doc = document_at(envelope, position)
    data = read_document(runtime=context.gateway.runtime, document=doc)
    record_event(
        session=session,
        action="document.downloaded",
        actor=link.email,
        envelope_id=envelope.id,
        party_id=link.party_id,
        ip=ip,
        detail={"document": doc.name, "via": "completion mail"},
    )
    session.commit()
    return _pdf(doc.name, data)


@router.get("/download/{token}/certificate")
def download_certificate(
    token: Token, context: ContextDep, session: SessionDep, ip: ClientIpDep
) -> Response:
    """The completion certificate (締結証明書)."""
    from core.envelopes.sealing import completion_certificate

    link, envelope = _download_link(session, token)
    data = completion_certificate(runtime=context.gateway.runtime, envelope=envelope)
    record_event(
        session=session,
        action="certificate.downloaded",
        actor=link.email,
        envelope_id=envelope.id,
        party_id=link.party_id,
        ip=ip,
        detail={"via": "completion mail"},
    )
    session.commit()
    return _pdf(f"締結証明書_{envelope.management_number}.pdf", data)
