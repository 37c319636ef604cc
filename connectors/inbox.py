"""What the folder and SFTP sources share: an inbox of CSV files read once each.

The source keeps a file history in its cursor (``name → size, mtime``) and reads files it has
not seen or that changed since (Airbyte's file-based CDK does the same). A file still being
written is left for the next run (read lock): either its size and mtime must hold still over an
interval, or a done file (``awards.csv.done``) must be there. Files are moved to the processed
folder only in :meth:`InboxSource.acknowledge`, i.e. after the records they hold are committed;
a file moved late after a crash is simply moved on the next run. Contract PDFs named by the
mapping are read from the same server or folder, never outside ``documents_dir``. The steps
themselves, apart from the transport, are functions in :mod:`connectors._inbox_files`.
"""

from __future__ import annotations

import abc
import posixpath
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import IO, Any, Literal

from pydantic import Field

from connectors._inbox_files import (
    check_document,
    complete_files,
    document_path,
    encoding_advice,
    file_records,
    forget,
    forget_if_rewritten,
    move_aside,
    plan_reads,
)
from connectors.base import Batch, ConnectorConfig, RawRecord, Source
from connectors.csv import CsvFormat

__all__ = ["FileEntry", "InboxConfig", "InboxSource", "ReadLock", "ReadLockConfig"]


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

    def pull(self, cursor: Mapping[str, Any]) -> Batch:
        """Records of every complete file not read before (or changed since)."""
        ready, present = complete_files(
            self._list, pattern=self.pattern, lock=self.read_lock, sleep=self._sleep,
            source=self.name,
        )  # fmt: skip
        todo, new_cursor = plan_reads(cursor, ready, present, move=bool(self.processed_dir))
        return Batch(records=self._records(todo, new_cursor), cursor=new_cursor)

    def _records(self, files: list[FileEntry], cursor: dict[str, Any]) -> Iterator[RawRecord]:
        for entry in files:
            with self._open(entry.name) as stream:
                yield from file_records(
                    stream, self.csv_format, source=self.name, file=entry.name, hints=self._hints
                )
            after = self._stat(posixpath.join(self.directory, entry.name))
            forget_if_rewritten(cursor, entry, after, source=self.name)

    def leave(self, cursor: Mapping[str, Any], files: set[str]) -> Mapping[str, Any]:
        """Forget ``files`` (read again next run) and do not move them aside."""
        return forget(cursor, files)

    def diagnose(self, file: str) -> str | None:
        """Which encoding the file's first bytes look like, when not the declared one."""
        hint = self._hints.get(file)
        return None if hint is None else encoding_advice(hint, self.csv_format.encoding)

    def acknowledge(self, cursor: Mapping[str, Any]) -> None:
        """Move the files whose records are committed into the processed folder."""
        if self.processed_dir:
            move_aside(
                cursor.get("move", []), directory=self.directory, processed_dir=self.processed_dir,
                lock=self.read_lock, move=self._move, stat=self._stat,
            )  # fmt: skip

    def fetch_document(self, path: str) -> bytes:
        """A contract PDF named by the mapping: relative paths are under ``documents_dir``;
        nothing outside it is read."""
        full = document_path(self.documents_dir, path)
        check_document(full, self._stat(full), self.max_document_bytes)
        return self._read(full)
