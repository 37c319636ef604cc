"""What the folder and SFTP sources share: an inbox of CSV files read once each.

The source keeps a file history in its cursor (``name → size, mtime``) and reads files it has
not seen or that changed since (Airbyte's file-based CDK does the same). A file still being
written is left for the next run (read lock): either its size and mtime must hold still over an
interval, or a done file (``awards.csv.done``) must be there. Files are moved to the processed
folder only in :meth:`InboxSource.acknowledge`, i.e. after the records they hold are committed;
a file moved late after a crash is simply moved on the next run. Contract PDFs named by the
mapping are read from the same server or folder, never outside ``documents_dir``.
"""

from __future__ import annotations

import abc
import datetime as dt
import fnmatch
import io
import logging
import posixpath
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import IO, Any, Literal

from pydantic import Field

from connectors.base import Batch, ConnectorConfig, RawRecord, Source
from connectors.csv import CsvFormat, PrefixedStream, encoding_hint, read_csv
from core.errors import RecordError
from core.timezone import JST

__all__ = ["FileEntry", "InboxConfig", "InboxSource", "ReadLock", "ReadLockConfig"]

log = logging.getLogger(__name__)
_TEMPORARY_SUFFIXES = (".part", ".tmp", ".filepart", ".crdownload")
_SNIFF_BYTES = 64 * 1024  # enough text to tell CP932 from UTF-8


@dataclass(frozen=True)
class FileEntry:
    """One file in the inbox as listed."""

    name: str
    size: int
    mtime: int

    def stamp(self) -> dict[str, int]:
        """What the history remembers of it."""
        return {"size": self.size, "mtime": self.mtime}


@dataclass(frozen=True)
class ReadLock:
    """When a file counts as complete.

    ``stable``: unchanged size and mtime over ``interval`` seconds; ``done_file``: a file named
    ``<name><done_suffix>`` exists next to it; ``none``: always (only for producers that rename
    into place).
    """

    mode: Literal["stable", "done_file", "none"] = "stable"
    interval: float = 5.0
    done_suffix: str = ".done"


class ReadLockConfig(ConnectorConfig):
    """The ``read_lock`` settings of an inbox source (see :class:`ReadLock`)."""

    mode: Literal["stable", "done_file", "none"] = "stable"
    interval_seconds: float = Field(default=5, ge=0, le=3600)
    done_suffix: str = Field(default=".done", min_length=1)

    def read_lock(self) -> ReadLock:
        """The read lock these settings describe."""
        return ReadLock(
            mode=self.mode, interval=self.interval_seconds, done_suffix=self.done_suffix
        )


class InboxConfig(ConnectorConfig):
    """What every inbox source's settings hold besides its transport: which files are read,
    when one is complete, and where it goes once its records are committed."""

    pattern: str = "*.csv"
    read_lock: ReadLockConfig = ReadLockConfig()
    processed_dir: str | None = "processed"

    def inbox_options(self) -> dict[str, Any]:
        """The :class:`InboxSource` keyword arguments these settings give."""
        return {
            "pattern": self.pattern,
            "read_lock": self.read_lock.read_lock(),
            "processed_dir": self.processed_dir,
        }


