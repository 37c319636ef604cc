"""``/api/v1/consents``: the contractors' prior consents (電子契約利用申出書 / 承諾書,
建設業法19条3項) — record one received outside the sources, list them, withdraw one (audited).
A withdrawn consent stops new envelopes to that contractor on every path."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path, Query

from core.drafts import ContractorRef, UsageRequestDraft
from core.intake.consent import get_consent, list_consents, withdraw_consent
from core.intake.contractors import ContractorDirectory, find_contractor, upsert_usage_request
from core.staff.api_clients import require_scope
from gateway import intake
from gateway.api.schemas import ConsentIn, ConsentOut, WithdrawIn, consent_out
from gateway.deps import ApiClientDep, ClientIpDep, ContextDep, SessionDep
from gateway.runtime import access_code_policy

router = APIRouter(prefix="/api/v1", tags=["consents"])

READ, WRITE = "envelopes:read", "envelopes:write"


def _out(consent: object) -> ConsentOut:
    out = consent_out(consent)  # type: ignore[arg-type]
    assert out is not None
    return out


@router.post("/consents", response_model=ConsentOut, summary="Record a contractor's consent")
def post_consent(
    context: ContextDep, session: SessionDep, client: ApiClientDep, body: ConsentIn
) -> ConsentOut:
    """Record one consent (with its date and the 電磁的措置 agreed to) for the contractor named
    by corporate number or registry code; the same contractor and date twice is one consent."""
    require_scope(client, WRITE)
    settings = context.gateway.settings
    draft = UsageRequestDraft(
        contractor=ContractorRef(
            name=body.contractor_name,
            corporate_number=body.contractor.corporate_number,
            registry_code=body.contractor.registry_code,
        ),
        signer_name=body.signer_name,
        signer_title=body.signer_title,
        signer_email=body.signer_email,
        access_code=body.access_code,
        consented_on=body.consented_on,
        measures=body.measures,
    )
    row, _outcome = upsert_usage_request(
        session=session,
        source=f"api:{client.name}"[:64],
        draft=draft,
        policy=intake.policy(settings, access_codes=access_code_policy(settings)),
        directory=ContractorDirectory(),
    )
    session.commit()
    return _out(row)


@router.get("/consents", response_model=list[ConsentOut], summary="List consents")
def get_consents(
    session: SessionDep,
    client: ApiClientDep,
    corporate_number: Annotated[str | None, Query(pattern=r"^[0-9]{13}$")] = None,
    registry_code: Annotated[str | None, Query(max_length=200)] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> list[ConsentOut]:
    """Consents, newest first; of one contractor when its number or code is given."""
    require_scope(client, READ)
    contractor_id = None
    if corporate_number or registry_code:
        contractor = find_contractor(
            session=session, corporate_number=corporate_number, registry_code=registry_code
        )
        if contractor is None:
            return []
        contractor_id = contractor.id
    return [
        _out(c) for c in list_consents(session=session, contractor_id=contractor_id, limit=limit)
    ]


@router.post(
    "/consents/{consent_id}/withdraw",
    response_model=ConsentOut,
    summary="Withdraw a consent (audited): no new envelopes to that contractor",
    responses={
        404: {"description": "No such consent"},
        409: {"description": "Already withdrawn, or a reason is missing"},
    },
)
def post_withdraw(
    session: SessionDep,
    client: ApiClientDep,
    ip: ClientIpDep,
    consent_id: Annotated[str, Path(min_length=1, max_length=32)],
    body: WithdrawIn,
) -> ConsentOut:
    """Record that the contractor withdrew its consent."""
    require_scope(client, WRITE)
    get_consent(session=session, consent_id=consent_id)
    consent = withdraw_consent(
        session=session, consent_id=consent_id, actor=f"api:{client.name}", reason=body.reason,
        ip=ip,
    )  # fmt: skip
    session.commit()
    return _out(consent)
