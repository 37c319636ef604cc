"""`keiyaku outbox ...` and `keiyaku guarantee ...`: push-back deliveries and guarantee references.

Registered on the main group by :mod:`gateway.cli`. Output is English; times are JST.
"""

from __future__ import annotations

import json
import signal
import sys
import threading
from pathlib import Path
from typing import Any

import click

from core.errors import GatewayError
from core.states import DeliveryState
from core.timezone import jst_stamp
from gateway._cli import actor, fail, with_gateway


def _jst(value: Any) -> str:
    return jst_stamp(value) if value else "-"


def _envelope_id(session: Any, ref: str) -> str:
    """An envelope by id or by management number."""
    from sqlalchemy import select

    from core.model import Envelope

    found = session.scalar(
        select(Envelope.id).where((Envelope.id == ref) | (Envelope.management_number == ref))
    )
    if found is None:
        fail(GatewayError("not_found.envelope", f"no envelope {ref}", "封筒が見つかりません。"))
    return str(found)


# --- outbox ---


@click.group("outbox")
def outbox() -> None:
    """Push-back deliveries: list, show, retry, dispatch."""


def _delivery_row(d: Any) -> dict[str, Any]:
    """One delivery (a ``core.model.Delivery``) for listing."""
    return {
        "id": d.id,
        "target": d.target,
        "state": d.state.value,
        "attempts": d.attempts,
        "envelope_id": d.envelope_id,
        "management_number": d.payload.get("management_number"),
        "event": d.payload.get("event"),
        "idempotency_key": d.idempotency_key,
        "next_attempt_at": _jst(d.next_attempt_at),
        "lease_owner": d.lease_owner,
        "lease_expires_at": _jst(d.lease_expires_at),
        "created_at": _jst(d.created_at),
        "delivered_at": _jst(d.delivered_at),
        "last_error": d.last_error,
    }


@outbox.command("list")
@click.option("--state", type=click.Choice([s.value for s in DeliveryState]), default=None)
@click.option("--target", default=None, help="Only deliveries to this sink.")
@click.option("--limit", type=int, default=50, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.pass_obj
def outbox_list(obj: Any, state: str | None, target: str | None, limit: int, as_json: bool) -> None:
    """Deliveries, newest first."""
    from core.pushback.outbox import list_deliveries

    with with_gateway(obj) as gateway, gateway.sessions() as session:
        rows = [
            _delivery_row(d)
            for d in list_deliveries(
                session=session,
                state=DeliveryState(state) if state else None,
                target=target,
                limit=limit,
            )
        ]
    if as_json:
        click.echo(json.dumps(rows, ensure_ascii=False, indent=2))
        return
    click.echo(
        f"{'ID':>6}  {'STATE':9}  {'TARGET':12}  {'TRIES':>5}  {'NEXT':23}  ENVELOPE / ERROR"
    )
    for r in rows:
        error = f"  {r['last_error'][:60]}" if r["last_error"] else ""
        click.echo(
            f"{r['id']:>6}  {r['state']:9}  {r['target'][:12]:12}  {r['attempts']:>5}  "
            f"{r['next_attempt_at']:23}  {r['management_number'] or r['envelope_id'] or '-'}"
            f"{error}"
        )


@outbox.command("show")
@click.argument("delivery_id", type=int)
@click.pass_obj
def outbox_show(obj: Any, delivery_id: int) -> None:
    """One delivery in full, with its last error."""
    from core.pushback.outbox import get_delivery

    with with_gateway(obj) as gateway, gateway.sessions() as session:
        row = _delivery_row(get_delivery(session=session, delivery_id=delivery_id))
    for key, value in row.items():
        click.echo(f"{key}: {value if value is not None else '-'}")


@outbox.command("retry")
@click.argument("delivery_id", type=int)
@click.pass_obj
def outbox_retry(obj: Any, delivery_id: int) -> None:
    """Send a dead delivery round again (its attempts start over)."""
    from core.pushback.outbox import retry_dead

    with with_gateway(obj) as gateway, gateway.sessions() as session:
        delivery = retry_dead(session=session, delivery_id=delivery_id, actor=actor())
        click.echo(f"delivery {delivery.id}: {delivery.state.value}, due now")


@outbox.command("dispatch")
@click.option("--loop", is_flag=True, help="Keep running; poll every outbox.poll_seconds.")
@click.option("--sink", "sinks", multiple=True, help="Only this sink (repeatable).")
@click.option("--worker", default=None, help="Worker name in leases (default host:pid).")
@click.pass_obj
def outbox_dispatch(obj: Any, loop: bool, sinks: tuple[str, ...], worker: str | None) -> None:
    """Push due deliveries to their sinks until none is due (or, with --loop, until stopped)."""
    from gateway.sinks import build_targets, close_targets, lease, retry_policy
    from schedules.pushback import run_until_idle

    stop = threading.Event()
    if loop:
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *_: stop.set())
    with with_gateway(obj) as gateway:
        settings = gateway.settings
        unknown = set(sinks) - set(settings.sinks)
        if unknown:
            fail(
                GatewayError(
                    "config.unknown_sink",
                    f"no sink named {', '.join(sorted(unknown))}",
                    "指定された送信先がありません。",
                )
            )
        targets = build_targets(settings, list(sinks) if sinks else None)
        try:
            totals = run_until_idle(
                sessions=gateway.sessions,
                runtime=gateway.runtime,
                targets=targets,
                worker=worker,
                policy=retry_policy(settings),
                limit=settings.outbox.batch_size,
                lease=lease(settings),
                department=settings.buyer.department,
                poll_seconds=settings.outbox.poll_seconds,
                stop=stop,
                forever=loop,
            )
        finally:
            close_targets(targets)
    click.echo(
        f"delivered: {len(totals.delivered)}  retrying: {len(totals.retrying)}  "
        f"dead: {len(totals.dead)}  lost lease: {len(totals.lost)}"
    )


