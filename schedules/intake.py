"""One intake run of one source (what `keiyaku sync` and the nightly pull start): pull → map →
intake, in batches, recorded as a run (a `SyncRun` row).

Each batch commits on its own (its records, their line errors and the run's counts), so a
failure late in a large file keeps what was done; the source's cursor is stored only with the
last batch, and the source is told to acknowledge (move processed files aside) only after that
commit. Running the same file again is harmless: intake is idempotent on (source, award id).
"""

from __future__ import annotations

import itertools
import json
import logging
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy.orm import Session, sessionmaker

from connectors.base import RawRecord, Source
from core.drafts import (
    ContractorDraft,
    DocumentRef,
    EnvelopeDraft,
    LineError,
    SigningAuthority,
    UsageRequestDraft,
)
from core.errors import GatewayError, InputError, RecordError
from core.intake.awards import (
    AwardItem,
    IntakeCounts,
    get_award,
    intake_awards,
    release_waiting,
    restore_record,
)
from core.intake.awards import remap_award as remap_intake_award
from core.intake.contractors import ContractorDirectory, upsert_contractor, upsert_usage_request
from core.intake.policy import IntakePolicy
from core.intake.runs import (
    count_run,
    finish_run,
    get_cursor,
    list_replayable,
    mark_replayed,
    record_line_errors,
    start_run,
    store_cursor,
)
from core.model import Award, SyncRun
from core.runtime import Runtime
from core.text import multi_line
from mapping import SourceMapping, redact

__all__ = [
    "IntakeResult",
    "SourceSpec",
    "accept_record",
    "document_fetcher",
    "map_records",
    "remap_award",
    "replay_dead_letters",
    "take_in_source",
]

log = logging.getLogger(__name__)

Progress = Callable[[int], None]


@dataclass(frozen=True)
class SourceSpec:
    """One configured source: its name, its mapping and how to open its connector."""

    name: str
    kind: str
    mapping: SourceMapping
    open: Callable[[], Source]


@dataclass
class IntakeResult:
    """What one run did (the run row holds the same numbers)."""

    run_id: int
    source: str
    status: str
    records: int = 0
    created: int = 0
    updated: int = 0
    unchanged: int = 0
    skipped: int = 0
    waiting: int = 0
    released: int = 0
    conflicts: int = 0
    errors: int = 0
    duration_ms: int = 0
    message: str | None = None
    line_errors: list[LineError] = field(default_factory=list)

    @classmethod
    def of(cls, run: SyncRun, line_errors: list[LineError]) -> IntakeResult:
        """From a finished run row."""
        return cls(
            run_id=run.id,
            source=run.source,
            status=run.status,
            records=run.records,
            created=run.created,
            updated=run.updated,
            unchanged=run.unchanged,
            skipped=run.skipped,
            waiting=run.waiting,
            released=run.released,
            conflicts=run.conflicts,
            errors=run.errors,
            duration_ms=run.duration_ms or 0,
            message=run.message,
            line_errors=line_errors,
        )


def _chunks(records: Iterator[RawRecord], size: int) -> Iterator[list[RawRecord]]:
    while True:
        chunk = list(itertools.islice(records, size))
        if not chunk:
            return
        yield chunk


def _record_error(record: RawRecord, error: GatewayError) -> LineError:
    p = record.provenance
    return LineError(
        source=p.source,
        file=p.file,
        line=p.line,
        path=p.path,
        code=error.code,
        reason=error.message_en,
        reason_ja=error.message_ja,
    )


def document_fetcher(source: Source) -> Callable[[DocumentRef], bytes]:
    """How intake gets a document's bytes from this source (attachments need no fetching)."""
    fetch_path: Callable[[str], bytes] | None = getattr(source, "fetch_document", None)

    def fetch(ref: DocumentRef) -> bytes:
        if ref.data is not None:
            return ref.data
        if ref.path is None or fetch_path is None:
            raise RecordError(
                "intake.document_missing",
                f"{source.name} cannot fetch {ref.name}",
                f"文書「{ref.name}」を取得できません。",
            )
        return fetch_path(ref.path)

    return fetch


