"""The record of intake runs: counts, line errors in the dead-letter store, replay, and
each source's cursor.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping, Sequence
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from core.drafts import LineError
from core.errors import NotFoundError
from core.intake.awards import IntakeCounts
from core.model import DeadLetter, SourceCursor, SyncRun, utcnow
from core.records.audit import record_event

__all__ = [
    "count_run",
    "count_runs",
    "finish_run",
    "get_cursor",
    "get_run",
    "list_dead_letters",
    "list_replayable",
    "list_runs",
    "mark_replayed",
    "record_line_errors",
    "reset_cursor",
    "start_run",
    "store_cursor",
]


# --- runs, dead letters, cursors --------------------------------------------------------------


def start_run(*, session: Session, source: str, trigger: str) -> SyncRun:
    """Record the start of a sync run (the caller commits, so it is visible while it runs)."""
    run = SyncRun(source=source, trigger=trigger, status="running", started_at=utcnow())
    session.add(run)
    session.flush()
    return run


def count_run(*, run: SyncRun, counts: IntakeCounts, records: int = 0, skipped: int = 0) -> None:
    """Add a batch's counts to its run."""
    run.records += records
    run.skipped += skipped
    run.created += counts.created
    run.updated += counts.updated
    run.unchanged += counts.unchanged
    run.waiting += counts.waiting
    run.released += counts.released
    run.conflicts += counts.conflicts
    run.errors += len(counts.errors)


def finish_run(
    *, session: Session, run: SyncRun, status: str, message: str | None = None
) -> SyncRun:
    """Record the end of a run: status, duration and, on failure, why."""
    now = utcnow()
    run.status = status
    run.finished_at = now
    started = run.started_at if run.started_at.tzinfo else run.started_at.replace(tzinfo=dt.UTC)
    run.duration_ms = int((now - started).total_seconds() * 1000)
    run.message = message[:4000] if message else None
    return run


def record_line_errors(
    *,
    session: Session,
    run_id: int | None,
    errors: Sequence[LineError],
    records: Mapping[tuple[str | None, int | None, str | None], Mapping[str, Any]] | None = None,
) -> None:
    """Put line errors into the dead-letter store, each with its (redacted) record."""
    records = records or {}
    for error in errors:
        session.add(
            DeadLetter(
                run_id=run_id,
                source=error.source,
                file=error.file,
                line=error.line,
                path=error.path,
                field=error.field,
                code=error.code,
                reason=error.reason,
                reason_ja=error.reason_ja,
                mapping_line=error.mapping_line,
                record=dict(records.get((error.file, error.line, error.path), {})),
                created_at=utcnow(),
            )
        )


def list_runs(
    *, session: Session, source: str | None = None, limit: int = 20, offset: int = 0
) -> Sequence[SyncRun]:
    """Sync runs, newest first."""
    query = select(SyncRun).order_by(SyncRun.id.desc()).limit(limit).offset(offset)
    if source is not None:
        query = query.where(SyncRun.source == source)
    return session.scalars(query).all()


def count_runs(*, session: Session, source: str | None = None) -> int:
    """How many sync runs there are (of one source)."""
    query = select(func.count()).select_from(SyncRun)
    if source is not None:
        query = query.where(SyncRun.source == source)
    return int(session.scalar(query) or 0)


def get_run(*, session: Session, run_id: int) -> SyncRun:
    """One sync run, or ``not_found.sync_run``."""
    run = session.get(SyncRun, run_id)
    if run is None:
        raise NotFoundError(
            "not_found.sync_run", f"no sync run {run_id}", "取込の記録が見つかりません。"
        )
    return run


def list_dead_letters(
    *, session: Session, source: str | None = None, run_id: int | None = None, limit: int = 100
) -> Sequence[DeadLetter]:
    """Line errors, oldest first within a run."""
    query = select(DeadLetter).order_by(DeadLetter.id.desc()).limit(limit)
    if source is not None:
        query = query.where(DeadLetter.source == source)
    if run_id is not None:
        query = query.where(DeadLetter.run_id == run_id)
    return session.scalars(query).all()


def list_replayable(
    *, session: Session, source: str, run_id: int | None = None
) -> Sequence[DeadLetter]:
    """Dead letters of a source not yet replayed that hold a record (oldest first); records
    the source could not read whole (``format.*``: undecodable, wrong column count) are not
    replayable: their file is read again instead."""
    query = (
        select(DeadLetter)
        .where(
            DeadLetter.source == source,
            DeadLetter.replayed_at.is_(None),
            DeadLetter.code.not_like("format.%"),
        )
        .order_by(DeadLetter.id)
    )
    if run_id is not None:
        query = query.where(DeadLetter.run_id == run_id)
    return [d for d in session.scalars(query) if d.record]


def mark_replayed(*, session: Session, dead_letter_ids: Sequence[int]) -> None:
    """Note that these dead letters were taken in again (a new failure is a new dead letter)."""
    now = utcnow()
    for start in range(0, len(dead_letter_ids), 500):
        for row in session.scalars(
            select(DeadLetter).where(DeadLetter.id.in_(dead_letter_ids[start : start + 500]))
        ):
            row.replayed_at = now


def reset_cursor(
    *, session: Session, source: str, cursor: Mapping[str, Any], actor: str
) -> dict[str, Any]:
    """Set a source's bookmark by hand (audited): the next run reads from there. Returns the
    bookmark it replaced."""
    previous = get_cursor(session=session, source=source)
    store_cursor(session=session, source=source, cursor=cursor)
    record_event(
        session=session,
        action="source.cursor_reset",
        actor=actor,
        detail={"source": source, "from": previous, "to": dict(cursor)},
    )
    return previous


def get_cursor(*, session: Session, source: str) -> dict[str, Any]:
    """The source's bookmark ({} before its first run)."""
    row = session.get(SourceCursor, source)
    return dict(row.cursor) if row is not None else {}


def store_cursor(*, session: Session, source: str, cursor: Mapping[str, Any]) -> None:
    """Store the bookmark in the caller's transaction (with the records it covers)."""
    row = session.get(SourceCursor, source)
    if row is None:
        session.add(SourceCursor(source=source, cursor=dict(cursor), updated_at=utcnow()))
    else:
        row.cursor = dict(cursor)
        row.updated_at = utcnow()
