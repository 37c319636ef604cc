"""`keiyaku awards ...` and `keiyaku contractors ...`: what waits, why, and staff's decisions.

Registered on the main group by :mod:`gateway.cli`. Output is English (the reasons staff read are
also given in Japanese); times are JST. Every decision is audited with the CLI user as actor.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

import click

from core.timezone import jst_stamp
from gateway._cli import actor, with_gateway

if TYPE_CHECKING:
    from gateway.intake import AwardAction


def _jst(value: Any) -> str | None:
    return jst_stamp(value) if value else None


@click.group()
def awards() -> None:
    """Awards taken in: list what waits and why; release, re-map, set a code or dismiss one."""


@awards.command("list")
@click.option(
    "--state",
    type=click.Choice(
        ["waiting", "all", "waiting_usage_request", "waiting_documents", "waiting_contractor",
         "contractor_conflict", "changed_after_send", "drafted", "sent", "dismissed"]
    ),
    default="waiting",
    show_default=True,
    help="waiting: every award without an envelope that is not dismissed.",
)  # fmt: skip
@click.option("--source", default=None, help="Only awards of this source.")
@click.option("--limit", type=int, default=100, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Print the awards as JSON.")
@click.pass_obj
def awards_list(obj: Any, state: str, source: str | None, limit: int, as_json: bool) -> None:
    """List awards (by default the waiting ones), each with why it waits."""
    from core.intake.awards import list_awards
    from core.model import AwardState
    from gateway.intake import award_json

    with with_gateway(obj) as gateway, gateway.sessions() as session:
        rows = list_awards(
            session=session,
            source=source,
            state=None if state in ("waiting", "all") else AwardState(state),
            waiting=state == "waiting",
            limit=limit,
        )
        items = [award_json(a) for a in rows]
    if as_json:
        click.echo(json.dumps(items, ensure_ascii=False, indent=2))
        return
    for item in items:
        why = item["waiting"]
        click.echo(
            f"{item['source']}:{item['award_id']} {item['state']} {item['title']} "
            f"({item['counterparty'] or '-'})"
            + (f": {why['code']}: {why['reason']}" if why else "")
        )
        if why:
            click.echo(f"  理由: {why['reason_ja']}")
            click.echo(f"  解除: {why['release_ja']}")
    click.echo(f"{len(items)} awards")


def _decide(
    obj: Any, action: AwardAction, source: str, award_id: str, **needs: Any
) -> dict[str, Any]:
    """One staff decision from the command line, audited with the CLI user as actor; the award
    as ``awards list --json`` shows it."""
    from gateway.intake import AwardDecision, award_json, decide_award

    decision = AwardDecision(source=source, award_id=award_id, actor=actor(), **needs)
    with with_gateway(obj) as gateway, gateway.sessions() as session:
        award = decide_award(
            settings=gateway.settings, runtime=gateway.runtime, session=session,
            action=action, decision=decision,
        )  # fmt: skip
        return award_json(award)


def _still_waiting(out: dict[str, Any]) -> str:
    why = out["waiting"]
    return f" (still waiting: {why['code']}: {why['reason']})" if why else ""


@awards.command("release")
@click.argument("source")
@click.argument("award_id")
@click.option(
    "--contractor", "contractor_id", default=None, help="The contractor (id) staff confirmed."
)
@click.pass_obj
def awards_release(obj: Any, source: str, award_id: str, contractor_id: str | None) -> None:
    """Release a waiting or held award (audited): its envelope is made when it is ready."""
    out = _decide(obj, "release", source, award_id, contractor_id=contractor_id)
    click.echo(f"{source}:{award_id}: {out['state']}" + _still_waiting(out))


@awards.command("dismiss")
@click.argument("source")
@click.argument("award_id")
@click.option("--reason", required=True, help="Why (kept in the audit log).")
@click.pass_obj
def awards_dismiss(obj: Any, source: str, award_id: str, reason: str) -> None:
    """Dismiss a waiting award (or drop a change that arrived after sending), audited."""
    out = _decide(obj, "dismiss", source, award_id, reason=reason)
    click.echo(f"{source}:{award_id}: {out['state']}")


@awards.command("remap")
@click.argument("source")
@click.argument("award_id")
@click.pass_obj
def awards_remap(obj: Any, source: str, award_id: str) -> None:
    """Re-map a waiting award: apply the source's current mapping to the record kept on it
    (after the mapping was fixed), audited; its envelope is made when it is ready."""
    out = _decide(obj, "remap", source, award_id)
    click.echo(f"{source}:{award_id}: re-mapped, {out['state']}" + _still_waiting(out))


@awards.command("set-code")
@click.argument("source")
@click.argument("award_id")
@click.option(
    "--code",
    prompt="Access code",
    hide_input=True,
    help="The contractor signer's access code (asked for when not given; tell the contractor "
    "by another channel, it is never mailed).",
)
@click.pass_obj
def awards_set_code(obj: Any, source: str, award_id: str, code: str) -> None:
    """Set the access code of an award waiting with アクセスコード未設定 and send its
    envelope (audited)."""
    out = _decide(obj, "set-code", source, award_id, code=code)
    click.echo(f"{source}:{award_id}: {out['state']} (envelope {out['envelope_id']})")


@click.group()
def contractors() -> None:
    """Contractors: doubts about who is who, for staff to check."""


@contractors.command("conflicts")
@click.option("--all", "show_all", is_flag=True, help="Include resolved ones.")
@click.option("--json", "as_json", is_flag=True, help="Print as JSON.")
@click.pass_obj
def contractors_conflicts(obj: Any, show_all: bool, as_json: bool) -> None:
    """List contractor conflicts: name-only candidates, code/name or code/number mismatches,
    and contractors merged before migration 0014."""
    from core.intake.contractors import CONFLICT_KIND_JA, list_conflicts

    with with_gateway(obj) as gateway, gateway.sessions() as session:
        items = [
            {
                "id": c.id,
                "kind": c.kind,
                "kind_ja": CONFLICT_KIND_JA.get(c.kind, c.kind),
                "contractor_id": c.contractor_id,
                "other_contractor_id": c.other_contractor_id,
                "source": c.source,
                "award_id": c.award_id,
                "message": c.message,
                "message_ja": c.message_ja,
                "detail": c.detail,
                "created_at": _jst(c.created_at),
                "resolved_at": _jst(c.resolved_at),
                "resolved_by": c.resolved_by,
            }
            for c in list_conflicts(session=session, open_only=not show_all, limit=1000)
        ]
    if as_json:
        click.echo(json.dumps(items, ensure_ascii=False, indent=2))
        return
    for item in items:
        where = f" {item['source']}:{item['award_id']}" if item["award_id"] else ""
        click.echo(f"#{item['id']} {item['kind']}{where}: {item['message']}")
    click.echo(f"{len(items)} conflicts")


@contractors.command("resolve")
@click.argument("conflict_id", type=int)
@click.option("--note", required=True, help="What staff checked and decided.")
@click.pass_obj
def contractors_resolve(obj: Any, conflict_id: int, note: str) -> None:
    """Mark a conflict as checked (audited)."""
    from core.intake.contractors import resolve_conflict

    with with_gateway(obj) as gateway, gateway.sessions() as session:
        resolve_conflict(session=session, conflict_id=conflict_id, actor=actor(), resolution=note)
        session.commit()
    click.echo(f"conflict #{conflict_id} resolved")


@click.group()
def consent() -> None:
    """Contractors' prior consents (建設業法19条3項): list, withdraw."""


