"""The guarantee references (電子保証) of one envelope over the API: read (the 認証キー masked),
add (the key is write-only), remove with a reason. A reference added or removed after
completion reaches the finance sinks as an update (:mod:`core.pushback.deliveries`)."""

from __future__ import annotations

import datetime as dt
from typing import Annotated, Any

from fastapi import APIRouter, Path, Query
from pydantic import BaseModel, ConfigDict, Field

from core.envelopes.guarantees import (
    KIND_JA,
    GuaranteeInput,
    add_guarantee,
    list_guarantees,
    masked_key,
    remove_guarantee,
)
from core.model import GuaranteeReference
from core.staff.api_clients import get_client_envelope, require_scope
from gateway.deps import ApiClientDep, ContextDep, SessionDep

router = APIRouter(prefix="/api/v1", tags=["guarantees"])

READ, WRITE = "envelopes:read", "envelopes:write"
EnvelopeId = Annotated[str, Path(min_length=1, max_length=32, pattern=r"^[0-9a-f]+$")]
GuaranteeId = Annotated[str, Path(min_length=1, max_length=32, pattern=r"^[0-9a-f]+$")]
_ERRORS: dict[int | str, dict[str, Any]] = {
    401: {"description": "Missing or unknown API token"},
    404: {"description": "No such envelope among this system's, or no such reference"},
    422: {"description": "Invalid or refused reference (guarantee.*)"},
}


class GuaranteeIn(BaseModel):
    """One reference as the contractor handed it over."""

    model_config = ConfigDict(extra="forbid")

    kind: str = Field(
        min_length=1,
        max_length=20,
        description="contract | advance | interim_advance, or 契約保証…",
    )
    contract_number: str = Field(min_length=1, max_length=40, description="保証契約番号")
    authentication_key: str = Field(
        min_length=1, max_length=80, description="認証キー (write-only: never returned)"
    )
    issuer: str = Field(min_length=1, max_length=200, description="保証機関")
    project_name: str | None = Field(default=None, max_length=300, description="工事名 as printed")


class GuaranteeOut(BaseModel):
    """One reference; the key masked to its last two characters."""

    id: str
    kind: str
    kind_ja: str
    contract_number: str
    issuer: str
    authentication_key: str = Field(description="Masked: ******** and the last two characters")
    source: str
    created_at: dt.datetime
    verified_at: dt.datetime | None
    verified_by: str | None


def guarantee_out(row: GuaranteeReference) -> GuaranteeOut:
    """The API view of a reference (never the key)."""
    return GuaranteeOut(
        id=row.id,
        kind=row.kind.value,
        kind_ja=KIND_JA[row.kind],
        contract_number=row.contract_number,
        issuer=row.issuer,
        authentication_key=masked_key(row),
        source=row.source,
        created_at=row.created_at,
        verified_at=row.verified_at,
        verified_by=row.verified_by,
    )


@router.get(
    "/envelopes/{envelope_id}/guarantees", response_model=list[GuaranteeOut], responses=_ERRORS
)
def read_guarantees(
    envelope_id: EnvelopeId, session: SessionDep, client: ApiClientDep
) -> list[GuaranteeOut]:
    """The envelope's guarantee references, keys masked."""
    require_scope(client, READ)
    envelope = get_client_envelope(session=session, client_id=client.id, envelope_id=envelope_id)
    return [guarantee_out(r) for r in list_guarantees(session=session, envelope_id=envelope.id)]


@router.post(
    "/envelopes/{envelope_id}/guarantees",
    response_model=GuaranteeOut,
    status_code=201,
    responses=_ERRORS,
)
def add(
    envelope_id: EnvelopeId,
    body: GuaranteeIn,
    session: SessionDep,
    client: ApiClientDep,
    context: ContextDep,
) -> GuaranteeOut:
    """Add one reference (checked: kind, number, key format, number not on another envelope,
    project name when given); after completion the finance sinks get an update."""
    require_scope(client, WRITE)
    envelope = get_client_envelope(session=session, client_id=client.id, envelope_id=envelope_id)
    row = add_guarantee(
        session=session,
        runtime=context.gateway.runtime,
        envelope_id=envelope.id,
        reference=GuaranteeInput(
            kind=body.kind,
            contract_number=body.contract_number,
            authentication_key=body.authentication_key,
            issuer=body.issuer,
            project_name=body.project_name,
        ),
        actor=f"api:{client.name}",
        source="api",
    )
    session.commit()
    return guarantee_out(row)


@router.delete(
    "/envelopes/{envelope_id}/guarantees/{guarantee_id}", status_code=204, responses=_ERRORS
)
def remove(
    envelope_id: EnvelopeId,
    guarantee_id: GuaranteeId,
    reason: Annotated[str, Query(min_length=1, max_length=500, description="Why (audited)")],
    session: SessionDep,
    client: ApiClientDep,
    context: ContextDep,
) -> None:
    """Remove a mistaken reference, with the reason kept in the audit trail."""
    require_scope(client, WRITE)
    envelope = get_client_envelope(session=session, client_id=client.id, envelope_id=envelope_id)
    remove_guarantee(
        session=session,
        envelope_id=envelope.id,
        guarantee_id=guarantee_id,
        actor=f"api:{client.name}",
        reason=reason,
        runtime=context.gateway.runtime,
    )
    session.commit()
