"""The envelope API: create (JSON with base64 documents, or multipart), send, status, list,
cancel, resend, download signed documents and the completion certificate.

Every envelope is looked up through the calling system's scope
(:func:`core.staff.api_clients.get_client_envelope`); domain failures propagate as
:class:`core.errors.GatewayError` to the one handler in :mod:`gateway.errors`.
"""

from __future__ import annotations

import binascii
import hashlib
import io
import os
from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import replace
from decimal import Decimal
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Body, Header, Path, Query, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from pydantic import ValidationError
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session
from starlette.datastructures import UploadFile

from core.envelopes.amendments import amended_by, original_of, record_amendment
from core.envelopes.creation import (
    DocumentInput,
    FieldInput,
    PartyInput,
    create_envelope,
    discard_envelope_blobs,
)
from core.envelopes.documents import document_at, read_document
from core.envelopes.lifecycle import cancel_envelope, send_envelope
from core.envelopes.links import AccessCodePolicy, resend_request
from core.envelopes.recovery import (
    change_access_code,
    extend_deadline,
    locked_party_ids,
    readdress_party,
    remind_party,
    unlock_party,
)
from core.envelopes.sealing import completion_certificate
from core.errors import DocumentError, GatewayError, InputError, NotFoundError, StateError
from core.intake.consent import CONSTRUCTION, current_consent, get_consent, has_withdrawn
from core.intake.contractors import find_contractor
from core.model import AccessCode, ApiClient, Envelope, Party, utcnow
from core.records.audit import record_event
from core.records.search import (
    encode_csv,
    export_envelopes,
    parse_query,
    records_csv,
    search_envelopes,
)
from core.staff.api_clients import (
    client_department,
    client_search_scope,
    find_idempotent,
    get_client_envelope,
    list_client_envelopes,
    record_ownership,
    require_scope,
)
from core.states import EnvelopeState, PartyRole
from core.text import one_line
from gateway.api.schemas import (
    AccessCodeIn,
    CancelIn,
    DeadlineIn,
    EnvelopeCreate,
    EnvelopeList,
    EnvelopeOut,
    ReaddressIn,
    envelope_out,
    envelope_summary,
)
from gateway.context import AppContext
from gateway.deps import ApiClientDep, ClientIpDep, ContextDep, SessionDep
from gateway.downloads import file_response

router = APIRouter(prefix="/api/v1", tags=["envelopes"])

READ, WRITE = "envelopes:read", "envelopes:write"
EnvelopeId = Annotated[str, Path(min_length=1, max_length=32, pattern=r"^[0-9a-f]+$")]

_ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    401: {"description": "Missing or unknown API token"},
    404: {"description": "No such envelope among this system's"},
    409: {"description": "Not allowed in the envelope's state"},
    422: {"description": "Invalid request"},
}

_PURGED: dict[int | str, dict[str, Any]] = {
    410: {"description": "Deleted at the end of its retention period (document.purged)"},
}

_CREATE_BODY: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "content": {
            "application/json": {"schema": {"$ref": "#/components/schemas/EnvelopeCreate"}},
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "required": ["envelope", "documents"],
                    "properties": {
                        "envelope": {
                            "type": "string",
                            "description": "EnvelopeCreate as JSON, without `documents`",
                        },
                        "documents": {
                            "type": "array",
                            "items": {"type": "string", "format": "binary"},
                            "description": "The PDFs, in order; each part's filename is used",
                        },
                    },
                }
            },
        },
    }
}


def _pdf_response(name: str, data: bytes) -> Response:
    return file_response(data, name)


def _out(session: Session, envelope: Envelope) -> EnvelopeOut:
    original = original_of(session=session, envelope_id=envelope.id)
    later = amended_by(session=session, envelope_id=envelope.id, completed_only=False)
    return envelope_out(
        envelope,
        amends=original.id if original is not None else None,
        amended_by=[e.id for e in later],
        locked=locked_party_ids(session=session, envelope_ids=[envelope.id]),
    )


# Characters decoded at a time (a multiple of 4, so that every chunk but the last is whole).
_BASE64_CHUNK = 1 << 20


