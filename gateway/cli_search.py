"""`keiyaku search`: the records-law search (電子帳簿保存法) from the command line, with the
conditions of the staff page and the API, optionally as one staff member sees it, and the CSV
export a tax office's download request asks for."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import click

from core.errors import GatewayError
from gateway._cli import CommandError, fail, with_session


@click.command("search")
@click.option("--keyword", help="In the title or a document's file name.")
@click.option("--management-number", help="管理番号, whole or part (any letter case).")
@click.option("--date-from", help="取引年月日 from (YYYY-MM-DD).")
@click.option("--date-to", help="取引年月日 to (YYYY-MM-DD).")
@click.option("--counterparty", help="取引先 contains this.")
@click.option("--amount-min", help="取引金額 at least (yen).")
@click.option("--amount-max", help="取引金額 at most (yen).")
@click.option("--department", help="Owning department.")
@click.option("--state", "states", multiple=True, help="Envelope state (repeatable).")
@click.option(
    "--as",
    "staff_email",
    help="Search as this staff member sees (default: every envelope, the operator's view).",
)
@click.option(
    "--csv",
    "csv_path",
    type=click.Path(dir_okay=False, allow_dash=True, path_type=Path),
    help="Write every match as CSV to this file ('-': standard output).",
)
@click.option(
    "--encoding",
    type=click.Choice(["utf-8", "cp932"]),
    default="utf-8",
    show_default=True,
    help="CSV encoding (UTF-8 with a BOM, or Shift_JIS).",
)
@click.pass_obj
def search_command(
    obj: Any,
    keyword: str | None,
    management_number: str | None,
    date_from: str | None,
    date_to: str | None,
    counterparty: str | None,
    amount_min: str | None,
    amount_max: str | None,
    department: str | None,
    states: tuple[str, ...],
    staff_email: str | None,
    csv_path: Path | None,
    encoding: str,
) -> None:
    """Search envelopes by transaction date, amount and counterparty (ranges, combined); an
    invalid condition exits 2 with no rows."""
    from sqlalchemy import select, true

    from core.model import Staff
    from core.records.search import encode_csv, export_envelopes, parse_query, records_csv

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
    try:
        query = parse_query({k: v for k, v in given.items() if v}, list(states))
    except GatewayError as exc:
        fail(exc)
    with with_session(obj) as session:
        staff = None
        if staff_email:
            staff = session.scalar(select(Staff).where(Staff.email == staff_email.strip().lower()))
            if staff is None or staff.disabled:
                raise CommandError(f"error: no active staff member {staff_email}")
        rows = export_envelopes(
            session=session,
            query=query,
            staff=staff,
            scope=None if staff is not None else true(),
        )
        if csv_path is not None:
            data = encode_csv(records_csv(rows), encoding)
            if str(csv_path) == "-":
                sys.stdout.buffer.write(data)
                sys.stdout.flush()
            else:
                csv_path.write_bytes(data)
                click.echo(f"{len(rows)} envelope(s) written to {csv_path}", err=True)
            return
        for envelope in rows:
            amount = format(envelope.amount, ",f") if envelope.amount is not None else "-"
            click.echo(
                f"{envelope.transaction_date or '-'}\t{amount}\t"
                f"{envelope.counterparty or '-'}\t{envelope.management_number}\t"
                f"{envelope.title}\t{envelope.department or '-'}\t{envelope.state.value}"
            )
        click.echo(f"{len(rows)} envelope(s)")