@consent.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print as JSON.")
@click.option("--limit", type=int, default=100, show_default=True)
@click.pass_obj
def consent_list(obj: Any, as_json: bool, limit: int) -> None:
    """Consents, newest first, with their date, measures and withdrawal."""
    from core.intake.consent import consent_json, list_consents
    from core.model import Contractor

    with with_gateway(obj) as gateway, gateway.sessions() as session:
        items = []
        for c in list_consents(session=session, limit=limit):
            data = consent_json(c) or {}
            contractor = session.get(Contractor, c.contractor_id)
            data["contractor_name"] = contractor.name if contractor else None
            data["corporate_number"] = contractor.corporate_number if contractor else None
            items.append(data)
    if as_json:
        click.echo(json.dumps(items, ensure_ascii=False, indent=2))
        return
    for item in items:
        state = f"withdrawn {item['withdrawn_at']}" if item["withdrawn_at"] else "in force"
        click.echo(
            f"{item['id']} {item['contractor_name']} ({item['corporate_number'] or '-'}): "
            f"consented {item['consented_on']}, {state}"
        )
    click.echo(f"{len(items)} consents")


@consent.command("withdraw")
@click.argument("consent_id")
@click.option("--reason", required=True, help="Why (kept in the audit log).")
@click.pass_obj
def consent_withdraw(obj: Any, consent_id: str, reason: str) -> None:
    """Record the contractor's withdrawal: no new envelope to it (audited)."""
    from core.intake.consent import withdraw_consent

    with with_gateway(obj) as gateway, gateway.sessions() as session:
        withdraw_consent(session=session, consent_id=consent_id, actor=actor(), reason=reason)
        session.commit()
    click.echo(f"consent {consent_id} withdrawn")