class _FileTally:
    """Records read and records failed, per file: a file whose every record failed is not
    taken as read."""

    def __init__(self) -> None:
        self.records: dict[str, int] = {}
        self.failures: dict[str, set[tuple[int | None, str | None]]] = {}

    def read(self, records: Sequence[RawRecord]) -> None:
        for record in records:
            name = record.provenance.file
            if name is not None:
                self.records[name] = self.records.get(name, 0) + 1

    def failed(self, errors: Sequence[LineError]) -> None:
        for error in errors:
            if error.file is not None:
                self.failures.setdefault(error.file, set()).add((error.line, error.path))

    def wholly_failed(self) -> dict[str, int]:
        """Files (name → records) none of whose records got through."""
        return {
            name: count
            for name, count in self.records.items()
            if count and len(self.failures.get(name, ())) >= count
        }


@dataclass
class _Batch:
    drafts: list[tuple[Any, RawRecord]] = field(default_factory=list)
    errors: list[LineError] = field(default_factory=list)
    raws: dict[tuple[str | None, int | None, str | None], Mapping[str, Any]] = field(
        default_factory=dict
    )
    skipped: int = 0


def _control_character(fields: Mapping[str, Any]) -> GatewayError | None:
    """A line error for a field holding NUL or another control character (line breaks and tabs
    are text: the envelope makes one-line values of them), before anything is stored."""
    for name, value in fields.items():
        if isinstance(value, str):
            try:
                multi_line(value, field=name, label_ja=name, error=RecordError)
            except RecordError as exc:
                return exc
    return None


def map_records(
    records: Sequence[RawRecord],
    mapping: SourceMapping,
    authorities: Sequence[SigningAuthority],
) -> _Batch:
    """Apply the mapping to a batch of raw records (pure)."""
    batch = _Batch()
    for record in records:
        p = record.provenance
        error = record.error or _control_character(record.fields)
        if error is not None:
            batch.errors.append(_record_error(record, error))
            batch.raws[(p.file, p.line, p.path)] = redact(record.fields, mapping.sensitive_columns)
            continue
        outcome = mapping.apply(
            record.fields,
            source=p.source,
            file=p.file,
            line=p.line,
            path=p.path,
            authorities=authorities,
        )
        if outcome.skipped is not None:
            batch.skipped += 1
        elif outcome.errors:
            batch.errors.extend(outcome.errors)
            batch.raws[(p.file, p.line, p.path)] = redact(record.fields, mapping.sensitive_columns)
        else:
            batch.drafts.append((outcome.draft, record))
    return batch


def _intake(
    session: Session,
    *,
    spec: SourceSpec,
    batch: _Batch,
    runtime: Runtime,
    policy: IntakePolicy,
    fetch: Callable[[DocumentRef], bytes],
    run_id: int,
    directory: ContractorDirectory,
) -> IntakeCounts:
    counts = IntakeCounts()
    sensitive = spec.mapping.sensitive_columns
    awards = [
        AwardItem(
            d,
            r.provenance.file,
            r.provenance.line,
            r.provenance.path,
            record=redact(r.fields, sensitive),
        )
        for d, r in batch.drafts
        if isinstance(d, EnvelopeDraft)
    ]
    if awards:
        counts.add(
            intake_awards(
                session=session,
                runtime=runtime,
                policy=policy,
                source=spec.name,
                items=awards,
                fetch=fetch,
                run_id=run_id,
                directory=directory,
            )
        )
    contractor_ids: set[str] = set()
    reported = directory.conflicts
    for draft, record in batch.drafts:
        p = record.provenance
        try:
            if isinstance(draft, ContractorDraft):
                outcome = upsert_contractor(
                    session=session, source=spec.name, draft=draft, directory=directory
                )
                if (found := directory.find_id(session, draft.contractor)) is not None:
                    contractor_ids.add(found)  # awards waiting for its registry address
            elif isinstance(draft, UsageRequestDraft):
                row, outcome = upsert_usage_request(
                    session=session, source=spec.name, draft=draft, policy=policy,
                    directory=directory,
                )  # fmt: skip
                contractor_ids.add(row.contractor_id)
            else:
                continue
        except GatewayError as exc:
            if exc.retriable:
                raise
            counts.errors.append(_record_error(record, exc))
            continue
        if outcome == "created":
            counts.created += 1
        elif outcome == "updated":
            counts.updated += 1
        else:
            counts.unchanged += 1
        del p
    counts.conflicts += directory.conflicts - reported
    if contractor_ids:
        session.flush()
        counts.add(
            release_waiting(
                session=session, runtime=runtime, policy=policy, contractor_ids=contractor_ids
            )
        )
        counts.waiting = 0
    return counts


