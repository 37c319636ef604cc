"""`keiyaku staff ...`, `keiyaku audit ...` and `keiyaku report ...`.

Registered on the main group by :mod:`gateway.cli`. Output is English; times are JST.
"""

from __future__ import annotations

import datetime as dt
import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from core.csv_export import SafeCsvWriter
from core.timezone import JST
from gateway._cli import actor, with_session

if TYPE_CHECKING:
    pass


def password_policy(settings: Any) -> Any:
    """The password policy the settings ask for."""
    from core.staff.accounts import PasswordPolicy

    return PasswordPolicy(
        min_length=settings.staff.password_min_length,
        max_failures=settings.staff.max_failed_logins,
        lockout=dt.timedelta(minutes=settings.staff.lockout_minutes),
        min_score=settings.staff.password_min_score,
    )


def _staff_json(staff: Any) -> dict[str, Any]:
    return {
        "email": staff.email,
        "name": staff.name,
        "department": staff.department,
        "roles": staff.roles,
        "scope": staff.scope.value,
        "disabled": staff.disabled,
        "totp": bool(staff.totp_secret),
    }


@click.group()
def staff() -> None:
    """Staff members: import from CSV, add, edit, set passwords."""


@staff.command("import")
@click.argument("file", type=click.Path(path_type=Path, dir_okay=False, exists=True))
@click.option("--dry-run", is_flag=True, help="Print what would change; change nothing.")
@click.option("--json", "as_json", is_flag=True, help="Print the diff as JSON.")
@click.option("--skip-bad-lines", is_flag=True, help="Apply the good lines when some are bad.")
@click.option(
    "--disable-missing", is_flag=True, help="Disable staff who are not in the file (a full list)."
)
@click.pass_obj
def staff_import(
    obj: Any, file: Path, dry_run: bool, as_json: bool, skip_bad_lines: bool, disable_missing: bool
) -> None:
    """Upsert staff by e-mail from a CSV (UTF-8 or CP932): name, department, email, roles, scope.

    Nothing is applied when a line is bad, unless --skip-bad-lines. Exit code 1 when lines were
    bad, 2 when nothing could be read.
    """
    from core.staff.accounts import apply_import, plan_import

    with with_session(obj, commit=not dry_run) as session:
        plan, lines = plan_import(
            session=session, data=file.read_bytes(), disable_missing=disable_missing
        )
        applied = not dry_run and (not plan.errors or skip_bad_lines)
        if applied:
            apply_import(
                session=session,
                plan=plan,
                lines=lines,
                actor=actor(),
                skip_bad_lines=skip_bad_lines,
            )
        if as_json:
            click.echo(
                json.dumps({**plan.as_dict(), "applied": applied}, ensure_ascii=False, indent=2)
            )
        else:
            for item in plan.created:
                click.echo(f"+ line {item['line']}: {item['email']} ({item['name']})")
            for item in plan.updated:
                changes = ", ".join(
                    f"{k}: {v['from']} -> {v['to']}" for k, v in item["changes"].items()
                )
                click.echo(f"~ line {item['line']}: {item['email']}: {changes}")
            for item in plan.disabled:
                click.echo(f"- {item['email']} ({item['name']}): disabled")
            for item in plan.errors:
                click.echo(f"! line {item['line']}: {item['code']}: {item['message']}")
            verdict = "applied" if applied else ("dry run" if dry_run else "NOT applied")
            click.echo(
                f"staff import: {len(plan.created)} created, {len(plan.updated)} updated, "
                f"{len(plan.disabled)} disabled, {plan.unchanged} unchanged, "
                f"{len(plan.errors)} bad line(s): {verdict}"
            )
    if plan.errors:
        sys.exit(1)


@staff.command("add")
@click.option("--email", required=True)
@click.option("--name", required=True)
@click.option("--department", default=None)
@click.option("--roles", required=True, help="admin, sender, signer (comma-separated).")
@click.option("--scope", default="own", show_default=True, help="own, department or all.")
@click.option("--password-stdin", is_flag=True, help="Read the initial password from stdin.")
@click.pass_obj
def staff_add(
    obj: Any,
    email: str,
    name: str,
    department: str | None,
    roles: str,
    scope: str,
    password_stdin: bool,
) -> None:
    """Add one staff member."""
    from core.staff.accounts import add_staff, set_password

    settings = obj.settings()
    with with_session(obj, commit=True) as session:
        member = add_staff(
            session=session,
            name=name,
            email=email,
            roles=roles,
            scope=scope,
            department=department,
            actor=actor(),
        )
        if password_stdin:
            set_password(
                session=session,
                staff=member,
                password=sys.stdin.readline().rstrip("\n"),
                policy=password_policy(settings),
                actor=actor(),
            )
        click.echo(f"added {member.email}")


