"""``POST /api/v1/awards/{source}``: an e-bidding system pushes an award the moment it is decided;
``GET /api/v1/awards`` lists awards (by default those waiting) with why each waits and what would
release it; ``.../release`` and ``.../dismiss`` are staff's decisions on one (audited).

The body is one record, as JSON (field name → value) or, when the source names an XSD, as XML
validated against it (external entities and DTDs refused, no network or file includes). It goes
through the source's YAML mapping exactly like a pulled record, as a sync run of its own, so
idempotency on (source, award id), the dead-letter store and the usage-request wait all apply.
"""

from __future__ import annotations

import json
from typing import Annotated, Any

import xmlschema
from fastapi import APIRouter, Path, Query, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse
from pydantic import BaseModel
from sqlalchemy.orm import Session

from core.errors import NotFoundError, RecordError
from core.intake.awards import list_awards
from core.model import ApiClient, AwardState
from core.staff.api_clients import require_scope
from gateway import intake
from gateway.body_limit import AWARD_BODY_BYTES
from gateway.context import AppContext
from gateway.deps import ApiClientDep, ContextDep, SessionDep
from gateway.intake import AwardAction, AwardDecision, award_json, decide_award
from gateway.runtime import access_code_policy
from gateway.settings import ApiSourceSettings
from schedules.intake import IntakeResult, accept_record

router = APIRouter(prefix="/api/v1", tags=["awards"])

PUSH = "awards:write"
READ = "awards:read"

MAX_BODY = AWARD_BODY_BYTES


class LineErrorOut(BaseModel):
    """Why a pushed record (or one of its fields) was refused."""

    code: str
    field: str | None
    reason: str
    reason_ja: str
    mapping_line: int | None


class AwardResult(BaseModel):
    """What the gateway did with a pushed award."""

    run_id: int
    status: str
    created: int
    updated: int
    unchanged: int
    skipped: int
    waiting: int
    released: int
    conflicts: int
    errors: list[LineErrorOut]


def _refused(code: str, en: str, ja: str) -> RecordError:
    return RecordError(code, en, ja)


def _api_source(context: Any, name: str) -> ApiSourceSettings:
    settings = context.gateway.settings
    config = settings.sources.get(name) if settings.sources else None
    if not isinstance(config, ApiSourceSettings):
        raise NotFoundError(
            "not_found.source",
            f"no source {name!r} accepting pushed awards",
            "指定された取込元(API)は設定されていません。",
        )
    return config


def _xml_fields(config: ApiSourceSettings, settings: Any, body: bytes) -> dict[str, Any]:
    if config.xsd is None:
        raise _refused(
            "request.unsupported_media_type",
            "this source takes JSON only (no XSD configured for XML)",
            "この取込元はJSONのみ受け付けます(XMLのスキーマが設定されていません)。",
        )
    schema = xmlschema.XMLSchema(str(settings.path(config.xsd)), allow="sandbox", defuse="always")
    try:
        resource = xmlschema.XMLResource(body.decode("utf-8"), allow="none", defuse="always")
        decoded = schema.to_dict(resource)
    except (xmlschema.XMLSchemaException, xmlschema.XMLResourceError, ValueError) as exc:
        raise _refused(
            "award.xml_invalid",
            f"the XML does not match the source's schema: {exc}"[:500],
            "XMLがスキーマに適合しません。",
        ) from exc
    if not isinstance(decoded, dict):
        raise _refused("award.xml_invalid", "the XML holds no record", "XMLに案件がありません。")
    # One flat record: child elements become fields; attributes (@...) are dropped.
    return {k: v for k, v in decoded.items() if not str(k).startswith("@")}


def _accept(context: Any, name: str, fields: dict[str, Any], reference: str) -> IntakeResult:
    gateway = context.gateway
    settings = gateway.settings
    return accept_record(
        sessions=gateway.sessions,
        runtime=gateway.runtime,
        policy=intake.policy(settings, access_codes=access_code_policy(settings)),
        spec=intake.source_spec(settings, name),
        fields=fields,
        authorities=intake.authorities(settings),
        reference=reference,
    )