def _b64decode(text: str) -> bytes:
    """``base64.b64decode(text, validate=True)`` a chunk at a time: without the ASCII copy of
    the whole text it makes first (a third larger than the document), into one buffer that
    becomes the result without a further copy. The same inputs are refused."""
    if not text.isascii():
        raise ValueError("string argument should contain only ASCII characters")
    out = io.BytesIO()
    start = 0
    while start < len(text):
        end = start + _BASE64_CHUNK
        if end >= len(text) or text[end] == "=":
            end = len(text)  # the last chunk holds all the padding (strict decoding judges it)
        chunk = text[start:end].encode("ascii")
        if end < len(text) and b"=" in chunk:
            # strict decoding of the whole refuses padding followed by more data
            raise binascii.Error("Excess data after padding")
        out.write(binascii.a2b_base64(chunk, strict_mode=True))
        start = end
    return out.getvalue()


def _decode_documents(body: EnvelopeCreate) -> list[DocumentInput]:
    documents = []
    for index, doc in enumerate(body.documents):
        try:
            data = _b64decode(doc.content_base64)
        except (binascii.Error, ValueError) as exc:
            raise DocumentError(
                "document.bad_base64",
                f"document {index + 1} is not valid base64",
                f"{index + 1}番目の文書のBase64が正しくありません。",
            ) from exc
        documents.append(DocumentInput(name=doc.name, data=data))
    return documents


def _request_digest(body: EnvelopeCreate, documents: list[DocumentInput]) -> str:
    digest = hashlib.sha256(body.model_dump_json(exclude={"documents"}).encode())
    for doc in documents:
        digest.update(doc.name.encode() + b"\0" + hashlib.sha256(doc.data).digest())
    return digest.hexdigest()


def check_content_length(request: Request, ceiling: int) -> None:
    """Refuse a request whose declared body is larger than ``ceiling`` bytes, before reading it."""
    length = request.headers.get("content-length")
    if length is not None and length.isdigit() and int(length) > ceiling:
        raise GatewayError(
            "request.too_large",
            f"the request is larger than {ceiling} bytes",
            "リクエストが大きすぎます。",
        )


async def _read_create_request(
    request: Request, context: AppContext
) -> tuple[EnvelopeCreate, list[DocumentInput]]:
    limits = context.gateway.runtime.limits
    ceiling = limits.max_envelope_bytes * 4 // 3 + 2 * 1024 * 1024
    check_content_length(request, ceiling)
    content_type = request.headers.get("content-type", "").lower()
    try:
        if content_type.startswith("application/json"):
            raw = await _json_body(request, ceiling)
            body = EnvelopeCreate.model_validate_json(raw)
            del raw  # parsed: the documents' one copy is in the body now
            documents = await run_in_threadpool(_decode_documents, body)
            # decoded: their base64 text (a third larger than the PDFs) is not kept for the
            # create; the body's other fields are what the create and its digest read
            return body.model_copy(update={"documents": []}), documents
        if content_type.startswith("multipart/form-data"):
            async with request.form(max_files=limits.max_files + 1, max_fields=20) as form:
                return body_and_files(form, await _files(form))
    except ValidationError as exc:
        raise RequestValidationError(exc.errors()) from exc
    raise GatewayError(
        "request.unsupported_media_type",
        "send application/json or multipart/form-data",
        "application/json または multipart/form-data で送信してください。",
    )


async def _json_body(request: Request, ceiling: int) -> bytearray:
    """The body of a JSON request, read into one buffer (Starlette's ``body()`` joins a list
    of its chunks, two copies at once, and keeps the result for the request's lifetime);
    ``request.too_large`` once it exceeds ``ceiling`` bytes."""
    raw = bytearray()
    async for chunk in request.stream():
        raw += chunk
        if len(raw) > ceiling:
            raise GatewayError(
                "request.too_large", "the request is too large", "リクエストが大きすぎます。"
            )
    return raw


async def _files(form: Any) -> list[DocumentInput]:
    documents = []
    for part in form.getlist("documents"):
        if not isinstance(part, UploadFile):
            raise GatewayError(
                "request.invalid",
                "each `documents` part must be a file",
                "文書はファイルとして添付してください。",
            )
        documents.append(
            DocumentInput(name=part.filename or "document.pdf", data=await part.read())
        )
    return documents


