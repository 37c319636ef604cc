"""Folder sink and source: files dropped into a local (or mounted) folder, each appearing whole;
and an inbox folder of CSV exports read once each (:class:`FolderSource`).

Every file is written under a hidden temporary name, flushed to disk and renamed into place
(``os.replace``, atomic on one file system); the trigger file, when configured, comes last; the
receipt named after the idempotency key makes a repeated push a no-op (see
:mod:`connectors._drop`; the steps of one drop are in :mod:`connectors._folder_drop`).
"""

from __future__ import annotations

import errno
import os
from contextlib import AbstractContextManager
from pathlib import Path
from typing import IO, Literal

from connectors._drop import DropPlan
from connectors._folder_drop import already_done, drop_files, place
from connectors.base import ConnectorConfig, Resolve, Sink
from connectors.csv import CsvFormat
from connectors.inbox import FileEntry, InboxConfig, InboxSource
from core.errors import Disposition, SinkError, SourceError
from core.outbound_types import Outbound

__all__ = [
    "FolderDocumentsConfig",
    "FolderSink",
    "FolderSinkConfig",
    "FolderSource",
    "FolderSourceConfig",
]

RECEIPTS = ".keiyaku-receipts"
# A name the file system refuses will not be accepted on a retry either.
_PERMANENT = {errno.ENAMETOOLONG, errno.EINVAL, errno.EILSEQ}


class FolderSink(Sink):
    """Writes each delivery's files under ``root`` (plus the delivery's sub-folder)."""

    def __init__(
        self,
        *,
        name: str,
        root: Path,
        trigger: str | None = None,
        receipts: str = RECEIPTS,
        fsync: bool = True,
    ) -> None:
        self.name = name
        self.root = Path(root)
        self.trigger = trigger
        self.receipts = self.root / receipts
        self.fsync = fsync

    def push(self, outbound: Outbound) -> None:
        """Write the delivery's files, then its trigger file and receipt; a delivery already
        received (receipt or trigger file with this key) is left alone."""
        key = outbound.idempotency_key
        plan = DropPlan.build(outbound, self.trigger)
        folder = self.root / outbound.directory
        try:
            done = (
                None if outbound.first_attempt else already_done(plan, folder, self.receipts, key)
            )
            if done == "receipt":
                # A push killed after placing the receipt, before removing its marker.
                (self.receipts / plan.staged_name).unlink(missing_ok=True)
                return
            self.receipts.mkdir(parents=True, exist_ok=True)
            staged = self.receipts / plan.staged_name
            if done is None:
                retry = not outbound.first_attempt and staged.exists()
                drop_files(plan, folder, staged, key, retry=retry, fsync=self.fsync)
            # (A trigger without a receipt: a crash came in between; only the receipt is left.)
            place(self.receipts, plan.receipt_name, plan.receipt, key, fsync=self.fsync)
            staged.unlink(missing_ok=True)
        except OSError as exc:
            raise _write_failed(self.name, folder, exc) from exc


def _write_failed(name: str, folder: Path, exc: OSError) -> SinkError:
    """A failed write: retried, unless the file system refuses the name itself."""
    permanent = exc.errno in _PERMANENT
    return SinkError(
        "folder.write_failed",
        f"{name}: cannot write to {folder}: {exc}",
        f"フォルダ {folder} に書き込めません。",
        disposition=Disposition.FATAL if permanent else Disposition.RETRIABLE,
    )


class FolderSource(InboxSource):
    """CSV exports dropped into a local (or mounted) folder; see :mod:`connectors.inbox`."""

    def _path(self, name: str) -> Path:
        return Path(self.directory) / name

    def _entry(self, path: Path, name: str) -> FileEntry | None:
        try:
            st = path.stat()
        except FileNotFoundError:
            return None
        if not path.is_file():
            return None
        return FileEntry(name=name, size=st.st_size, mtime=st.st_mtime_ns)

    def _list(self) -> list[FileEntry]:
        entries = []
        try:
            with os.scandir(self.directory) as it:
                for item in it:
                    if item.is_file(follow_symlinks=False):
                        st = item.stat(follow_symlinks=False)
                        entries.append(FileEntry(item.name, st.st_size, st.st_mtime_ns))
        except FileNotFoundError as exc:
            raise SourceError(
                "folder.no_directory",
                f"{self.name}: no folder {self.directory}",
                f"取込フォルダ {self.directory} がありません。",
                disposition=Disposition.FATAL,
            ) from exc
        return entries

    def _open(self, name: str) -> AbstractContextManager[IO[bytes]]:
        return open(self._path(name), "rb")

    def _stat(self, path: str) -> FileEntry | None:
        return self._entry(Path(path), Path(path).name)

    def _read(self, path: str) -> bytes:
        return Path(path).read_bytes()

    def _move(self, name: str, target_dir: str, target_name: str) -> None:
        Path(target_dir).mkdir(parents=True, exist_ok=True)
        os.replace(self._path(name), Path(target_dir) / target_name)


class FolderSinkConfig(ConnectorConfig):
    """A folder sink's settings (``sinks.NAME`` with ``kind: folder``)."""

    kind: Literal["folder"]
    path: Path
    trigger: str | None = None
    fsync: bool = True

    def open(self, *, name: str, resolve: Resolve) -> FolderSink:
        """The sink these settings describe."""
        return FolderSink(
            name=name, root=resolve(self.path), trigger=self.trigger, fsync=self.fsync
        )


class FolderSourceConfig(InboxConfig):
    """A folder source's settings (``sources.NAME`` with ``kind: folder``)."""

    kind: Literal["folder"]
    path: Path
    documents_dir: Path | None = None

    def open(
        self, *, name: str, resolve: Resolve, csv_format: CsvFormat, max_document_bytes: int
    ) -> FolderSource:
        """The source these settings describe, reading CSV files of ``csv_format``."""
        return FolderSource(
            name=name,
            directory=str(resolve(self.path)),
            csv_format=csv_format,
            documents_dir=str(resolve(self.documents_dir)) if self.documents_dir else None,
            max_document_bytes=max_document_bytes,
            **self.inbox_options(),
        )


class FolderDocumentsConfig(ConnectorConfig):
    """A local or mounted folder that documents named by path are read from (a SOAP source's
    ``documents`` with ``kind: folder``)."""

    kind: Literal["folder"]
    path: Path

    def open(self, *, name: str, resolve: Resolve, max_document_bytes: int) -> FolderSource:
        """A source used only for :meth:`~connectors.inbox.InboxSource.fetch_document`."""
        folder = str(resolve(self.path))
        return FolderSource(
            name=name, directory=folder, csv_format=CsvFormat(), documents_dir=folder,
            max_document_bytes=max_document_bytes,
        )  # fmt: skip
