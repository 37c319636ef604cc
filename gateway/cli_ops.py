"""`keiyaku backup`, `keiyaku restore` and `keiyaku retimestamp`: operations commands.

Registered on the main group by :mod:`gateway.cli`. Output is English; times are JST.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any, NoReturn

import click

from core.errors import GatewayError


def _fail(exc: GatewayError) -> NoReturn:
    click.echo(f"error: {exc.code}: {exc.message_en}", err=True)
    sys.exit(2)


@click.command("backup")
@click.pass_obj
def backup_command(obj: Any) -> None:
    """Back up the database (one dated generation) and copy new documents to the backup folder."""
    from gateway.ops import run_backup

    settings = obj.settings()
    try:
        result = run_backup(settings)
    except GatewayError as exc:
        _fail(exc)
    click.echo(f"database: {result.database_file}")
    click.echo(f"documents: {result.blobs_copied} copied, {result.blobs_total} in the store")
    for old in result.pruned:
        click.echo(f"pruned: {old.name}")


@click.command("restore")
@click.argument("backup", type=click.Path(path_type=Path, exists=True))
@click.option("--force", is_flag=True, help="Overwrite an existing SQLite database file.")
@click.option("--json", "as_json", is_flag=True, help="Print the check as JSON.")
@click.pass_obj
def restore_command(obj: Any, backup: Path, force: bool, as_json: bool) -> None:
    """Restore BACKUP (a database generation, or a backup folder: its newest one), copy back the
    documents, then verify every document and the database. Stop every node first."""
    from core.backup import latest_backup, restore
    from gateway.ops import check_restored
    from gateway.runtime import open_gateway

    settings = obj.settings()
    backup_file = latest_backup(backup) if backup.is_dir() else backup
    url = settings.database_url
    if url.startswith("sqlite") and not force:
        target = Path(url.split("///", 1)[1])
        if target.exists():
            click.echo(f"{target} exists; pass --force to overwrite it", err=True)
            sys.exit(2)
    try:
        result = restore(
            backup_file=backup_file,
            database_url=url,
            blob_root=settings.path(settings.blobs.path),
            pg_restore=str(Path(settings.backup.pg_dump).with_name("pg_restore")),
        )
        gateway = open_gateway(settings)
    except GatewayError as exc:
        _fail(exc)
    try:
        check = check_restored(gateway)
    finally:
        gateway.close()
    if as_json:
        click.echo(json.dumps(check.as_dict(), ensure_ascii=False, indent=2))
    else:
        click.echo(f"restored: {result.database_file.name}, {result.blobs_restored} documents")
        click.echo(
            f"check: {check.envelopes} envelopes, {check.documents_ok}/{check.documents} "
            f"documents verify, audit chain {'ok' if check.audit_chain_ok else 'BROKEN'}, "
            f"database {'ok' if check.database_ok else 'DAMAGED'}"
        )
        for failure in check.failures:
            click.echo(f"  FAILED {failure}")
    sys.exit(0 if check.ok else 1)


@click.command("retimestamp")
@click.pass_obj
def retimestamp_command(obj: Any) -> None:
    """Add archive timestamps to documents whose newest timestamp expires within the margin."""
    from gateway.ops import run_retimestamp
    from gateway.runtime import open_gateway

    settings = obj.settings()
    try:
        gateway = open_gateway(settings)
    except GatewayError as exc:
        _fail(exc)
    try:
        report = run_retimestamp(settings, gateway)
    except GatewayError as exc:
        _fail(exc)
    finally:
        gateway.close()
    click.echo(
        f"re-timestamped: {len(report.renewed)}, failed: {len(report.failed)}, "
        f"expiry backfilled: {report.backfilled}"
    )
    for document_id, code in report.failed.items():
        click.echo(f"  {document_id}: {code}")
    sys.exit(1 if report.failed else 0)
