"""`keiyaku backup`, `restore`, `retimestamp` and `retention`: operations commands.

Registered on the main group by :mod:`gateway.cli`. Output is English; times are JST.
"""

from __future__ import annotations

import datetime as dt
import json
import sys
from pathlib import Path
from typing import Any, NoReturn

import click

from core.errors import GatewayError
from core.timezone import JST
from gateway._cli import fail, with_gateway


@click.command("backup")
@click.pass_obj
def backup_command(obj: Any) -> None:
    """Back up the database (one dated generation) and copy new documents to the backup folder."""
    from gateway.ops import run_backup
    from gateway.runtime import database_engine

    settings = obj.settings()
    # No migration here: the backup taken before an upgrade must hold the schema as it was.
    engine = database_engine(settings)
    try:
        result = run_backup(settings, engine)
    except GatewayError as exc:
        fail(exc)
    finally:
        engine.dispose()
    click.echo(f"database: {result.database_file}")
    click.echo(f"documents: {result.blobs_copied} copied, {result.blobs_total} in the store")
    if result.purged_blobs_deleted is None:
        click.echo("purged documents: not looked for (the schema is not migrated yet)")
    elif result.purged_blobs_deleted:
        click.echo(f"purged documents: {result.purged_blobs_deleted} copies deleted")
    for old in result.pruned:
        click.echo(f"pruned: {old.name}")


@click.command("restore")
@click.argument("backup", type=click.Path(path_type=Path, exists=True))
@click.option("--force", is_flag=True, help="Replace a database that holds envelopes.")
@click.option(
    "--dry-run", is_flag=True, help="Check the backup and the target; say what would happen."
)
@click.option("--json", "as_json", is_flag=True, help="Print the check as JSON.")
@click.pass_obj
def restore_command(obj: Any, backup: Path, force: bool, dry_run: bool, as_json: bool) -> None:
    """Restore BACKUP (a database generation, or a backup folder: its newest one), copy back the
    documents, then verify every document and the database. Stop every node first.

    Nothing is touched until the backup is checked against this site: it must be whole, of the
    configured database's kind, of a schema this version knows, and its documents must decrypt
    with this site's master key (a backup of another site does not); a database that holds
    envelopes is replaced only with --force."""
    from core.records.backup import latest_backup, plan_restore, restore
    from core.storage import known_revisions
    from gateway.ops import check_restored
    from gateway.runtime import database_engine, master_key

    settings = obj.settings()
    try:
        backup_file = latest_backup(backup) if backup.is_dir() else backup
        engine = database_engine(settings)
        try:
            known = known_revisions(engine)
        finally:
            engine.dispose()
        key = master_key(settings)
        if dry_run:
            plan = plan_restore(
                backup_file=backup_file,
                database_url=settings.database_url,
                master_key=key,
                known_revisions=known,
            )
            _print_plan(plan, force=force, as_json=as_json)
            sys.exit(0 if not plan.problems and (force or not plan.target_has_data) else 2)
        result = restore(
            backup_file=backup_file,
            database_url=settings.database_url,
            blob_root=settings.path(settings.blobs.path),
            master_key=key,
            known_revisions=known,
            force=force,
            pg_restore=str(Path(settings.backup.pg_dump).with_name("pg_restore")),
        )
    except GatewayError as exc:
        fail(exc)

    def progress(index: int, total: int, name: str, result: str) -> None:
        click.echo(f"  checked {index}/{total}: {name}: {result}", err=True)

    with with_gateway(obj) as gateway:
        check = check_restored(gateway, progress=progress)
    if as_json:
        click.echo(json.dumps(check.as_dict(), ensure_ascii=False, indent=2))
    else:
        click.echo(f"restored: {result.database_file.name}, {result.blobs_restored} documents")
        click.echo(
            f"check: {check.envelopes} envelopes, {check.documents_ok}/{check.documents} "
            f"documents verify, audit chain {'ok' if check.audit_chain_ok else 'BROKEN'}, "
            f"database {'ok' if check.database_ok else 'DAMAGED'}"
        )
        if check.documents_purged:
            click.echo(f"  {check.documents_purged} documents deleted by retention (not checked)")
        for failure in check.failures:
            click.echo(f"  FAILED {failure}")
    sys.exit(0 if check.ok else 1)