class InboxSource(Source, abc.ABC):
    """A folder of CSV files reached through a transport (local folder or SFTP)."""

    def __init__(
        self,
        *,
        name: str,
        directory: str,
        csv_format: CsvFormat,
        pattern: str = "*.csv",
        read_lock: ReadLock | None = None,
        processed_dir: str | None = "processed",
        documents_dir: str | None = None,
        max_document_bytes: int = 20 * 1024 * 1024,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.name = name
        self.directory = directory
        self.csv_format = csv_format
        self.pattern = pattern
        self.read_lock = read_lock or ReadLock()
        self.processed_dir = processed_dir
        self.documents_dir = posixpath.normpath(documents_dir or directory)
        self.max_document_bytes = max_document_bytes
        self._sleep = sleep
        self._hints: dict[str, str] = {}

    # --- what a transport provides ---

    @abc.abstractmethod
    def _list(self) -> list[FileEntry]:
        """Every regular file directly in :attr:`directory`."""

    @abc.abstractmethod
    def _open(self, name: str) -> AbstractContextManager[IO[bytes]]:
        """A binary stream of one inbox file."""

    @abc.abstractmethod
    def _stat(self, path: str) -> FileEntry | None:
        """Size and mtime of any file by absolute path, or None when there is none."""

    @abc.abstractmethod
    def _read(self, path: str) -> bytes:
        """A whole (small) file by absolute path."""

    @abc.abstractmethod
    def _move(self, name: str, target_dir: str, target_name: str) -> None:
        """Move an inbox file into ``target_dir`` (created when missing)."""

    # --- the source ---

    def _candidates(self, entries: list[FileEntry]) -> list[FileEntry]:
        suffix = self.read_lock.done_suffix
        return [
            e
            for e in entries
            if fnmatch.fnmatchcase(e.name, self.pattern)
            and not e.name.startswith(".")
            and not e.name.endswith(_TEMPORARY_SUFFIXES)
            and not (self.read_lock.mode == "done_file" and e.name.endswith(suffix))
        ]

    def _ready(self) -> tuple[list[FileEntry], set[str]]:
        """Complete files, and the names of everything present."""
        first = self._list()
        present = {e.name for e in first}
        lock = self.read_lock
        candidates = self._candidates(first)
        if lock.mode == "none":
            return candidates, present
        if lock.mode == "done_file":
            return [e for e in candidates if e.name + lock.done_suffix in present], present
        if lock.interval > 0:
            self._sleep(lock.interval)
        again = {e.name: e for e in self._list()}
        ready = [e for e in candidates if again.get(e.name) == e]
        for e in candidates:
            if again.get(e.name) != e:
                log.info("%s: %s is still being written; left for the next run", self.name, e.name)
        return ready, present

    def pull(self, cursor: Mapping[str, Any]) -> Batch:
        """Records of every complete file not read before (or changed since)."""
        history: dict[str, dict[str, int]] = dict(cursor.get("files", {}))
        ready, present = self._ready()
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
            "move": sorted(unmoved + [e.name for e in todo]) if self.processed_dir else [],
        }
        return Batch(records=self._records(todo, new_cursor), cursor=new_cursor)

    def _records(self, files: list[FileEntry], cursor: dict[str, Any]) -> Iterator[RawRecord]:
        for entry in files:
            with self._open(entry.name) as stream:
                head = stream.read(_SNIFF_BYTES)
                hint = encoding_hint(head, self.csv_format.encoding)
                if hint is not None:
                    self._hints[entry.name] = hint
                whole = io.BufferedReader(PrefixedStream(head, stream))
                yield from read_csv(whole, self.csv_format, source=self.name, file=entry.name)
            after = self._stat(posixpath.join(self.directory, entry.name))
            if after is None or after.stamp() != entry.stamp():
                # Rewritten while we read it: what we read may be partial. Forget it, so the
                # next run reads it again (idempotent), and do not move it aside.
                log.warning("%s: %s changed while being read", self.name, entry.name)
                cursor["files"].pop(entry.name, None)
                if entry.name in cursor["move"]:
                    cursor["move"].remove(entry.name)

    def leave(self, cursor: Mapping[str, Any], files: set[str]) -> Mapping[str, Any]:
        """Forget ``files`` (read again next run) and do not move them aside."""
        kept = dict(cursor)
        kept["files"] = {k: v for k, v in cursor.get("files", {}).items() if k not in files}
        kept["move"] = [name for name in cursor.get("move", []) if name not in files]
        return kept

    def diagnose(self, file: str) -> str | None:
        """Which encoding the file's first bytes look like, when not the declared one."""
        hint = self._hints.get(file)
        if hint is None:
            return None
        return (
            f"its bytes look like {hint.upper()}, not {self.csv_format.encoding}: "
            f"set format.encoding: {hint} in the mapping"
        )

    def acknowledge(self, cursor: Mapping[str, Any]) -> None:
        """Move the files whose records are committed into the processed folder."""
        if not self.processed_dir:
            return
        stamp = dt.datetime.now(JST).strftime("%Y%m%dT%H%M%S")
        target = posixpath.join(self.directory, self.processed_dir)
        for name in cursor.get("move", []):
            self._move(name, target, f"{stamp}_{name}")
            if self.read_lock.mode == "done_file":
                done = name + self.read_lock.done_suffix
                if self._stat(posixpath.join(self.directory, done)) is not None:
                    self._move(done, target, f"{stamp}_{done}")

    def fetch_document(self, path: str) -> bytes:
        """A contract PDF named by the mapping: relative paths are under ``documents_dir``;
        nothing outside it is read."""
        full = posixpath.normpath(posixpath.join(self.documents_dir, path))
        root = self.documents_dir.rstrip("/") + "/"
        if not (full + "/").startswith(root):
            raise RecordError(
                "intake.document_path",
                f"{path!r} is outside {self.documents_dir}",
                f"文書のパス「{path}」は取得できる範囲の外です。",
            )
        entry = self._stat(full)
        if entry is None:
            raise RecordError(
                "intake.document_missing",
                f"no file {full}",
                f"文書ファイル {full} がありません。",
                details={"path": full},
            )
        if entry.size > self.max_document_bytes:
            raise RecordError(
                "intake.document_too_large",
                f"{full} is {entry.size} bytes; at most {self.max_document_bytes}",
                f"文書ファイル {full} が大きすぎます。",
            )
        return self._read(full)