@dataclass
class _IntakeRun:
    """One run between its batches: each batch committed on its own, and what the source is
    told at the end (records to fetch again, files to leave in place)."""

    sessions: sessionmaker[Session]
    runtime: Runtime
    policy: IntakePolicy
    spec: SourceSpec
    run_id: int
    fetch: Callable[[DocumentRef], bytes]
    keep_errors: int
    directory: ContractorDirectory = field(default_factory=ContractorDirectory)
    files: _FileTally = field(default_factory=_FileTally)
    failed_records: list[RawRecord] = field(default_factory=list)
    line_errors: list[LineError] = field(default_factory=list)

    def _keep(self, errors: Sequence[LineError]) -> None:
        """Keep line errors for the caller, up to ``keep_errors`` (the run row has them all)."""
        self.line_errors.extend(errors[: max(0, self.keep_errors - len(self.line_errors))])

    def _run_row(self, session: Session) -> SyncRun:
        run_row = session.get(SyncRun, self.run_id)
        assert run_row is not None
        return run_row

    def take_in(self, chunk: list[RawRecord], authorities: Sequence[SigningAuthority]) -> None:
        """Map and take in one batch, its line errors and the run's counts in one commit."""
        self.files.read(chunk)
        mapped = map_records(chunk, self.spec.mapping, authorities)
        with self.sessions() as session:
            counts = _intake(
                session,
                spec=self.spec,
                batch=mapped,
                runtime=self.runtime,
                policy=self.policy,
                fetch=self.fetch,
                run_id=self.run_id,
                directory=self.directory,
            )
            counts.errors[:0] = mapped.errors
            record_line_errors(
                session=session, run_id=self.run_id, errors=counts.errors, records=mapped.raws
            )
            count_run(
                run=self._run_row(session),
                counts=counts,
                records=len(chunk),
                skipped=mapped.skipped,
            )
            session.commit()
        self.files.failed(counts.errors)
        failed_keys = {(e.file, e.line, e.path) for e in counts.errors}
        self.failed_records += [
            r for r in chunk if (r.provenance.file, r.provenance.line, r.provenance.path)
            in failed_keys
        ]  # fmt: skip
        self._keep(counts.errors)

    def _release_waiting(self, session: Session) -> None:
        """Awards of this source waiting from earlier runs whose reason has gone."""
        counts = release_waiting(
            session=session,
            runtime=self.runtime,
            policy=self.policy,
            source=self.spec.name,
            fetch=self.fetch,
            exclude_run_id=self.run_id,
        )
        record_line_errors(session=session, run_id=self.run_id, errors=counts.errors)
        run_row = self._run_row(session)
        run_row.released += counts.released
        run_row.errors += len(counts.errors)
        self._keep(counts.errors)

    def finish(
        self, source: Source, cursor: Mapping[str, Any], whole_files: bool
    ) -> tuple[IntakeResult, Mapping[str, Any]]:
        """Release what waited, store the next cursor and close the run; the result and the
        cursor the source is to acknowledge."""
        with self.sessions() as session:
            if self.spec.kind == "awards":
                self._release_waiting(session)
            failed_files = self.files.wholly_failed() if whole_files else {}
            # Records that failed are fetched again next run where the source can (SOAP).
            next_cursor = source.retry(cursor, self.failed_records)
            status, message = "succeeded", None
            if failed_files:
                # Nothing of these files was taken in: they stay where they are, are read again
                # next run (after the mapping is fixed), and the run says it failed.
                next_cursor = source.leave(next_cursor, set(failed_files))
                status = "failed"
                message = "; ".join(
                    f"{name}: all {count} records failed"
                    + (f" ({hint})" if (hint := source.diagnose(name)) else "")
                    + "; the file was left in place"
                    for name, count in failed_files.items()
                )
            store_cursor(session=session, source=self.spec.name, cursor=next_cursor)
            run_row = self._run_row(session)
            finish_run(session=session, run=run_row, status=status, message=message)
            session.commit()
            result = IntakeResult.of(run_row, self.line_errors)
        if message:
            log.error("sync of %s failed: %s", self.spec.name, message)
        return result, next_cursor


