"""The file steps of :class:`~connectors.inbox.InboxSource`, apart from its transport: which
listed files are complete (the read lock), which of them a run reads and what the cursor then
remembers (the file history), reading one file (and the encoding its first bytes suggest),
moving read files aside, and which documents may be read. Steps that touch files are handed
the transport's own operations (list, move, stat)."""

from __future__ import annotations

import datetime as dt
import fnmatch
import io
import logging
import posixpath
from collections.abc import Callable, Collection, Iterable, Iterator, Mapping
from typing import IO, TYPE_CHECKING, Any

from connectors.base import RawRecord
from connectors.csv import CsvFormat, PrefixedStream, encoding_hint, read_csv
from core.errors import RecordError
from core.timezone import JST

if TYPE_CHECKING:  # connectors.inbox imports this module
    from connectors.inbox import FileEntry, ReadLock

__all__ = [
    "SNIFF_BYTES",
    "TEMPORARY_SUFFIXES",
    "check_document",
    "complete_files",
    "document_path",
    "encoding_advice",
    "file_records",
    "forget",
    "forget_if_rewritten",
    "move_aside",
    "plan_reads",
]

# The inbox's own logger: these steps log as the inbox source always did.
log = logging.getLogger("connectors.inbox")
TEMPORARY_SUFFIXES = (".part", ".tmp", ".filepart", ".crdownload")
SNIFF_BYTES = 64 * 1024  # enough text to tell CP932 from UTF-8


def _candidates(entries: list[FileEntry], pattern: str, lock: ReadLock) -> list[FileEntry]:
    return [
        e
        for e in entries
        if fnmatch.fnmatchcase(e.name, pattern)
        and not e.name.startswith(".")
        and not e.name.endswith(TEMPORARY_SUFFIXES)
        and not (lock.mode == "done_file" and e.name.endswith(lock.done_suffix))
    ]


def complete_files(
    list_files: Callable[[], list[FileEntry]],
    *,
    pattern: str,
    lock: ReadLock,
    sleep: Callable[[float], None],
    source: str,
) -> tuple[list[FileEntry], set[str]]:
    """The files matching ``pattern`` that ``lock`` says are complete, and the names of
    everything present; a ``stable`` lock lists twice, ``interval`` seconds apart."""
    first = list_files()
    present = {e.name for e in first}
    candidates = _candidates(first, pattern, lock)
    if lock.mode == "none":
        return candidates, present
    if lock.mode == "done_file":
        return [e for e in candidates if e.name + lock.done_suffix in present], present
    if lock.interval > 0:
        sleep(lock.interval)
    again = {e.name: e for e in list_files()}
    ready = [e for e in candidates if again.get(e.name) == e]
    for e in candidates:
        if again.get(e.name) != e:
            log.info("%s: %s is still being written; left for the next run", source, e.name)
    return ready, present


def plan_reads(
    cursor: Mapping[str, Any], ready: list[FileEntry], present: set[str], *, move: bool
) -> tuple[list[FileEntry], dict[str, Any]]:
    """The complete files not read before (or changed since), oldest first, and the cursor
    after reading them: the history of files still present, what is read, what to move."""
    history: dict[str, dict[str, int]] = dict(cursor.get("files", {}))
    todo = sorted(
        (e for e in ready if history.get(e.name) != e.stamp()), key=lambda e: (e.mtime, e.name)
    )
    # Read before and committed, but not yet moved aside (a crash after the commit).
    unmoved = [e.name for e in ready if history.get(e.name) == e.stamp()]
    new_history = {k: v for k, v in history.items() if k in present}
    for entry in todo:
        new_history[entry.name] = entry.stamp()
    new_cursor: dict[str, Any] = {
        "files": new_history,
        "read": [e.name for e in todo],
        "move": sorted(unmoved + [e.name for e in todo]) if move else [],
    }
    return todo, new_cursor


def forget(cursor: Mapping[str, Any], files: Collection[str]) -> dict[str, Any]:
    """``cursor`` without ``files`` in its history (read again next run) or its moves."""
    kept = dict(cursor)
    kept["files"] = {k: v for k, v in cursor.get("files", {}).items() if k not in files}
    kept["move"] = [name for name in cursor.get("move", []) if name not in files]
    return kept


def forget_if_rewritten(
    cursor: dict[str, Any], entry: FileEntry, after: FileEntry | None, *, source: str
) -> None:
    """When the file read as ``entry`` is now ``after`` (other or gone), drop it from
    ``cursor``'s history and moves."""
    if after is None or after.stamp() != entry.stamp():
        # Rewritten while we read it: what we read may be partial. Forget it, so the next run
        # reads it again (idempotent), and do not move it aside.
        log.warning("%s: %s changed while being read", source, entry.name)
        cursor.update(forget(cursor, {entry.name}))


def file_records(
    stream: IO[bytes], csv_format: CsvFormat, *, source: str, file: str, hints: dict[str, str]
) -> Iterator[RawRecord]:
    """The records of one inbox file; the encoding its first bytes look like, when not the
    declared one, is noted in ``hints`` under ``file``."""
    head = stream.read(SNIFF_BYTES)
    hint = encoding_hint(head, csv_format.encoding)
    if hint is not None:
        hints[file] = hint
    whole = io.BufferedReader(PrefixedStream(head, stream))
    yield from read_csv(whole, csv_format, source=source, file=file)


def encoding_advice(hint: str, declared: str) -> str:
    """What to tell someone whose file looks like ``hint`` but is declared ``declared``."""
    return (
        f"its bytes look like {hint.upper()}, not {declared}: "
        f"set format.encoding: {hint} in the mapping"
    )


def move_aside(
    names: Iterable[str],
    *,
    directory: str,
    processed_dir: str,
    lock: ReadLock,
    move: Callable[[str, str, str], None],
    stat: Callable[[str], FileEntry | None],
) -> None:
    """Move each of ``names`` (with its done file, under a done-file lock) from ``directory``
    into ``processed_dir``, its name prefixed with the time, through the transport's ``move``."""
    stamp = dt.datetime.now(JST).strftime("%Y%m%dT%H%M%S")
    target = posixpath.join(directory, processed_dir)
    for name in names:
        move(name, target, f"{stamp}_{name}")
        if lock.mode == "done_file":
            done = name + lock.done_suffix
            if stat(posixpath.join(directory, done)) is not None:
                move(done, target, f"{stamp}_{done}")


def document_path(documents_dir: str, path: str) -> str:
    """The full path of a document the mapping names (relative paths under
    ``documents_dir``); a :class:`RecordError` when it is outside ``documents_dir``."""
    full = posixpath.normpath(posixpath.join(documents_dir, path))
    root = documents_dir.rstrip("/") + "/"
    if not (full + "/").startswith(root):
        raise RecordError(
            "intake.document_path",
            f"{path!r} is outside {documents_dir}",
            f"文書のパス「{path}」は取得できる範囲の外です。",
        )
    return full


def check_document(full: str, entry: FileEntry | None, max_bytes: int) -> None:
    """Refuse a document that is not a file (``entry`` None) or larger than ``max_bytes``."""
    if entry is None:
        raise RecordError(
            "intake.document_missing",
            f"no file {full}",
            f"文書ファイル {full} がありません。",
            details={"path": full},
        )
    if entry.size > max_bytes:
        raise RecordError(
            "intake.document_too_large",
            f"{full} is {entry.size} bytes; at most {max_bytes}",
            f"文書ファイル {full} が大きすぎます。",
        )
