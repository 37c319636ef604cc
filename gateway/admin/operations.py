"""Operations pages for admins (Japanese): the intake's sync runs with their line errors, the
awards that wait (why, and what would release them) with release / dismiss, the scheduled jobs'
recent runs, and the outbox with counts per state and a retry of dead deliveries.

Admins only (``staff.role_required``, 403, for anyone else); the retry is a CSRF-checked post
and an audit event (:func:`core.pushback.outbox.retry_dead`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Literal
from urllib.parse import urlencode

from fastapi import APIRouter, Query, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import HTMLResponse, RedirectResponse, Response

from core.intake.awards import award_state_ja, count_awards, list_awards, waiting_reason
from core.intake.consent import consent_json, list_consents, withdraw_consent
from core.intake.contractors import CONFLICT_KIND_JA, list_conflicts
from core.intake.runs import count_runs, get_run, list_dead_letters, list_runs
from core.jobs import list_job_runs
from core.model import Contractor
from core.pushback.outbox import count_deliveries, list_deliveries, list_targets, retry_dead
from core.states import DeliveryState
from gateway.admin.pages import admin_page, admin_staff, to_login
from gateway.deps import ClientIpDep, ContextDep, SessionDep
from gateway.pages.signing import check_csrf

router = APIRouter(prefix="/admin", include_in_schema=False)

PER_PAGE = 50
# A run's line errors shown on its page; a run with more is a mapping to fix, not to read.
MAX_LINE_ERRORS = 1000

RUN_STATUS_JA = {"running": "実行中", "succeeded": "成功", "failed": "失敗"}
TRIGGER_JA = {"cli": "コマンド", "schedule": "定期実行", "api": "API"}
DELIVERY_STATE_JA = {
    DeliveryState.PENDING: "送信待ち",
    DeliveryState.LEASED: "送信中",
    DeliveryState.DELIVERED: "配信済み",
    DeliveryState.DEAD: "配信失敗",
}

PageNumber = Annotated[int, Query(ge=1, le=1_000_000)]


@dataclass(frozen=True)
class Pager:
    """Page links of a list: which page this is, how many there are, the other parameters."""

    page: int
    total: int
    path: str
    params: tuple[tuple[str, str], ...] = ()

    @property
    def pages(self) -> int:
        """How many pages the rows fill (at least one)."""
        return max(1, -(-self.total // PER_PAGE))

    @property
    def offset(self) -> int:
        """How many rows come before this page."""
        return (self.page - 1) * PER_PAGE

    def href(self, page: int) -> str:
        """The address of another page of the same list."""
        return f"{self.path}?{urlencode([*self.params, ('page', str(page))])}"


@router.get("/sync-runs", response_class=HTMLResponse)
def sync_runs(
    request: Request,
    context: ContextDep,
    session: SessionDep,
    page: PageNumber = 1,
    source: Annotated[str | None, Query(max_length=64)] = None,
) -> Response:
    """The intake's sync runs, newest first, and the scheduled jobs' latest runs."""
    staff = admin_staff(request, context, session)
    if staff is None:
        return to_login(request)
    source = source or None
    pager = Pager(
        page,
        count_runs(session=session, source=source),
        "/admin/sync-runs",
        (("source", source),) if source else (),
    )
    return admin_page(
        request,
        context,
        "admin/sync_runs.html",
        staff,
        runs=list_runs(session=session, source=source, limit=PER_PAGE, offset=pager.offset),
        pager=pager,
        source=source or "",
        jobs=list_job_runs(session=session, limit=20),
        status_ja=RUN_STATUS_JA,
        trigger_ja=TRIGGER_JA,
    )


@router.get("/sync-runs/{run_id}", response_class=HTMLResponse)
def sync_run(request: Request, run_id: int, context: ContextDep, session: SessionDep) -> Response:
    """One sync run: its counts and every line error (file, line, field, reason)."""
    staff = admin_staff(request, context, session)
    if staff is None:
        return to_login(request)
    run = get_run(session=session, run_id=run_id)
    errors = list_dead_letters(session=session, run_id=run.id, limit=MAX_LINE_ERRORS)
    return admin_page(
        request,
        context,
        "admin/sync_run.html",
        staff,
        run=run,
        errors=sorted(errors, key=lambda e: (e.file or "", e.line or 0, e.id)),
        truncated=len(errors) >= MAX_LINE_ERRORS,
        status_ja=RUN_STATUS_JA,
        trigger_ja=TRIGGER_JA,
    )


@router.get("/awards", response_class=HTMLResponse)
def awards_page(
    request: Request,
    context: ContextDep,
    session: SessionDep,
    page: PageNumber = 1,
    source: Annotated[str | None, Query(max_length=64)] = None,
) -> Response:
    """Awards without an envelope: why each waits, what would release it, and the open
    contractor conflicts."""
    staff = admin_staff(request, context, session)
    if staff is None:
        return to_login(request)
    source = source or None
    pager = Pager(
        page,
        count_awards(session=session, source=source, waiting=True),
        "/admin/awards",
        (("source", source),) if source else (),
    )
    rows = list_awards(
        session=session, source=source, waiting=True, limit=PER_PAGE, offset=pager.offset
    )
    return admin_page(
        request,
        context,
        "admin/awards.html",
        staff,
        awards=[(a, award_state_ja(a.state), waiting_reason(a)) for a in rows],
        conflicts=list_conflicts(session=session, limit=PER_PAGE),
        conflict_kind_ja=CONFLICT_KIND_JA,
        pager=pager,
        source=source or "",
    )


@router.post("/awards/{source}/{award_id}/{action}")
async def award_action(
    request: Request,
    source: str,
    award_id: str,
    action: Literal["release", "dismiss", "set-code", "remap"],
    context: ContextDep,
    session: SessionDep,
) -> Response:
    """Release (optionally naming the contractor), re-map with the current mapping, set the
    signer's access code and send, or dismiss (with a reason) one award."""
    form = await request.form()
    check_csrf(request, context, str(form.get("csrf_token") or ""))

    def run() -> Response:
        staff = admin_staff(request, context, session)
        if staff is None:
            return to_login(request)
        from gateway.intake import AwardDecision, decide_award

        decision = AwardDecision(
            source=source,
            award_id=award_id,
            actor=staff.email,
            contractor_id=str(form.get("contractor_id") or "").strip() or None,
            code=str(form.get("access_code") or ""),
            reason=str(form.get("reason") or ""),
        )
        decide_award(
            settings=context.gateway.settings, runtime=context.gateway.runtime,
            session=session, action=action, decision=decision,
        )  # fmt: skip
        return RedirectResponse("/admin/awards", status_code=303)

    return await run_in_threadpool(run)