# --- guarantee references ---


@click.group("guarantee")
def guarantee() -> None:
    """Guarantee references (電子保証): add, import a notice PDF, list, remove."""


def _print_guarantee(ref: Any) -> None:
    from core.envelopes.guarantees import KIND_JA, masked_key

    click.echo(
        f"{ref.id}  {KIND_JA[ref.kind]}  {ref.contract_number}  key {masked_key(ref)}  "
        f"{ref.issuer}  ({ref.source}, {_jst(ref.created_at)})"
    )


@guarantee.command("add")
@click.argument("envelope")
@click.option(
    "--kind", required=True, help="契約保証 | 前払金保証 | 中間前払金保証 (or contract, ...)"
)
@click.option("--number", required=True, help="Guarantee contract number (保証契約番号).")
@click.option("--issuer", required=True, help="The guarantee company (保証機関).")
@click.option("--project-name", default=None, help="工事名 as printed by the issuer (checked).")
@click.option("--key-stdin", is_flag=True, help="Read the authentication key from standard input.")
@click.option("--allow-reuse", is_flag=True, help="Allow a number used on another envelope.")
@click.pass_obj
def guarantee_add(
    obj: Any,
    envelope: str,
    kind: str,
    number: str,
    issuer: str,
    project_name: str | None,
    key_stdin: bool,
    allow_reuse: bool,
) -> None:
    """Add a reference to ENVELOPE (id or management number). The authentication key is asked
    for (hidden) or read from stdin, never taken from the command line."""
    from core.envelopes.guarantees import GuaranteeInput, add_guarantee

    key = (
        sys.stdin.readline().strip()
        if key_stdin
        else click.prompt("authentication key (認証キー)", hide_input=True)
    )
    with with_gateway(obj) as gateway, gateway.sessions() as session:
        ref = add_guarantee(
            session=session,
            runtime=gateway.runtime,
            envelope_id=_envelope_id(session, envelope),
            reference=GuaranteeInput(
                kind=kind,
                contract_number=number,
                authentication_key=key,
                issuer=issuer,
                project_name=project_name,
            ),
            actor=actor(),
            source="cli",
            allow_reuse=allow_reuse,
        )
        session.commit()
        _print_guarantee(ref)


@guarantee.command("import-notice")
@click.argument("envelope")
@click.argument("file", type=click.Path(path_type=Path, dir_okay=False, exists=True))
@click.option("--allow-reuse", is_flag=True, help="Allow a number used on another envelope.")
@click.pass_obj
def guarantee_import_notice(obj: Any, envelope: str, file: Path, allow_reuse: bool) -> None:
    """Add the reference printed on an issuer's notice PDF (電子証書閲覧用「認証キー」等のお知らせ)."""
    from core.envelopes.guarantees import import_notice

    data = file.read_bytes()
    with with_gateway(obj) as gateway, gateway.sessions() as session:
        ref = import_notice(
            session=session,
            runtime=gateway.runtime,
            envelope_id=_envelope_id(session, envelope),
            data=data,
            actor=actor(),
            allow_reuse=allow_reuse,
        )
        session.commit()
        _print_guarantee(ref)


@guarantee.command("list")
@click.argument("envelope")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.pass_obj
def guarantee_list(obj: Any, envelope: str, as_json: bool) -> None:
    """An envelope's references (authentication keys masked)."""
    from core.envelopes.guarantees import KIND_JA, list_guarantees, masked_key

    with with_gateway(obj) as gateway, gateway.sessions() as session:
        refs = list_guarantees(session=session, envelope_id=_envelope_id(session, envelope))
        if as_json:
            rows = [
                {
                    "id": r.id,
                    "kind": r.kind.value,
                    "kind_ja": KIND_JA[r.kind],
                    "contract_number": r.contract_number,
                    "authentication_key": masked_key(r),
                    "issuer": r.issuer,
                    "source": r.source,
                    "created_at": _jst(r.created_at),
                }
                for r in refs
            ]
            click.echo(json.dumps(rows, ensure_ascii=False, indent=2))
            return
        for ref in refs:
            _print_guarantee(ref)
        if not refs:
            click.echo("no guarantee references")


@guarantee.command("remove")
@click.argument("envelope")
@click.argument("guarantee_id")
@click.option("--reason", required=True, help="Why (kept in the audit trail).")
@click.pass_obj
def guarantee_remove(obj: Any, envelope: str, guarantee_id: str, reason: str) -> None:
    """Remove a mistaken reference (recorded in the audit trail)."""
    from core.envelopes.guarantees import remove_guarantee

    with with_gateway(obj) as gateway, gateway.sessions() as session:
        remove_guarantee(
            session=session,
            envelope_id=_envelope_id(session, envelope),
            guarantee_id=guarantee_id,
            actor=actor(),
            reason=reason,
            runtime=gateway.runtime,
        )
        session.commit()
        click.echo(f"removed {guarantee_id}")