def _record_failure(
    sessions: sessionmaker[Session], source: str, run_id: int, exc: Exception
) -> None:
    """Close the run as failed with what went wrong."""
    message = (
        f"{exc.code}: {exc.message_en}"
        if isinstance(exc, GatewayError)
        else f"{type(exc).__name__}: {exc}"
    )
    with sessions() as session:
        run_row = session.get(SyncRun, run_id)
        if run_row is not None:
            finish_run(session=session, run=run_row, status="failed", message=message)
            session.commit()
    log.error("sync of %s failed: %s", source, message)


def take_in_source(
    *,
    sessions: sessionmaker[Session],
    runtime: Runtime,
    policy: IntakePolicy,
    spec: SourceSpec,
    authorities: Sequence[SigningAuthority] = (),
    trigger: str = "cli",
    batch_size: int = 500,
    progress: Progress | None = None,
    keep_errors: int = 100,
    whole_files: bool = True,
) -> IntakeResult:
    """Take in one source once and record the run; a failure is recorded and re-raised. With
    ``whole_files``, a file none of whose records got through fails the run and stays put."""
    started = time.monotonic()
    with sessions() as session:
        run = start_run(session=session, source=spec.name, trigger=trigger)
        session.commit()
        run_id = run.id
        cursor = get_cursor(session=session, source=spec.name)
    source = spec.open()
    try:
        fetch = document_fetcher(source)
        intake = _IntakeRun(sessions, runtime, policy, spec, run_id, fetch, keep_errors)
        batch = source.pull(cursor)
        for chunk in _chunks(batch.records, batch_size):
            intake.take_in(chunk, authorities)
            if progress is not None:
                progress(len(chunk))
        result, next_cursor = intake.finish(source, batch.cursor, whole_files)
        source.acknowledge(next_cursor)
    except Exception as exc:
        _record_failure(sessions, spec.name, run_id, exc)
        raise
    finally:
        source.close()
    log.info(
        "sync of %s: %d records, %d created, %d updated, %d errors in %.1f s",
        spec.name,
        result.records,
        result.created,
        result.updated,
        result.errors,
        time.monotonic() - started,
    )
    return result


def remap_award(
    *,
    session: Session,
    runtime: Runtime,
    policy: IntakePolicy,
    spec: SourceSpec,
    award_id: str,
    actor: str,
    authorities: Sequence[SigningAuthority] = (),
) -> Award:
    """Staff re-map one waiting award: the source's current mapping is applied to the record
    kept on the award (e.g. after the admin fixed the YAML), and the award moves on as a sync
    run would move it (audited as ``award.remapped``). The caller commits. A record the
    mapping now refuses or skips changes nothing and says why."""
    award = get_award(session=session, source=spec.name, award_id=award_id)
    record = restore_record(award=award, blobs=runtime.blobs)
    if record is None:
        raise InputError(
            "award.no_record",
            f"award {award_id} of {spec.name} keeps no source record (taken in before 0017a); "
            "re-import it from the source instead",
            "この落札情報には元のレコードが保存されていないため、再マッピングできません。"
            "取込元から再取込してください。",
        )
    outcome = spec.mapping.apply(
        record, source=spec.name, file=award.file, line=award.line, path=None,
        authorities=authorities,
    )  # fmt: skip
    if outcome.skipped is not None:
        raise InputError(
            "award.remap_skipped",
            f"the current mapping skips this record: {outcome.skipped}",
            "現在のマッピングでは、このレコードは取込対象外(skip)になります。"
            "対象外にする場合は「対象外にする」を使ってください。",
        )
    if outcome.errors:
        first = outcome.errors[0]
        raise RecordError(
            "award.remap_failed",
            "the current mapping refuses this record: "
            + "; ".join(f"{e.field}: {e.code}: {e.reason}" for e in outcome.errors),
            f"現在のマッピングでは取り込めません({first.field}: {first.reason_ja})。",
            details={"errors": [{"field": e.field, "code": e.code, "reason": e.reason,
                                 "reason_ja": e.reason_ja} for e in outcome.errors]},
        )  # fmt: skip
    if not isinstance(outcome.draft, EnvelopeDraft):
        raise InputError(
            "award.remap_failed",
            f"the mapping of {spec.name} does not make awards",
            "この取込元のマッピングは落札情報を作りません。",
        )
    item = AwardItem(outcome.draft, award.file, award.line, None, record=record)
    source: Source | None = None

    def fetch(ref: DocumentRef) -> bytes:
        nonlocal source
        if source is None:
            source = spec.open()
        return document_fetcher(source)(ref)

    try:
        return remap_intake_award(
            session=session, runtime=runtime, policy=policy, award=award, item=item,
            fetch=fetch, actor=actor,
        )  # fmt: skip
    finally:
        if source is not None:
            source.close()