@router.get("/consents", response_class=HTMLResponse)
def consents_page(request: Request, context: ContextDep, session: SessionDep) -> Response:
    """The contractors' prior consents (建設業法19条3項), with their withdrawal."""
    staff = admin_staff(request, context, session)
    if staff is None:
        return to_login(request)
    rows = []
    for consent in list_consents(session=session, limit=500):
        contractor = session.get(Contractor, consent.contractor_id)
        rows.append((consent_json(consent), contractor))
    return admin_page(request, context, "admin/consents.html", staff, consents=rows)


@router.post("/consents/{consent_id}/withdraw")
async def consent_withdraw(
    request: Request, consent_id: str, context: ContextDep, session: SessionDep, ip: ClientIpDep
) -> Response:
    """Record a withdrawal (audited): no new envelope to that contractor."""
    form = await request.form()
    check_csrf(request, context, str(form.get("csrf_token") or ""))

    def run() -> Response:
        staff = admin_staff(request, context, session)
        if staff is None:
            return to_login(request)
        withdraw_consent(
            session=session, consent_id=consent_id, actor=staff.email,
            reason=str(form.get("reason") or ""), ip=ip,
        )  # fmt: skip
        session.commit()
        return RedirectResponse("/admin/consents", status_code=303)

    return await run_in_threadpool(run)


@router.get("/outbox", response_class=HTMLResponse)
def outbox(
    request: Request,
    context: ContextDep,
    session: SessionDep,
    page: PageNumber = 1,
    state: Literal["pending", "leased", "delivered", "dead", ""] = "",
    target: Annotated[str | None, Query(max_length=64)] = None,
) -> Response:
    """Deliveries by state and target, newest first, with counts per state."""
    staff = admin_staff(request, context, session)
    if staff is None:
        return to_login(request)
    target = target or None
    chosen = DeliveryState(state) if state else None
    counts = count_deliveries(session=session, target=target)
    params = [(k, v) for k, v in (("state", state), ("target", target or "")) if v]
    pager = Pager(
        page,
        counts[chosen] if chosen else sum(counts.values()),
        "/admin/outbox",
        tuple(params),
    )
    return admin_page(
        request,
        context,
        "admin/outbox.html",
        staff,
        deliveries=list_deliveries(
            session=session, state=chosen, target=target, limit=PER_PAGE, offset=pager.offset
        ),
        counts=counts,
        pager=pager,
        state=state,
        target=target or "",
        targets=list_targets(session=session),
        state_ja=DELIVERY_STATE_JA,
        dead=DeliveryState.DEAD,
    )


@router.post("/outbox/{delivery_id}/retry")
async def outbox_retry(
    request: Request, delivery_id: int, context: ContextDep, session: SessionDep, ip: ClientIpDep
) -> Response:
    """Send a dead delivery round again (再送)."""
    form = await request.form()
    check_csrf(request, context, str(form.get("csrf_token") or ""))

    def run() -> Response:
        staff = admin_staff(request, context, session)
        if staff is None:
            return to_login(request)
        retry_dead(session=session, delivery_id=delivery_id, actor=staff.email, ip=ip)
        context.wake_mailer()
        return RedirectResponse(f"/admin/outbox?state={DeliveryState.DEAD}", status_code=303)

    return await run_in_threadpool(run)
