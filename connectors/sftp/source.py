"""The SFTP inbox source: CSV exports (and the documents they name) in a remote folder."""

from __future__ import annotations

import io
import posixpath
import stat
from contextlib import AbstractContextManager
from typing import IO, Any

import paramiko

from connectors.inbox import FileEntry, InboxSource
from connectors.sftp._delivery import exists
from connectors.sftp.transport import KeptSftp, SftpEndpoint
from core.errors import Disposition, SourceError

__all__ = ["SftpSource"]

# What a lost or refused connection raises through paramiko.
_FAILURES = (OSError, EOFError, paramiko.SSHException)


class _SftpStream(io.RawIOBase):
    """An SFTP file as a raw stream, so the CSV reader can buffer and decode it."""

    def __init__(self, handle: paramiko.SFTPFile) -> None:
        self._handle = handle

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        data = self._handle.read(len(buffer))
        buffer[: len(data)] = data
        return len(data)

    def close(self) -> None:
        self._handle.close()
        super().close()


class SftpSource(InboxSource):
    """CSV exports in a remote folder, read over one verified connection (kept open for the
    run and closed by :meth:`close`); see :mod:`connectors.inbox` for the file history, read
    lock and moving aside. Transport failures are retriable :class:`~core.errors.SourceError`s.
    """

    def __init__(self, *, endpoint: SftpEndpoint, **options: Any) -> None:
        super().__init__(**options)
        self.endpoint = endpoint
        self._connection = KeptSftp(endpoint)

    def close(self) -> None:
        """Close the kept connection."""
        self._connection.close()

    def _failed(self, what: str, exc: BaseException) -> SourceError:
        self.close()
        return _read_failed(self.name, self.endpoint, what, exc)

    def _list(self) -> list[FileEntry]:
        try:
            items = self._connection.client().listdir_attr(self.directory)
        except FileNotFoundError as exc:
            raise _no_directory(self.name, self.directory, self.endpoint) from exc
        except _FAILURES as exc:
            raise self._failed("listing", exc) from exc
        entries = (_file_entry(item.filename, item) for item in items)
        return [entry for entry in entries if entry is not None]

    def _open(self, name: str) -> AbstractContextManager[IO[bytes]]:
        path = posixpath.join(self.directory, name)
        try:
            handle = self._connection.client().open(path, "rb")
        except _FAILURES as exc:
            raise self._failed(f"opening {path}", exc) from exc
        return io.BufferedReader(_SftpStream(handle), buffer_size=256 * 1024)

    def _stat(self, path: str) -> FileEntry | None:
        try:
            attrs = self._connection.client().stat(path)
        except FileNotFoundError:
            return None
        except _FAILURES as exc:
            raise self._failed(f"stat {path}", exc) from exc
        return _file_entry(posixpath.basename(path), attrs)

    def _read(self, path: str) -> bytes:
        try:
            with self._connection.client().open(path, "rb") as handle:
                handle.prefetch()  # pipelined reads instead of one round trip per 32 KB
                return bytes(handle.read())
        except FileNotFoundError as exc:
            raise SourceError(
                "sftp.vanished",
                f"{path} disappeared while being read",
                f"文書ファイル {path} が読み込み中に削除されました。",
            ) from exc
        except _FAILURES as exc:
            raise self._failed(f"reading {path}", exc) from exc

    def _move(self, name: str, target_dir: str, target_name: str) -> None:
        sftp = self._connection.client()
        try:
            if not exists(sftp, target_dir):
                sftp.mkdir(target_dir)
            sftp.posix_rename(
                posixpath.join(self.directory, name), posixpath.join(target_dir, target_name)
            )
        except _FAILURES as exc:
            raise self._failed(f"moving {name}", exc) from exc


def _file_entry(name: str, attrs: paramiko.SFTPAttributes) -> FileEntry | None:
    """What the inbox knows of a regular file; None for anything else."""
    if attrs.st_mode is None or not stat.S_ISREG(attrs.st_mode):
        return None
    return FileEntry(name, int(attrs.st_size or 0), int(attrs.st_mtime or 0))


def _no_directory(name: str, directory: str, endpoint: SftpEndpoint) -> SourceError:
    """The inbox folder is not on the server: a setting to fix, not an outage."""
    return SourceError(
        "sftp.no_directory",
        f"{name}: no folder {directory} on {endpoint.host}",
        f"SFTP接続先にフォルダ {directory} がありません。",
        disposition=Disposition.FATAL,
    )


def _read_failed(name: str, endpoint: SftpEndpoint, what: str, exc: BaseException) -> SourceError:
    """A transport failure while reading: retriable (the connection is opened afresh)."""
    return SourceError(
        "sftp.read_failed",
        f"{name}: {what} on {endpoint.host}:{endpoint.port} failed: {exc}",
        "SFTP接続先からの読み込みに失敗しました。",
    )