@router.post(
    "/awards/{source}",
    response_model=AwardResult,
    summary="Push one award (JSON, or XML valid against the source's XSD)",
    responses={
        404: {"description": "No such API source"},
        413: {"description": "Too large"},
        415: {"description": "Neither JSON nor (configured) XML"},
        422: {"description": "The record was refused; the errors say why"},
    },
)
async def push_award(
    request: Request,
    context: ContextDep,
    client: ApiClientDep,
    source: Annotated[str, Path(min_length=1, max_length=64)],
) -> JSONResponse:
    """Take in one award through the source's mapping, as its own sync run."""
    require_scope(client, PUSH)
    config = _api_source(context, source)
    body = await request.body()
    if len(body) > MAX_BODY:
        raise _refused("request.too_large", "at most 1 MB per award", "1件は1MBまでです。")
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if content_type in ("application/xml", "text/xml"):
        fields = _xml_fields(config, context.gateway.settings, body)
    elif content_type == "application/json":
        try:
            fields = json.loads(body)
        except ValueError as exc:
            raise _refused(
                "award.json_invalid", "the body is not JSON", "JSONの形式が正しくありません。"
            ) from exc
        if not isinstance(fields, dict):
            raise _refused(
                "award.json_invalid",
                "the body must be one JSON object",
                "JSONオブジェクト1件を送信してください。",
            )
    else:
        raise _refused(
            "request.unsupported_media_type",
            "send application/json (or application/xml when an XSD is configured)",
            "application/json で送信してください。",
        )
    result = await run_in_threadpool(_accept, context, source, fields, f"client:{client.name}")
    if result.released:
        context.wake_mailer()
    out = AwardResult(
        run_id=result.run_id,
        status=result.status,
        created=result.created,
        updated=result.updated,
        unchanged=result.unchanged,
        skipped=result.skipped,
        waiting=result.waiting,
        released=result.released,
        conflicts=result.conflicts,
        errors=[
            LineErrorOut(
                code=e.code,
                field=e.field,
                reason=e.reason,
                reason_ja=e.reason_ja,
                mapping_line=e.mapping_line,
            )
            for e in result.line_errors
        ],
    )
    return JSONResponse(out.model_dump(mode="json"), status_code=422 if out.errors else 200)


class WaitingOut(BaseModel):
    """Why an award waits and what would release it."""

    code: str
    reason: str
    reason_ja: str
    release_ja: str


class AwardOut(BaseModel):
    """One award taken in, with its state and (when it has no envelope yet) why it waits."""

    source: str
    award_id: str
    title: str
    state: str
    state_ja: str
    amount: str | None
    award_date: str | None
    counterparty: str | None
    corporate_number: str | None
    contractor_id: str | None
    envelope_id: str | None
    usage_request_due: str | None
    signing_due: str | None
    waiting: WaitingOut | None
    file: str | None
    line: int | None
    updated_at: str | None


class DismissIn(BaseModel):
    """Why staff dismiss an award."""

    reason: str


class ReleaseIn(BaseModel):
    """Optionally, the contractor staff confirmed for the award."""

    contractor_id: str | None = None


def _read(client: ApiClient) -> None:
    if READ not in client.scopes:
        require_scope(client, PUSH)  # a pushing system may read what it pushed


@router.get(
    "/awards",
    response_model=list[AwardOut],
    summary="List awards (default: the waiting ones) with why each waits",
)
def get_awards(
    session: SessionDep,
    client: ApiClientDep,
    state: Annotated[str, Query(pattern="^(waiting|all|[a-z_]+)$")] = "waiting",
    source: Annotated[str | None, Query(max_length=64)] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    offset: Annotated[int, Query(ge=0)] = 0,
) -> list[dict[str, Any]]:
    """Awards, newest first; ``state=waiting`` (default) lists every award without an envelope
    that is not dismissed, ``all`` every award, or one state by name."""
    _read(client)
    one: AwardState | None = None
    if state not in ("waiting", "all"):
        try:
            one = AwardState(state)
        except ValueError as exc:
            raise RecordError(
                "request.bad_state",
                f"unknown award state {state!r}",
                "落札情報の状態の指定が正しくありません。",
            ) from exc
    rows = list_awards(
        session=session, source=source, state=one, waiting=state == "waiting",
        limit=limit, offset=offset,
    )  # fmt: skip
    return [award_json(a) for a in rows]