def body_and_files(
    form: Any, documents: list[DocumentInput]
) -> tuple[EnvelopeCreate, list[DocumentInput]]:
    """The create body of a multipart request: JSON in the ``envelope`` field, files apart."""
    envelope_part = form.get("envelope")
    if not isinstance(envelope_part, str):
        raise GatewayError(
            "request.invalid",
            "a multipart create needs an `envelope` field holding JSON",
            "封筒の内容(envelope)が指定されていません。",
        )
    body = EnvelopeCreate.model_validate_json(envelope_part)
    if body.documents:
        raise GatewayError(
            "request.invalid",
            "in a multipart create the documents come as file parts",
            "multipart形式では文書をファイルとして添付してください。",
        )
    return body, documents


def hash_access_codes(
    policy: AccessCodePolicy,
    parties: Sequence[tuple[str, str | None]],
    staff: Sequence[bool] = (),
) -> list[str | None]:
    """Each party's access code (role, code in routing order) checked and hashed; None for a
    cc and a party bound to staff (``staff``, in the same order; it logs in instead; a code given
    for it is refused), ``party.access_code_required`` for another approver or signer without
    one."""
    # Hashed now, before any row is written: no database lock is held while scrypt runs.
    return _hash_codes(policy, check_access_codes(policy, parties, staff))


def _hash_codes(policy: AccessCodePolicy, codes: Sequence[str | None]) -> list[str | None]:
    return [policy.hash(code) if code is not None else None for code in codes]


def check_access_codes(
    policy: AccessCodePolicy,
    parties: Sequence[tuple[str, str | None]],
    staff: Sequence[bool] = (),
) -> list[str | None]:
    """:func:`hash_access_codes` without the hashing: each code checked, not yet hashed."""
    codes: list[str | None] = []
    bound = list(staff) + [False] * (len(parties) - len(staff))
    for index, ((role, code), is_staff) in enumerate(zip(parties, bound, strict=True)):
        if is_staff and code is not None:
            raise InputError(
                "party.access_code_for_staff",
                f"party {index + 1} signs as staff (staff login) and takes no access code",
                f"{index + 1}番目の署名者は職員としてログインして署名するため、"
                "アクセスコードは指定できません。",
                details={"party": index + 1},
            )
        if role == PartyRole.CC.value or is_staff:
            codes.append(None)
            continue
        if code is None:
            raise InputError(
                "party.access_code_required",
                f"party {index + 1} ({role}) needs an access code",
                f"{index + 1}番目の署名者のアクセスコードを指定してください。",
                details={"party": index + 1},
            )
        codes.append(policy.check_format(code))
    return codes


_hashing: tuple[int, ThreadPoolExecutor] | None = None


def _hash_in_background(
    policy: AccessCodePolicy, codes: list[str | None]
) -> Future[list[str | None]]:
    """Hash checked codes in a thread of this process (scrypt runs without the GIL) while the
    request thread reads and stores the documents: the create waits for the slower of the two,
    not for both. The hashes are the same ones, with the same parameters; started before the
    documents are parsed, they are ready long before the rows are written, so no database lock
    waits for scrypt."""
    global _hashing
    if _hashing is None or _hashing[0] != os.getpid():  # a forked worker makes its own threads
        _hashing = (os.getpid(), ThreadPoolExecutor(max_workers=8, thread_name_prefix="code-hash"))
    return _hashing[1].submit(_hash_codes, policy, codes)


def store_access_codes(session: Session, envelope: Envelope, codes: Sequence[str | None]) -> None:
    """Set the hashes from :func:`hash_access_codes` on the parties of a new envelope (added
    as they are: a party made in this transaction has no code to look up and replace)."""
    now = utcnow()
    for party, code in zip(envelope.parties, codes, strict=True):
        if code is not None:
            session.add(AccessCode(party_id=party.id, code_hash=code, set_at=now))


def check_management_number(session: Session, number: str | None) -> None:
    """Refuse a management number (管理番号) another envelope already has (or one holding a
    control character, before it reaches the database)."""
    if number is not None:
        number = one_line(number, field="management_number", label_ja="管理番号")
    if number is not None and session.scalar(
        select(Envelope.id).where(Envelope.management_number == number)
    ):
        raise StateError(
            "state.duplicate_management_number",
            f"management number {number} is in use",
            "この管理番号は既に使われています。",
        )