def _print_plan(plan: Any, *, force: bool, as_json: bool) -> None:
    """What `restore --dry-run` found, for a terminal or as JSON."""
    would = (
        "refuse"
        if plan.problems
        else ("replace the target's data" if plan.target_has_data else "restore")
    )
    if plan.target_has_data and not force and not plan.problems:
        would = "refuse without --force (the target holds envelopes)"
    if as_json:
        click.echo(
            json.dumps(
                {
                    "backup": str(plan.backup_file),
                    "kind": plan.kind,
                    "target_envelopes": plan.target_envelopes,
                    "keys_checked": plan.keys_checked,
                    "schema_revisions": list(plan.schema_revisions),
                    "problems": list(plan.problems),
                    "would": would,
                },
                ensure_ascii=False,
                indent=2,
            )
        )
        return
    click.echo(f"backup: {plan.backup_file} ({plan.kind})")
    click.echo(f"documents decrypted with this site's key: {plan.keys_checked}")
    click.echo(f"target: {plan.target_envelopes} envelopes now")
    for problem in plan.problems:
        click.echo(f"problem: {problem}")
    click.echo(f"would: {would}")


@click.command("retimestamp")
@click.option(
    "--dry-run",
    is_flag=True,
    help="List what would be stamped and when the next wave is due; stamp nothing.",
)
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
@click.pass_obj
def retimestamp_command(obj: Any, dry_run: bool, as_json: bool) -> None:
    """Add archive timestamps to documents whose newest timestamp expires within the margin,
    when the new timestamp extends their validity (or theirs is flagged)."""
    from gateway.ops import plan_retimestamp, run_retimestamp

    settings = obj.settings()
    with with_gateway(obj) as gateway:
        if dry_run:
            plan = plan_retimestamp(settings, gateway)
        else:
            report = run_retimestamp(settings, gateway)
    if dry_run:
        if as_json:
            click.echo(json.dumps(plan.as_dict(), ensure_ascii=False, indent=2))
            return
        data = plan.as_dict()
        click.echo(f"a timestamp made now expires: {data['tsa_expires_at'] or '-'}")
        for item in plan.documents:
            click.echo(
                f"  {item.action:<17} {item.management_number} {item.document} "
                f"(expires {_jst_text(item.expires_at)}): {item.reason}"
            )
        click.echo(
            f"would stamp: {len(plan.to_stamp)}, "
            f"nothing to extend: {len(plan.documents) - len(plan.to_stamp)}"
        )
        wave = data["next_wave"]
        assert isinstance(wave, dict)
        if wave["due_at"]:
            click.echo(
                f"next wave: {wave['documents']} document(s) due from {wave['due_at']} "
                f"(timestamps expire {wave['expires_at']})"
            )
        else:
            click.echo("next wave: none")
        if plan.alert:
            click.echo(f"ALERT: {plan.alert}")
        return
    if as_json:
        click.echo(
            json.dumps(
                {
                    "renewed": report.renewed,
                    "nothing_to_extend": report.nothing_to_extend,
                    "failed": report.failed,
                    "backfilled": report.backfilled,
                    "tsa_expires_at": _jst_text(report.tsa_expires_at),
                    "alert": report.alert,
                },
                ensure_ascii=False,
                indent=2,
            )
        )
        sys.exit(1 if report.failed else 0)
    click.echo(
        f"re-timestamped: {len(report.renewed)}, nothing to extend: "
        f"{len(report.nothing_to_extend)}, failed: {len(report.failed)}, "
        f"expiry backfilled: {report.backfilled}"
    )
    if report.alert:
        click.echo(f"ALERT: {report.alert}")
    _exit_listing(report.failed)