# What a staff decision on one award can answer besides 200 (the error JSON in each case).
_DECISION_RESPONSES: dict[int | str, dict[str, Any]] = {
    404: {"description": "No such award from that source"},
    409: {"description": "Not possible in the award's state, or a reason is missing"},
}


def _decide(
    context: AppContext,
    session: Session,
    client: ApiClient,
    action: AwardAction,
    source: str,
    award_id: str,
    **needs: Any,
) -> dict[str, Any]:
    """One staff decision over the API: the push scope, audited as ``api:<client>``."""
    require_scope(client, PUSH)
    decision = AwardDecision(source=source, award_id=award_id, actor=f"api:{client.name}", **needs)
    award = decide_award(
        settings=context.gateway.settings, runtime=context.gateway.runtime, session=session,
        action=action, decision=decision,
    )  # fmt: skip
    return award_json(award)


@router.post(
    "/awards/{source}/{award_id}/release",
    response_model=AwardOut,
    summary="Release a waiting or held award (audited)",
    responses=_DECISION_RESPONSES,
)
def post_release(
    context: ContextDep,
    session: SessionDep,
    client: ApiClientDep,
    source: Annotated[str, Path(min_length=1, max_length=64)],
    award_id: Annotated[str, Path(min_length=1, max_length=100)],
    body: ReleaseIn | None = None,
) -> dict[str, Any]:
    """Name the contractor staff confirmed (optional) and make the envelope when ready."""
    contractor_id = body.contractor_id if body else None
    return _decide(
        context, session, client, "release", source, award_id, contractor_id=contractor_id
    )


@router.post(
    "/awards/{source}/{award_id}/dismiss",
    response_model=AwardOut,
    summary="Dismiss a waiting award, or drop a change made after sending (audited)",
    responses=_DECISION_RESPONSES,
)
def post_dismiss(
    context: ContextDep,
    session: SessionDep,
    client: ApiClientDep,
    source: Annotated[str, Path(min_length=1, max_length=64)],
    award_id: Annotated[str, Path(min_length=1, max_length=100)],
    body: DismissIn,
) -> dict[str, Any]:
    """The award never becomes an envelope here; the reason is audited."""
    return _decide(context, session, client, "dismiss", source, award_id, reason=body.reason)


@router.post(
    "/awards/{source}/{award_id}/remap",
    response_model=AwardOut,
    summary="Re-map a waiting award with the source's current mapping (audited)",
    responses={**_DECISION_RESPONSES, 422: {"description": "The current mapping refuses it"}},
)
def post_remap(
    context: ContextDep,
    session: SessionDep,
    client: ApiClientDep,
    source: Annotated[str, Path(min_length=1, max_length=64)],
    award_id: Annotated[str, Path(min_length=1, max_length=100)],
) -> dict[str, Any]:
    """Apply the current mapping to the record kept on the award (after the mapping was
    fixed); the award moves on as a sync run would move it."""
    return _decide(context, session, client, "remap", source, award_id)


class AccessCodeIn(BaseModel):
    """The contractor signer's access code (write-only; the gateway keeps only its hash)."""

    access_code: str


@router.post(
    "/awards/{source}/{award_id}/set-access-code",
    response_model=AwardOut,
    summary="Set the contractor signer's access code of an award waiting for one, and send",
    responses=_DECISION_RESPONSES,
)
def post_set_access_code(
    context: ContextDep,
    session: SessionDep,
    client: ApiClientDep,
    source: Annotated[str, Path(min_length=1, max_length=64)],
    award_id: Annotated[str, Path(min_length=1, max_length=100)],
    body: AccessCodeIn,
) -> dict[str, Any]:
    """For an award waiting with ``no_access_code`` (a registry or mapping signer): the code is
    hashed and set on the contractor's parties, and the draft envelope is sent (audited)."""
    return _decide(context, session, client, "set-code", source, award_id, code=body.access_code)