def _consent_for(session: Session, body: EnvelopeCreate) -> tuple[str | None, str | None]:
    """The contractor named by the request and the consent the envelope is made on: the one
    named, else the contractor's consent in force for a construction contract."""
    contractor_id: str | None = None
    if body.contractor is not None:
        contractor = find_contractor(
            session=session,
            corporate_number=body.contractor.corporate_number,
            registry_code=body.contractor.registry_code,
        )
        if contractor is not None:
            contractor_id = contractor.id
            if has_withdrawn(session=session, contractor_id=contractor.id):
                raise InputError(
                    "consent.withdrawn",
                    "the contractor withdrew its consent to electronic contracts",
                    "受注者が電子契約の承諾を撤回しているため、封筒を作成できません。",
                )
    consent_id = body.consent_id
    if consent_id is None and contractor_id is not None and body.contract_type == CONSTRUCTION:
        consent = current_consent(session=session, contractor_id=contractor_id)
        consent_id = consent.id if consent is not None else None
    if consent_id is not None:
        consent = get_consent(session=session, consent_id=consent_id)
        if contractor_id is not None and consent.contractor_id != contractor_id:
            raise InputError(
                "consent.other_contractor",
                "the consent belongs to another contractor",
                "指定された承諾は別の受注者のものです。",
            )
        contractor_id = consent.contractor_id
    return contractor_id, consent_id


def _create(
    context: AppContext,
    session: Session,
    client: ApiClient,
    body: EnvelopeCreate,
    documents: list[DocumentInput],
    key: str | None,
    ip: str | None,
) -> tuple[EnvelopeOut, bool]:
    """Create (and maybe send) one envelope; returns its view and whether it was a replay."""
    require_scope(client, WRITE)
    digest = _request_digest(body, documents)
    if key is not None:
        replay = _replay(session, client, key, digest)
        if replay is not None:
            return replay, True
    runtime = context.gateway.runtime
    hashing = _hash_in_background(
        context.policy,
        check_access_codes(
            context.policy,
            [(p.role, p.access_code) for p in body.parties],
            [p.staff for p in body.parties],
        ),
    )
    check_management_number(session, body.management_number)
    if body.amends is not None:
        # The original must be one of this system's own envelopes.
        get_client_envelope(session=session, client_id=client.id, envelope_id=body.amends)
    actor = f"api:{client.name}"
    envelope: Envelope | None = None
    contractor_id, consent_id = _consent_for(session, body)
    try:
        envelope = create_envelope(
            session=session,
            runtime=runtime,
            title=body.title,
            creator=body.creator or client.name,
            creator_email=body.sender_email,
            documents=documents,
            parties=[
                PartyInput(PartyRole(p.role), p.name, p.email, p.company, staff=p.staff)
                for p in body.parties
            ],
            fields=[
                FieldInput(
                    document=f.document,
                    party=f.party,
                    label=f.label,
                    page=f.page,
                    rect=f.rect,
                    required=f.required,
                    max_length=f.max_length,
                )
                for f in body.fields
            ],
            management_number=body.management_number,
            counterparty=body.metadata.counterparty,
            amount=Decimal(body.metadata.amount) if body.metadata.amount is not None else None,
            transaction_date=body.metadata.transaction_date,
            deadline=body.metadata.deadline,
            department=body.metadata.department
            or client_department(session=session, client=client),
            actor=actor,
            contract_type=body.contract_type,
            consent_id=consent_id,
        )
        if contractor_id is not None:  # else it stays NULL without an UPDATE
            envelope.contractor_id = contractor_id
        store_access_codes(session, envelope, hashing.result())
        if body.amends is not None:
            record_amendment(
                session=session, envelope=envelope, original_id=body.amends, actor=actor
            )
        record_ownership(
            session=session,
            client_id=client.id,
            envelope_id=envelope.id,
            idempotency_key=key,
            request_sha256=digest,
        )
        if body.send:
            send_envelope(
                session=session, runtime=runtime, envelope_id=envelope.id, actor=actor, ip=ip
            )
        session.commit()
    except IntegrityError as exc:
        # A concurrent request with the same idempotency key (or management number) won.
        session.rollback()
        if envelope is not None:
            discard_envelope_blobs(runtime=runtime, envelope=envelope)
        if key is not None:
            replay = _replay(session, client, key, digest)
            if replay is not None:
                return replay, True
        raise StateError(
            "state.conflict",
            "the envelope conflicts with one created at the same time",
            "同時に登録された封筒と競合しました。",
        ) from exc
    except BaseException:
        # Refused after the documents were stored (e.g. sending failed): keep no orphan blobs.
        session.rollback()
        if envelope is not None:
            discard_envelope_blobs(runtime=runtime, envelope=envelope)
        raise
    # What _out would read back: a new envelope amends what the request named, and nothing
    # can amend it or lock its links (made just now, if sent) before this answer
    return envelope_out(envelope, amends=body.amends, amended_by=[], locked=frozenset()), False