def _jst_text(moment: dt.datetime | None) -> str | None:
    return moment.astimezone(JST).isoformat() if moment is not None else None


def _exit_listing(failed: dict[str, str]) -> NoReturn:
    """List what failed (id: code) and exit 1 if anything did, else 0."""
    for object_id, code in failed.items():
        click.echo(f"  {object_id}: {code}")
    sys.exit(1 if failed else 0)


_HELD = {
    "outbox": "an outbox delivery is not delivered yet",
    "amendment": "an amendment still has its documents",
}


@click.command("retention")
@click.option("--dry-run", is_flag=True, help="List what would be deleted; delete nothing.")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
@click.pass_obj
def retention_command(obj: Any, dry_run: bool, as_json: bool) -> None:
    """Delete the documents of finished envelopes whose retention (retention.documents_years)
    ended; their facts and audit trail stay. Try --dry-run first."""
    from gateway.ops import run_retention

    settings = obj.settings()
    if settings.retention.documents_years is None:
        click.echo("retention.documents_years is not set: documents are kept for ever")
        return
    with with_gateway(obj) as gateway:
        report = run_retention(settings, gateway, dry_run=dry_run, actor="cli")
    assert report is not None
    if as_json:
        click.echo(json.dumps(report.as_dict(), ensure_ascii=False, indent=2))
        sys.exit(1 if report.failed else 0)
    rule = settings.retention
    start = "April 1 after the fiscal year" if rule.count_from == "next_fiscal_year" else "the day"
    click.echo(
        f"retention: {rule.documents_years} years, counted from {start}; envelopes finished "
        f"before {report.cutoff:%Y-%m-%d} JST have expired"
    )
    for item in report.expired:
        held = f"  held: {_HELD[item.held]}" if item.held else ""
        click.echo(
            f"  {item.envelope_id} {item.management_number} {item.state.value} "
            f"ended {item.ends_on.isoformat()} {item.title}{held}"
        )
    ready = len(report.expired) - len(report.held)
    if dry_run:
        click.echo(f"dry run: {ready} would be deleted, {len(report.held)} held; nothing deleted")
        return
    click.echo(
        f"purged: {len(report.purged)}, held: {len(report.held)}, failed: {len(report.failed)}, "
        f"blobs deleted: {report.blobs_deleted}"
    )
    _exit_listing(report.failed)


@click.command("sweep-blobs")
@click.option("--dry-run", is_flag=True, help="List what would be deleted; delete nothing.")
@click.option(
    "--grace-hours",
    type=click.FloatRange(min=1),
    default=24,
    show_default=True,
    help="Leave files younger than this (their row may be about to commit).",
)
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
@click.pass_obj
def sweep_blobs_command(obj: Any, dry_run: bool, grace_hours: float, as_json: bool) -> None:
    """Delete stored documents no envelope, award or guarantee refers to (left by a crash or a
    refused request), older than the grace period; --dry-run reports them first."""
    import datetime as dt

    from core.records.blob_sweep import sweep_orphans

    with with_gateway(obj) as gateway, gateway.sessions() as session:
        report = sweep_orphans(
            session=session,
            blobs=gateway.runtime.blobs,
            grace=dt.timedelta(hours=grace_hours),
            dry_run=dry_run,
            actor="cli",
        )
    if as_json:
        click.echo(
            json.dumps(
                {
                    "dry_run": dry_run,
                    "orphans": [
                        {"name": o.name, "size": o.size, "modified_at": o.modified_at.isoformat()}
                        for o in report.orphans
                    ],
                    "deleted": report.deleted,
                    "kept_young": report.kept_young,
                },
                indent=2,
            )
        )
        return
    for orphan in report.orphans:
        click.echo(
            f"{'would delete' if dry_run else 'deleted'}: {orphan.name} ({orphan.size} bytes)"
        )
    click.echo(
        f"orphans: {len(report.orphans)}, deleted: {report.deleted}, "
        f"younger than {grace_hours:g} h (kept): {report.kept_young}"
    )