@staff.command("edit")
@click.argument("email")
@click.option("--name", default=None)
@click.option("--department", default=None)
@click.option("--roles", default=None)
@click.option("--scope", default=None)
@click.option("--disable/--enable", "disabled", default=None)
@click.pass_obj
def staff_edit(
    obj: Any,
    email: str,
    name: str | None,
    department: str | None,
    roles: str | None,
    scope: str | None,
    disabled: bool | None,
) -> None:
    """Change one staff member."""
    from core.staff.accounts import get_staff, update_staff

    with with_session(obj, commit=True) as session:
        member = get_staff(session=session, email=email)
        changed = update_staff(
            session=session,
            staff=member,
            actor=actor(),
            name=name,
            department=department,
            roles=roles,
            scope=scope,
            disabled=disabled,
        )
        click.echo(f"{member.email}: changed {', '.join(sorted(changed)) or 'nothing'}")


@staff.command("set-password")
@click.argument("email")
@click.option("--password-stdin", is_flag=True, help="Read the password from stdin.")
@click.pass_obj
def staff_set_password(obj: Any, email: str, password_stdin: bool) -> None:
    """Set a staff member's password (and lift a lockout)."""
    from core.staff.accounts import get_staff, set_password

    password = (
        sys.stdin.readline().rstrip("\n")
        if password_stdin
        else click.prompt("password", hide_input=True, confirmation_prompt=True)
    )
    settings = obj.settings()
    with with_session(obj, commit=True) as session:
        member = get_staff(session=session, email=email)
        set_password(
            session=session,
            staff=member,
            password=password,
            policy=password_policy(settings),
            actor=actor(),
        )
        click.echo(f"password set for {member.email}")


@staff.command("totp")
@click.argument("email")
@click.option("--disable", is_flag=True, help="Remove the second factor instead.")
@click.pass_obj
def staff_totp(obj: Any, email: str, disable: bool) -> None:
    """Enrol a staff member in TOTP (prints the otpauth:// URI for their app), or remove it."""
    from core.staff.accounts import disable_totp, enable_totp, get_staff

    settings = obj.settings()
    with with_session(obj, commit=True) as session:
        member = get_staff(session=session, email=email)
        if disable:
            disable_totp(session=session, staff=member, actor=actor())
            click.echo(f"TOTP removed for {member.email}")
            return
        uri = enable_totp(session=session, staff=member, issuer=settings.buyer.name, actor=actor())
        click.echo(uri)


@staff.command("list")
@click.option("--json", "as_json", is_flag=True)
@click.pass_obj
def staff_list(obj: Any, as_json: bool) -> None:
    """Every staff member."""
    from core.staff.accounts import list_staff

    with with_session(obj, commit=False) as session:
        rows = [_staff_json(s) for s in list_staff(session=session)]
    if as_json:
        click.echo(json.dumps(rows, ensure_ascii=False, indent=2))
        return
    for row in rows:
        flag = " (disabled)" if row["disabled"] else ""
        click.echo(
            f"{row['email']}\t{row['name']}\t{row['department'] or '-'}\t{row['roles']}\t"
            f"{row['scope']}{flag}"
        )


@click.command("allow")
@click.argument("name")
@click.argument("networks", nargs=-1)
@click.pass_obj
def api_client_allow(obj: Any, name: str, networks: tuple[str, ...]) -> None:
    """Limit API client NAME to NETWORKS (CIDR); no networks lifts the limit."""
    from sqlalchemy import select

    from core.errors import StaffError
    from core.model import ApiClient
    from core.staff.access import set_client_networks

    with with_session(obj, commit=True) as session:
        client = session.scalars(select(ApiClient).where(ApiClient.name == name)).first()
        if client is None:
            raise StaffError(
                "staff.no_api_client", f"no API client named {name!r}", "連携先が見つかりません。"
            )
        set_client_networks(session=session, client=client, networks=networks)
        click.echo(f"{name}: {', '.join(client.allowed_networks or []) or 'any address'}")


@click.group()
def audit() -> None:
    """The audit trail: verify its hash chain, export it."""