def _replay(session: Session, client: ApiClient, key: str, digest: str) -> EnvelopeOut | None:
    earlier = find_idempotent(session=session, client_id=client.id, key=key)
    if earlier is None:
        return None
    if earlier.request_sha256 != digest:
        raise GatewayError(
            "idempotency.key_reused",
            "this Idempotency-Key was used with a different request",
            "このIdempotency-Keyは別の内容のリクエストで使用済みです。",
        )
    envelope = get_client_envelope(
        session=session, client_id=client.id, envelope_id=earlier.envelope_id
    )
    return _out(session, envelope)


@router.post(
    "/envelopes",
    status_code=201,
    response_model=EnvelopeOut,
    summary="Create an envelope (and send it with `send: true`)",
    openapi_extra=_CREATE_BODY,
    responses={
        **_ERROR_RESPONSES,
        409: {"description": "Idempotency-Key reused with another request"},
        413: {"description": "Too large"},
        415: {"description": "Neither JSON nor multipart"},
    },
)
async def create(
    request: Request,
    context: ContextDep,
    session: SessionDep,
    client: ApiClientDep,
    ip: ClientIpDep,
    idempotency_key: Annotated[
        str | None,
        Header(
            alias="Idempotency-Key",
            min_length=1,
            max_length=200,
            description="A retried create with the same key returns the first result",
        ),
    ] = None,
) -> Response:
    """Create an envelope from JSON (documents base64) or multipart (documents as files)."""
    body, documents = await _read_create_request(request, context)
    out, replayed = await run_in_threadpool(
        _create, context, session, client, body, documents, idempotency_key, ip
    )
    if body.send and not replayed:
        context.wake_mailer()
    headers = {"Idempotent-Replayed": "true"} if replayed else None
    return JSONResponse(out.model_dump(mode="json"), status_code=201, headers=headers)


_SEARCH_KEYS = (
    "management_number",
    "keyword",
    "date_from",
    "date_to",
    "counterparty",
    "amount_min",
    "amount_max",
    "department",
)
_StateName = Literal["draft", "sent", "sealing", "completed", "declined", "cancelled", "expired"]


