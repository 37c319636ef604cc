"""``POST /api/v1/staff/import``: personnel's system sends the staff list as CSV.

The same import as ``keiyaku staff import`` (:func:`core.staff.accounts.plan_import` then
:func:`core.staff.accounts.apply_import`), with the same JSON diff as its ``--json``. The CSV comes as
the body (``text/csv``, UTF-8 or CP932) or as the ``file`` part of a multipart form. A file with
a bad line is refused whole (422, every bad line with its number) unless ``skip_bad_lines``;
``dry_run`` only reports; what is applied is applied in one transaction. Needs the scope
``staff:write``, which a client gets only when asked for by name.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query, Request
from fastapi.concurrency import run_in_threadpool
from pydantic import BaseModel
from sqlalchemy.orm import Session
from starlette.datastructures import UploadFile

from core.errors import GatewayError
from core.model import ApiClient
from core.staff.accounts import MAX_IMPORT_BYTES, apply_import, plan_import, refuse_bad_lines
from core.staff.api_clients import require_scope
from gateway.deps import ApiClientDep, ClientIpDep, SessionDep

router = APIRouter(prefix="/api/v1", tags=["staff"])

STAFF_WRITE = "staff:write"

_IMPORT_BODY: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "content": {
            "text/csv": {
                "schema": {
                    "type": "string",
                    "description": "Header name, department, email, roles, scope (or the "
                    "Japanese names 氏名, 所属, メールアドレス, 権限, 閲覧範囲); UTF-8 or CP932",
                }
            },
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "required": ["file"],
                    "properties": {"file": {"type": "string", "format": "binary"}},
                }
            },
        },
    }
}


class StaffCreated(BaseModel):
    """A staff member the file adds."""

    line: int
    email: str
    name: str
    department: str | None
    roles: str
    scope: str
    disabled: bool


class StaffUpdated(BaseModel):
    """A staff member the file changes: per field, ``{"from": old, "to": new}``."""

    line: int
    email: str
    changes: dict[str, dict[str, Any]]


class StaffDisabled(BaseModel):
    """A staff member missing from the file, disabled (``disable_missing``)."""

    email: str
    name: str


class ImportLineError(BaseModel):
    """Why one line of the file was refused."""

    line: int
    code: str
    message: str


class StaffImportResult(BaseModel):
    """What the import did, or with ``dry_run`` would do (``applied`` false)."""

    created: list[StaffCreated]
    updated: list[StaffUpdated]
    disabled: list[StaffDisabled]
    unchanged: int
    errors: list[ImportLineError]
    applied: bool


def _too_large() -> GatewayError:
    return GatewayError(
        "request.too_large",
        f"the CSV is larger than {MAX_IMPORT_BYTES} bytes",
        "ファイルが1MBを超えています。",
    )


async def _read_csv(request: Request) -> bytes:
    length = request.headers.get("content-length", "")
    if length.isdigit() and int(length) > MAX_IMPORT_BYTES + 64 * 1024:
        raise _too_large()
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if content_type == "text/csv":
        body = bytearray()
        async for chunk in request.stream():
            body += chunk
            if len(body) > MAX_IMPORT_BYTES:
                raise _too_large()
        return bytes(body)
    if content_type == "multipart/form-data":
        async with request.form(max_files=1, max_fields=5) as form:
            upload = form.get("file")
            if not isinstance(upload, UploadFile):
                raise GatewayError(
                    "request.invalid",
                    "a multipart import needs the CSV as the file part `file`",
                    "CSVファイルを file として添付してください。",
                )
            data = await upload.read(MAX_IMPORT_BYTES + 1)
        if len(data) > MAX_IMPORT_BYTES:
            raise _too_large()
        return data
    raise GatewayError(
        "request.unsupported_media_type",
        "send text/csv or multipart/form-data",
        "text/csv または multipart/form-data で送信してください。",
    )


def _import(
    session: Session,
    client: ApiClient,
    data: bytes,
    *,
    dry_run: bool,
    skip_bad_lines: bool,
    disable_missing: bool,
    ip: str | None,
) -> StaffImportResult:
    plan, lines = plan_import(session=session, data=data, disable_missing=disable_missing)
    if not skip_bad_lines:
        refuse_bad_lines(plan)
    if not dry_run:
        apply_import(
            session=session,
            plan=plan,
            lines=lines,
            actor=f"api:{client.name}",
            skip_bad_lines=skip_bad_lines,
            ip=ip,
        )
        session.commit()
    return StaffImportResult.model_validate({**plan.as_dict(), "applied": not dry_run})


@router.post(
    "/staff/import",
    response_model=StaffImportResult,
    summary="Import staff from a CSV (upsert by e-mail), or with dry_run show what would change",
    openapi_extra=_IMPORT_BODY,
    responses={
        401: {"description": "Missing or unknown API token"},
        403: {"description": "The token lacks staff:write, or the address is not allowed"},
        413: {"description": "Larger than 1 MB"},
        415: {"description": "Neither text/csv nor multipart"},
        422: {"description": "Bad lines (details.errors, with line numbers) or an unreadable file"},
    },
)
async def import_staff(
    request: Request,
    session: SessionDep,
    client: ApiClientDep,
    ip: ClientIpDep,
    dry_run: Annotated[bool, Query(description="Report the diff, change nothing")] = False,
    skip_bad_lines: Annotated[
        bool, Query(description="Apply the good lines when some are bad")
    ] = False,
    disable_missing: Annotated[
        bool, Query(description="Disable staff who are not in the file (a full list)")
    ] = False,
) -> StaffImportResult:
    """Upsert staff by e-mail from the CSV; nothing is applied when a line is bad, unless
    ``skip_bad_lines``."""
    require_scope(client, STAFF_WRITE)
    data = await _read_csv(request)
    return await run_in_threadpool(
        _import,
        session,
        client,
        data,
        dry_run=dry_run,
        skip_bad_lines=skip_bad_lines,
        disable_missing=disable_missing,
        ip=ip,
    )
