"""``POST /api/v1/awards/{source}``: an e-bidding system pushes an award the moment it is decided.

The body is one record, as JSON (field name → value) or, when the source names an XSD, as XML
validated against it (external entities and DTDs refused, no network or file includes). It goes
through the source's YAML mapping exactly like a pulled record, as a sync run of its own, so
idempotency on (source, award id), the dead-letter store and the usage-request wait all apply.
"""

from __future__ import annotations

import json
from typing import Annotated, Any

import xmlschema
from fastapi import APIRouter, Path, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse
from pydantic import BaseModel

from core.api_clients import require_scope
from core.errors import NotFoundError, RecordError
from gateway import intake
from gateway.deps import ApiClientDep, ContextDep
from gateway.runtime import access_code_policy
from gateway.settings import ApiSourceSettings
from schedules.sync import SyncResult, accept_record

router = APIRouter(prefix="/api/v1", tags=["awards"])

PUSH = "awards:write"

MAX_BODY = 1024 * 1024


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


def _accept(context: Any, name: str, fields: dict[str, Any], reference: str) -> SyncResult:
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