@router.get(
    "/envelopes",
    response_model=EnvelopeList,
    responses={**_ERROR_RESPONSES, 200: {"content": {"text/csv": {}}}},
)
def list_envelopes(
    session: SessionDep,
    client: ApiClientDep,
    state: Annotated[list[_StateName] | None, Query()] = None,
    keyword: Annotated[str | None, Query(max_length=200)] = None,
    management_number: Annotated[
        str | None, Query(max_length=64, description="管理番号, whole or part, any letter case")
    ] = None,
    date_from: Annotated[
        str | None, Query(max_length=20, description="取引年月日, YYYY-MM-DD")
    ] = None,
    date_to: Annotated[str | None, Query(max_length=20)] = None,
    counterparty: Annotated[str | None, Query(max_length=200)] = None,
    amount_min: Annotated[str | None, Query(max_length=20, description="Yen")] = None,
    amount_max: Annotated[str | None, Query(max_length=20)] = None,
    department: Annotated[str | None, Query(max_length=200)] = None,
    format: Annotated[Literal["json", "csv"], Query()] = "json",
    encoding: Annotated[Literal["utf-8", "cp932"], Query()] = "utf-8",
    limit: Annotated[int, Query(ge=1, le=100)] = 50,
    offset: Annotated[int, Query(ge=0, le=1_000_000)] = 0,
) -> Any:
    """Search the envelopes this system may see (records-law conditions: 取引年月日, 取引金額
    and 取引先 ranges, combined; keyword in the title or a file name; department; states).
    A client acting for a staff member sees what that member sees on the staff pages; any
    other client, its own envelopes. ``format=csv`` exports every match (not one page). An
    invalid condition is an error with no rows."""
    require_scope(client, READ)
    given = {
        "management_number": management_number,
        "keyword": keyword,
        "date_from": date_from,
        "date_to": date_to,
        "counterparty": counterparty,
        "amount_min": amount_min,
        "amount_max": amount_max,
        "department": department,
    }
    conditions = {k: v for k, v in given.items() if v}
    query = parse_query(conditions, list(state or ()))
    staff, scope = client_search_scope(session=session, client=client)
    if format == "json" and staff is None and not conditions and len(state or ()) <= 1:
        # the plain list of this system's envelopes, newest first, as before
        rows, total = list_client_envelopes(
            session=session,
            client_id=client.id,
            state=EnvelopeState(state[0]) if state else None,
            limit=limit,
            offset=offset,
        )
        return EnvelopeList(
            items=[envelope_summary(e) for e in rows], total=total, limit=limit, offset=offset
        )
    if format == "csv":
        rows = export_envelopes(session=session, query=query, staff=staff, scope=scope)
        data = encode_csv(records_csv(rows), encoding)
        charset = "Shift_JIS" if encoding == "cp932" else "utf-8"
        return Response(
            data,
            media_type=f"text/csv; charset={charset}",
            headers={"Content-Disposition": 'attachment; filename="envelopes.csv"'},
        )
    page = search_envelopes(
        session=session,
        staff=staff,
        scope=scope,
        query=replace(query, per_page=limit, offset=offset),
    )
    return EnvelopeList(
        items=[envelope_summary(e) for e in page.items],
        total=page.total,
        limit=limit,
        offset=offset,
    )


@router.get("/envelopes/{envelope_id}", response_model=EnvelopeOut, responses=_ERROR_RESPONSES)
def get_status(envelope_id: EnvelopeId, session: SessionDep, client: ApiClientDep) -> EnvelopeOut:
    """One envelope's status, per party."""
    require_scope(client, READ)
    envelope = get_client_envelope(session=session, client_id=client.id, envelope_id=envelope_id)
    return _out(session, envelope)


@router.post(
    "/envelopes/{envelope_id}/send", response_model=EnvelopeOut, responses=_ERROR_RESPONSES
)
def send(
    envelope_id: EnvelopeId,
    context: ContextDep,
    session: SessionDep,
    client: ApiClientDep,
    ip: ClientIpDep,
) -> EnvelopeOut:
    """Send a draft: the first party is asked to act."""
    require_scope(client, WRITE)
    get_client_envelope(session=session, client_id=client.id, envelope_id=envelope_id)
    send_envelope(
        session=session,
        runtime=context.gateway.runtime,
        envelope_id=envelope_id,
        actor=f"api:{client.name}",
        ip=ip,
    )
    session.commit()
    context.wake_mailer()
    return get_status(envelope_id, session, client)


@router.post(
    "/envelopes/{envelope_id}/cancel", response_model=EnvelopeOut, responses=_ERROR_RESPONSES
)
def cancel(
    envelope_id: EnvelopeId,
    context: ContextDep,
    session: SessionDep,
    client: ApiClientDep,
    ip: ClientIpDep,
    body: Annotated[CancelIn | None, Body()] = None,
) -> EnvelopeOut:
    """Cancel an envelope before completion; the parties already asked are told."""
    require_scope(client, WRITE)
    get_client_envelope(session=session, client_id=client.id, envelope_id=envelope_id)
    cancel_envelope(
        session=session,
        runtime=context.gateway.runtime,
        envelope_id=envelope_id,
        actor=f"api:{client.name}",
        reason=body.reason if body else "",
        ip=ip,
    )
    session.commit()
    context.wake_mailer()
    return get_status(envelope_id, session, client)