@audit.command("verify")
@click.option("--json", "as_json", is_flag=True)
@click.option("--all", "every", is_flag=True, help="Report every problem, not only the first.")
@click.pass_obj
def audit_verify(obj: Any, as_json: bool, every: bool) -> None:
    """Recompute the hash chain and compare each concluded envelope's records-law facts with
    the chained ones; exit 1 naming the first edited, deleted or unchained event, and every
    envelope whose facts were edited outside the gateway."""
    from core.records.audit import verify_chain
    from core.records.facts import verify_record_facts

    with with_session(obj, commit=False) as session:
        report = verify_chain(session=session, stop_at_first=not every)
        facts = verify_record_facts(session=session)
    if as_json:
        click.echo(
            json.dumps(
                {
                    "ok": report.ok and facts.ok,
                    "checked": report.checked,
                    "unchained": report.unchained,
                    "problems": report.problems + facts.problems,
                    "facts_checked": facts.checked,
                    "facts_unrecorded": facts.unrecorded,
                },
                indent=2,
                ensure_ascii=False,
            )
        )
    else:
        for p in report.problems:
            if p["problem"] == "edited":
                click.echo(
                    f"EDITED: event {p['event_id']} (chain position {p['seq']}, {p['action']}) "
                    "does not match its hash"
                )
            elif p["problem"] == "deleted":
                where = f"before event {p['next_event_id']}" if p["next_event_id"] else "at the end"
                click.echo(f"DELETED: chain position {p['seq']} is missing ({where})")
            else:
                click.echo(f"UNCHAINED: event {p['event_id']} was inserted outside the chain")
        click.echo(
            f"audit chain: {report.checked} event(s) checked, {report.unchained} older than "
            f"the chain: {'OK' if report.ok else 'FAILED'}"
        )
        for p in facts.problems:
            changes = ", ".join(
                f"{key} recorded {v['recorded']!r}, now {v['now']!r}"
                for key, v in p["changed"].items()
            )
            click.echo(
                f"EDITED FACTS: envelope {p['envelope_id']} ({p['management_number']}): {changes}"
            )
        click.echo(
            f"records-law facts: {facts.checked} concluded envelope(s) checked, "
            f"{facts.unrecorded} concluded before facts were chained: "
            f"{'OK' if facts.ok else 'FAILED'}"
        )
    if not (report.ok and facts.ok):
        sys.exit(1)


def _jst_day(text: str) -> dt.datetime:
    try:
        return dt.datetime.combine(dt.date.fromisoformat(text), dt.time(), tzinfo=JST)
    except ValueError as exc:
        raise click.BadParameter(f"not a date (YYYY-MM-DD): {text}") from exc


@audit.command("export")
@click.option("--from", "start", required=True, help="First day (YYYY-MM-DD, JST).")
@click.option("--to", "end", required=True, help="Last day (YYYY-MM-DD, JST), included.")
@click.option("--output", type=click.Path(path_type=Path, dir_okay=False), default=None)
@click.pass_obj
def audit_export(obj: Any, start: str, end: str, output: Path | None) -> None:
    """Audit events of a date range as CSV (UTF-8 with BOM, for Excel); stdout by default."""
    from core.records.audit import iter_events

    first, last = _jst_day(start), _jst_day(end) + dt.timedelta(days=1)
    handle = output.open("w", encoding="utf-8-sig", newline="") if output else sys.stdout
    count = 0
    try:
        writer = SafeCsvWriter(handle)
        writer.writerow(
            [
                "chain_seq",
                "at_jst",
                "action",
                "actor",
                "ip",
                "envelope_id",
                "party_id",
                "detail",
                "chain_hash",
            ]
        )
        with with_session(obj, commit=False) as session:
            for e in iter_events(session=session, start=first, end=last):
                writer.writerow(
                    [
                        e.chain_seq if e.chain_seq is not None else "",
                        e.at.astimezone(JST).isoformat(timespec="seconds"),
                        e.action,
                        e.actor,
                        e.ip or "",
                        e.envelope_id or "",
                        e.party_id or "",
                        json.dumps(e.detail or {}, ensure_ascii=False, sort_keys=True),
                        e.chain_hash or "",
                    ]
                )
                count += 1
    finally:
        if output:
            handle.close()
    if output:
        click.echo(f"exported {count} event(s) to {output}")


@click.group()
def report() -> None:
    """Reports the buyer files."""


@report.command("monthly")
@click.argument("month")
@click.option("--months", default=1, show_default=True, help="How many months, ending with MONTH.")
@click.option("--json", "as_json", is_flag=True)
@click.pass_obj
def report_monthly(obj: Any, month: str, months: int, as_json: bool) -> None:
    """Contracts concluded in MONTH (YYYY-MM, JST) in total and per department."""
    from core.records.reports import monthly_report, parse_month

    with with_session(obj, commit=False) as session:
        year, number = parse_month(month)
        rows = monthly_report(session=session, year=year, month=number, months=max(1, months))
    if as_json:
        click.echo(json.dumps([r.as_dict() for r in rows], ensure_ascii=False, indent=2))
        return
    for row in rows:
        click.echo(f"{row.month}: {row.count} contract(s), {int(row.amount):,} yen")
        for department, entry in sorted(row.departments.items()):
            click.echo(f"  {department}: {entry['count']}, {int(entry['amount']):,} yen")
