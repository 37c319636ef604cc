"""`keiyaku signing`: the signing worker run on its own, and what waits for it."""

from __future__ import annotations

import datetime as dt
import json
import signal
import threading
from typing import Any

import click

from core.timezone import jst_stamp
from gateway._cli import with_gateway


@click.group("signing")
def signing() -> None:
    """Committed approvals and seals waiting to be applied (the signing worker)."""


@signing.command("run")
@click.option(
    "--loop", is_flag=True, help="Keep running; look again every signing.worker.interval."
)
@click.option("--worker", default=None, help="Worker name in leases (default host:pid).")
@click.pass_obj
def signing_run(obj: Any, loop: bool, worker: str | None) -> None:
    """Apply every due signature and seal (until none is due, or with --loop until stopped)."""
    import os
    import socket

    from core.signing.worker import process_until_idle

    stop = threading.Event()
    if loop:
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *_: stop.set())
    worker = worker or f"{socket.gethostname()}:{os.getpid()}:signing"
    applied = retrying = dead = 0
    with with_gateway(obj) as gateway:
        settings = gateway.settings.signing.worker
        lease = dt.timedelta(seconds=settings.lease_seconds)
        while True:
            result = process_until_idle(
                sessions=gateway.sessions,
                runtime=gateway.runtime,
                worker=worker,
                lease=lease,
                stop=stop.is_set,
            )
            applied += len(result.delivered)
            retrying += len(result.retrying)
            dead += len(result.dead)
            if not loop or stop.wait(settings.interval_seconds):
                break
    click.echo(f"applied: {applied}  retrying: {retrying}  failed: {dead}")


@signing.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.pass_obj
def signing_list(obj: Any, as_json: bool) -> None:
    """Signatures and seals not applied yet, oldest first, with attempts and the last error."""
    from core.signing.worker import list_waiting

    with with_gateway(obj) as gateway, gateway.sessions() as session:
        waiting = list_waiting(session=session)
    rows = [
        {
            "envelope_id": w.envelope_id,
            "management_number": w.management_number,
            "kind": w.kind,
            "party": w.party_name,
            "since": jst_stamp(w.since) if w.since else "-",
            "attempts": w.attempts,
            "state": w.state.value,
            "last_error": w.last_error,
        }
        for w in waiting
    ]
    if as_json:
        click.echo(json.dumps(rows, ensure_ascii=False, indent=2))
        return
    if not rows:
        click.echo("nothing waits for the signing worker")
    for r in rows:
        click.echo(
            f"{r['management_number']}\t{r['kind']}\t{r['party'] or '-'}\tsince {r['since']}\t"
            f"attempts {r['attempts']}\t{r['state']}\t{r['last_error'] or ''}"
        )