@router.post(
    "/envelopes/{envelope_id}/parties/{routing_order}/resend",
    response_model=EnvelopeOut,
    responses=_ERROR_RESPONSES,
)
def resend(
    envelope_id: EnvelopeId,
    routing_order: Annotated[int, Path(ge=1, le=1000)],
    context: ContextDep,
    session: SessionDep,
    client: ApiClientDep,
) -> EnvelopeOut:
    """Mail the current party a fresh link (after a lockout or a lost mail)."""
    require_scope(client, WRITE)
    envelope = get_client_envelope(session=session, client_id=client.id, envelope_id=envelope_id)
    party = next((p for p in envelope.parties if p.routing_order == routing_order), None)
    if party is None:
        raise NotFoundError(
            "not_found.party", f"no party {routing_order}", "署名者が見つかりません。"
        )
    resend_request(
        session=session,
        runtime=context.gateway.runtime,
        envelope_id=envelope_id,
        party_id=party.id,
        actor=f"api:{client.name}",
    )
    session.commit()
    context.wake_mailer()
    return get_status(envelope_id, session, client)


def _party_at(session: Session, client: ApiClient, envelope_id: str, routing_order: int) -> Party:
    envelope = get_client_envelope(session=session, client_id=client.id, envelope_id=envelope_id)
    party = next((p for p in envelope.parties if p.routing_order == routing_order), None)
    if party is None:
        raise NotFoundError(
            "not_found.party", f"no party {routing_order}", "署名者が見つかりません。"
        )
    return party


RoutingOrder = Annotated[int, Path(ge=1, le=1000)]


@router.post(
    "/envelopes/{envelope_id}/parties/{routing_order}/unlock",
    response_model=EnvelopeOut,
    responses=_ERROR_RESPONSES,
)
def unlock(
    envelope_id: EnvelopeId,
    routing_order: RoutingOrder,
    context: ContextDep,
    session: SessionDep,
    client: ApiClientDep,
    ip: ClientIpDep,
) -> EnvelopeOut:
    """Unlock the party's link locked by wrong access codes; the party is told by mail."""
    require_scope(client, WRITE)
    party = _party_at(session, client, envelope_id, routing_order)
    unlock_party(session=session, runtime=context.gateway.runtime, envelope_id=envelope_id,
                 party_id=party.id, actor=f"api:{client.name}", ip=ip)  # fmt: skip
    session.commit()
    context.wake_mailer()
    return get_status(envelope_id, session, client)


@router.put(
    "/envelopes/{envelope_id}/parties/{routing_order}/access-code",
    response_model=EnvelopeOut,
    responses=_ERROR_RESPONSES,
)
def put_access_code(
    envelope_id: EnvelopeId,
    routing_order: RoutingOrder,
    body: AccessCodeIn,
    context: ContextDep,
    session: SessionDep,
    client: ApiClientDep,
    ip: ClientIpDep,
) -> EnvelopeOut:
    """Set a new access code for a party that signs by link (never returned or mailed)."""
    require_scope(client, WRITE)
    party = _party_at(session, client, envelope_id, routing_order)
    code_hash = context.policy.hash(context.policy.check_format(body.access_code))
    change_access_code(session=session, runtime=context.gateway.runtime, envelope_id=envelope_id,
                       party_id=party.id, code_hash=code_hash, actor=f"api:{client.name}",
                       ip=ip)  # fmt: skip
    session.commit()
    context.wake_mailer()
    return get_status(envelope_id, session, client)


@router.post(
    "/envelopes/{envelope_id}/parties/{routing_order}/readdress",
    response_model=EnvelopeOut,
    responses=_ERROR_RESPONSES,
)
def readdress(
    envelope_id: EnvelopeId,
    routing_order: RoutingOrder,
    body: ReaddressIn,
    context: ContextDep,
    session: SessionDep,
    client: ApiClientDep,
    ip: ClientIpDep,
) -> EnvelopeOut:
    """Correct a party's name or e-mail before it acted, or replace the signer; the new address
    gets a new request, the old one only a notice that the request moved."""
    require_scope(client, WRITE)
    party = _party_at(session, client, envelope_id, routing_order)
    code_hash = None
    if body.access_code is not None:
        code_hash = context.policy.hash(context.policy.check_format(body.access_code))
    readdress_party(
        session=session,
        runtime=context.gateway.runtime,
        envelope_id=envelope_id,
        party_id=party.id,
        name=body.name,
        email=body.email,
        staff=body.staff,
        code_hash=code_hash,
        replace=body.replace,
        reason=body.reason,
        actor=f"api:{client.name}",
        ip=ip,
    )
    session.commit()
    context.wake_mailer()
    return get_status(envelope_id, session, client)