def accept_record(
    *,
    sessions: sessionmaker[Session],
    runtime: Runtime,
    policy: IntakePolicy,
    spec: SourceSpec,
    fields: Mapping[str, Any],
    authorities: Sequence[SigningAuthority] = (),
    reference: str | None = None,
) -> IntakeResult:
    """Take in one pushed record (``POST /api/v1/awards``) as a run of its own."""
    from connectors.base import Batch, Provenance

    record = RawRecord(dict(fields), Provenance(source=spec.name, path=reference or "request"))

    class _Pushed(Source):
        name = spec.name

        def pull(self, cursor: Mapping[str, Any]) -> Batch:
            return Batch(records=iter([record]), cursor=cursor)

    pushed = SourceSpec(spec.name, spec.kind, spec.mapping, _Pushed)
    return take_in_source(
        sessions=sessions,
        runtime=runtime,
        policy=policy,
        spec=pushed,
        authorities=authorities,
        trigger="api",
    )


def replay_dead_letters(
    *,
    sessions: sessionmaker[Session],
    runtime: Runtime,
    policy: IntakePolicy,
    spec: SourceSpec,
    authorities: Sequence[SigningAuthority] = (),
    run_id: int | None = None,
    batch_size: int = 500,
) -> tuple[IntakeResult, int]:
    """Take the source's dead letters (of one run, or all not yet replayed) in again through
    the source's current mapping, as a run of its own (trigger ``replay``); documents named by
    path are fetched through the source. Records that fail again become new dead letters.
    Returns the run and how many dead letters were replayed."""
    from connectors.base import Batch, Provenance

    with sessions() as session:
        letters = list_replayable(session=session, source=spec.name, run_id=run_id)
        # A record that failed in several runs is in the store several times: take it once,
        # as it was last seen.
        latest: dict[str, Any] = {}
        for d in letters:
            latest[json.dumps(d.record, sort_keys=True, ensure_ascii=False)] = d
        records = [
            RawRecord(dict(d.record), Provenance(source=spec.name, file=d.file, line=d.line,
                                                 path=d.path))
            for d in sorted(latest.values(), key=lambda d: d.id)
        ]  # fmt: skip
        ids = [d.id for d in letters]

    class _Replay(Source):
        name = spec.name

        def __init__(self) -> None:
            self._real: Source | None = None

        def pull(self, cursor: Mapping[str, Any]) -> Batch:
            return Batch(records=iter(records), cursor=cursor)

        def fetch_document(self, path: str) -> bytes:
            if self._real is None:
                self._real = spec.open()
            fetch = getattr(self._real, "fetch_document", None)
            if fetch is None:
                raise RecordError(
                    "intake.document_missing",
                    f"{spec.name} cannot fetch {path}",
                    f"文書「{path}」を取得できません。",
                )
            data: bytes = fetch(path)
            return data

        def close(self) -> None:
            if self._real is not None:
                self._real.close()

    replay = SourceSpec(spec.name, spec.kind, spec.mapping, _Replay)
    result = take_in_source(
        sessions=sessions, runtime=runtime, policy=policy, spec=replay, authorities=authorities,
        trigger="replay", batch_size=batch_size, whole_files=False,
    )  # fmt: skip
    with sessions() as session:
        mark_replayed(session=session, dead_letter_ids=ids)
        session.commit()
    return result, len(ids)