@router.post(
    "/envelopes/{envelope_id}/parties/{routing_order}/remind",
    response_model=EnvelopeOut,
    responses=_ERROR_RESPONSES,
)
def remind(
    envelope_id: EnvelopeId,
    routing_order: RoutingOrder,
    context: ContextDep,
    session: SessionDep,
    client: ApiClientDep,
    ip: ClientIpDep,
) -> EnvelopeOut:
    """Remind the party whose turn it is, now."""
    require_scope(client, WRITE)
    party = _party_at(session, client, envelope_id, routing_order)
    remind_party(session=session, runtime=context.gateway.runtime, envelope_id=envelope_id,
                 party_id=party.id, actor=f"api:{client.name}", ip=ip)  # fmt: skip
    session.commit()
    context.wake_mailer()
    return get_status(envelope_id, session, client)


@router.post(
    "/envelopes/{envelope_id}/deadline", response_model=EnvelopeOut, responses=_ERROR_RESPONSES
)
def deadline(
    envelope_id: EnvelopeId,
    body: DeadlineIn,
    context: ContextDep,
    session: SessionDep,
    client: ApiClientDep,
    ip: ClientIpDep,
) -> EnvelopeOut:
    """Move the signing deadline later; the party whose turn it is is told."""
    require_scope(client, WRITE)
    get_client_envelope(session=session, client_id=client.id, envelope_id=envelope_id)
    extend_deadline(session=session, runtime=context.gateway.runtime, envelope_id=envelope_id,
                    deadline=body.deadline, actor=f"api:{client.name}", ip=ip)  # fmt: skip
    session.commit()
    context.wake_mailer()
    return get_status(envelope_id, session, client)


def _completed(envelope: Envelope) -> None:
    if envelope.state is not EnvelopeState.COMPLETED:
        raise StateError(
            "state.not_completed",
            "the envelope is not completed yet",
            "締結が完了していないため、署名済み文書はまだダウンロードできません。",
        )


@router.get(
    "/envelopes/{envelope_id}/documents/{position}",
    response_class=Response,
    responses={200: {"content": {"application/pdf": {}}}, **_ERROR_RESPONSES, **_PURGED},
)
def download_document(
    envelope_id: EnvelopeId,
    position: Annotated[int, Path(ge=0, le=1000)],
    context: ContextDep,
    session: SessionDep,
    client: ApiClientDep,
    ip: ClientIpDep,
) -> Response:
    """One signed document of a completed envelope."""
    require_scope(client, READ)
    envelope = get_client_envelope(session=session, client_id=client.id, envelope_id=envelope_id)
    _completed(envelope)
    doc = document_at(envelope, position)
    data = read_document(runtime=context.gateway.runtime, document=doc)
    record_event(
        session=session,
        action="document.downloaded",
        actor=f"api:{client.name}",
        envelope_id=envelope.id,
        ip=ip,
        detail={"document": doc.name, "via": "api"},
    )
    session.commit()
    return _pdf_response(doc.name, data)


@router.get(
    "/envelopes/{envelope_id}/certificate",
    response_class=Response,
    responses={200: {"content": {"application/pdf": {}}}, **_ERROR_RESPONSES, **_PURGED},
)
def download_certificate(
    envelope_id: EnvelopeId,
    context: ContextDep,
    session: SessionDep,
    client: ApiClientDep,
    ip: ClientIpDep,
) -> Response:
    """The completion certificate (締結証明書) of a completed envelope."""
    require_scope(client, READ)
    envelope = get_client_envelope(session=session, client_id=client.id, envelope_id=envelope_id)
    data = completion_certificate(runtime=context.gateway.runtime, envelope=envelope)
    record_event(
        session=session,
        action="certificate.downloaded",
        actor=f"api:{client.name}",
        envelope_id=envelope.id,
        ip=ip,
        detail={"via": "api"},
    )
    session.commit()
    return _pdf_response(f"締結証明書_{envelope.management_number}.pdf", data)
