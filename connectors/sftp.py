"""SFTP transport (paramiko): the verified connection shared by the SFTP source and sink, the
inbox source (:class:`SftpSource`) and the push-back sink.

Host keys are checked against the configured known_hosts file only (never the user's or the
system's), with ``RejectPolicy``: an unknown or changed key fails the connection. Connection
problems are retriable; host-key and authentication problems are not (retrying cannot fix them
and they may mean an attack).
"""

from __future__ import annotations

import io
import posixpath
import stat
from collections.abc import Iterator
from contextlib import AbstractContextManager, ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, Literal

import paramiko
from pydantic import Field, SecretStr

from connectors._drop import DropPlan, temp_name, trigger_carries
from connectors.base import ConnectorConfig, Resolve, Sink
from connectors.csv import CsvFormat
from connectors.inbox import FileEntry, InboxConfig, InboxSource
from core.errors import Disposition, GatewayError, SinkError, SourceError
from core.outbound_types import Outbound

__all__ = [
    "SftpDocumentsConfig",
    "SftpEndpoint",
    "SftpEndpointConfig",
    "SftpSink",
    "SftpSinkConfig",
    "SftpSource",
    "SftpSourceConfig",
    "open_sftp",
]


@dataclass(frozen=True)
class SftpEndpoint:
    """Where and as whom to connect."""

    host: str
    port: int
    username: str
    key_path: Path
    known_hosts: Path
    key_passphrase: str | None = None
    timeout: float = 15.0


def _error(code: str, en: str, ja: str, disposition: Disposition) -> GatewayError:
    return GatewayError(code, en, ja, disposition=disposition)


@contextmanager
def open_sftp(endpoint: SftpEndpoint) -> Iterator[paramiko.SFTPClient]:
    """A connected, host-key-verified SFTP client, closed on exit."""
    client = paramiko.SSHClient()
    client.set_missing_host_key_policy(paramiko.RejectPolicy())
    where = f"{endpoint.host}:{endpoint.port}"
    try:
        client.load_host_keys(str(endpoint.known_hosts))
    except OSError as exc:
        raise _error(
            "sftp.known_hosts_unreadable",
            f"cannot read known_hosts {endpoint.known_hosts}: {exc}",
            "SFTP接続先のホスト鍵ファイル(known_hosts)を読み込めません。",
            Disposition.FATAL,
        ) from exc
    try:
        client.connect(
            endpoint.host,
            port=endpoint.port,
            username=endpoint.username,
            key_filename=str(endpoint.key_path),
            passphrase=endpoint.key_passphrase,
            timeout=endpoint.timeout,
            banner_timeout=endpoint.timeout,
            auth_timeout=endpoint.timeout,
            look_for_keys=False,
            allow_agent=False,
        )
        sftp = client.open_sftp()
    except paramiko.BadHostKeyException as exc:
        client.close()
        raise _error(
            "sftp.host_key_mismatch",
            f"host key of {where} does not match known_hosts",
            "SFTP接続先のホスト鍵が登録されたものと一致しません。",
            Disposition.FATAL,
        ) from exc
    except paramiko.AuthenticationException as exc:
        client.close()
        raise _error(
            "sftp.auth_failed",
            f"authentication to {where} failed",
            "SFTP接続先での認証に失敗しました。",
            Disposition.FATAL,
        ) from exc
    except paramiko.SSHException as exc:
        client.close()
        if "not found in known_hosts" in str(exc):
            raise _error(
                "sftp.host_key_unknown",
                f"host key of {where} is not in known_hosts",
                "SFTP接続先のホスト鍵が登録されていません。",
                Disposition.FATAL,
            ) from exc
        raise _error(
            "sftp.unreachable",
            f"SSH negotiation with {where} failed: {exc}",
            "SFTP接続先に接続できません。",
            Disposition.RETRIABLE,
        ) from exc
    except OSError as exc:  # includes timeouts
        client.close()
        raise _error(
            "sftp.unreachable",
            f"cannot connect to {where}: {exc}",
            "SFTP接続先に接続できません。",
            Disposition.RETRIABLE,
        ) from exc
    try:
        yield sftp
    finally:
        sftp.close()
        client.close()


class SftpSink(Sink):
    """Uploads each delivery's files into a remote folder so a reader never sees half a file.

    Each file goes to a hidden temporary name and is moved into place with ``posix_rename``
    (atomic, and it replaces an existing file where plain ``rename`` fails); the trigger file,
    when configured, is uploaded last; a receipt named after the idempotency key, in its own
    folder, makes a repeated push a no-op, as does a trigger file carrying the same key (see
    :mod:`connectors._drop`). One connection is kept open across pushes and reopened after a
    failure. Connection and transfer failures are retriable; host-key and authentication
    failures are not.
    """

    def __init__(
        self,
        *,
        name: str,
        endpoint: SftpEndpoint,
        root: str,
        trigger: str | None = None,
        receipts: str = ".keiyaku-receipts",
    ) -> None:
        self.name = name
        self.endpoint = endpoint
        self.root = root.rstrip("/") or "/"
        self.trigger = trigger
        self.receipts = posixpath.join(self.root, receipts)
        self._stack: ExitStack | None = None
        self._sftp: paramiko.SFTPClient | None = None
        self._folders: set[str] = set()

    def _client(self) -> paramiko.SFTPClient:
        if self._sftp is None:
            stack = ExitStack()
            self._sftp = stack.enter_context(open_sftp(self.endpoint))
            self._stack = stack
        return self._sftp

    def close(self) -> None:
        """Close the kept connection (the next push opens a new one)."""
        stack, self._stack, self._sftp = self._stack, None, None
        self._folders.clear()
        if stack is not None:
            try:
                stack.close()
            except (OSError, EOFError, paramiko.SSHException):
                pass  # the connection is already gone; nothing left to release

    def push(self, outbound: Outbound) -> None:
        """Upload the delivery's files, then its trigger file and receipt; a delivery already
        received is left alone."""
        idempotency_key = outbound.idempotency_key
        plan = DropPlan.build(outbound, self.trigger)
        folder = posixpath.join(self.root, outbound.directory) if outbound.directory else self.root
        try:
            sftp = self._client()
            done = (
                None
                if outbound.first_attempt
                else self._already_done(sftp, plan, folder, idempotency_key)
            )
            if done == "receipt":
                return
            self._makedirs(sftp, self.receipts)
            staged = posixpath.join(self.receipts, plan.staged_name)
            if done is None:
                # No file is renamed into place before the staged marker says all are written;
                # a retry after it renames only what still waits (see connectors._drop).
                retry = not outbound.first_attempt and self._exists(sftp, staged)
                if not retry:
                    # Every file and the marker (under a temporary name of its own) written in
                    # two pipelined round trips; the marker appears only once all are complete.
                    staged_tmp = posixpath.join(
                        self.receipts, temp_name(plan.staged_name, idempotency_key)
                    )
                    writes = [
                        (posixpath.join(folder, temp_name(f.name, idempotency_key)), f.data)
                        for f in plan.files
                    ]
                    self._write_files(sftp, folder, [*writes, (staged_tmp, plan.receipt)])
                    sftp.posix_rename(staged_tmp, staged)
                else:
                    self._makedirs(sftp, folder)
                renames = _Renames(sftp)
                for file in plan.files:
                    tmp = posixpath.join(folder, temp_name(file.name, idempotency_key))
                    if retry and not self._exists(sftp, tmp):
                        continue  # renamed before the crash (and maybe taken away since)
                    if file.role == "trigger":
                        renames.wait()  # every file is in place before the trigger appears
                    renames.send(tmp, posixpath.join(folder, file.name))
                renames.wait()
                # The staged marker holds the receipt's very bytes: renamed into place it
                # becomes the receipt in one request (atomically), where writing the receipt
                # and removing the marker took three round trips.
                sftp.posix_rename(staged, posixpath.join(self.receipts, plan.receipt_name))
                return
            # (A trigger without a receipt: a crash came in between; only the receipt is left.)
            # Written in place: by now every file (and the trigger) is complete, so even a
            # receipt cut short by a crash tells the truth.
            with sftp.open(posixpath.join(self.receipts, plan.receipt_name), "wb") as fh:
                fh.write(plan.receipt)
            try:
                sftp.remove(staged)
            except FileNotFoundError:
                pass  # never staged (the trigger said done) or removed by an earlier try
        except GatewayError:
            self.close()
            raise
        except (OSError, EOFError, paramiko.SSHException) as exc:
            self.close()
            raise SinkError(
                "sftp.write_failed",
                f"{self.name}: upload to {self.endpoint.host}:{folder} failed: {exc}",
                "SFTP接続先へのファイル送信に失敗しました。",
                disposition=Disposition.RETRIABLE,
            ) from exc

    def _exists(self, sftp: paramiko.SFTPClient, path: str) -> bool:
        try:
            sftp.stat(path)
        except FileNotFoundError:
            return False
        return True

    def _already_done(
        self, sftp: paramiko.SFTPClient, plan: DropPlan, folder: str, key: str
    ) -> str | None:
        if self._exists(sftp, posixpath.join(self.receipts, plan.receipt_name)):
            return "receipt"
        trigger = plan.trigger
        if trigger is None:
            return None
        try:
            with sftp.open(posixpath.join(folder, trigger.name), "rb") as fh:
                return "trigger" if trigger_carries(fh.read(), key) else None
        except FileNotFoundError:
            return None

    def _makedirs(self, sftp: paramiko.SFTPClient, folder: str) -> None:
        if folder in self._folders:
            return
        try:
            sftp.mkdir(folder)  # the usual case: a new folder under an existing one
        except OSError:
            if not self._exists(sftp, folder):
                parent = posixpath.dirname(folder.rstrip("/"))
                if not parent or parent == folder:
                    raise
                self._makedirs(sftp, parent)
                try:
                    sftp.mkdir(folder)
                except OSError:
                    if not self._exists(sftp, folder):  # another node made it meanwhile
                        raise
        self._folders.add(folder)

    def _write_files(
        self, sftp: paramiko.SFTPClient, folder: str, writes: list[tuple[str, bytes]]
    ) -> None:
        """Write each (path, bytes) whole, ``folder`` made first where needed: every open in
        one round trip, then every write and close in a second; every answer is checked."""
        pipeline = _Pipeline(sftp)
        make = folder not in self._folders
        if make:
            pipeline.send(paramiko.sftp.CMD_MKDIR, folder, paramiko.SFTPAttributes())
        try:
            handles = pipeline.open_for_writing([path for path, _ in writes])
        except FileNotFoundError:
            if not make:
                raise
            # The folder's parent is missing too: the slow way, one level at a time.
            self._makedirs(sftp, folder)
            handles = pipeline.open_for_writing([path for path, _ in writes])
        self._folders.add(folder)  # the opens in it succeeded, whether mkdir did or not
        for handle, (_, data) in zip(handles, writes, strict=True):
            pipeline.write_and_close(handle, data)
        pipeline.wait()


class _Pipeline:
    """SFTP requests sent without waiting for each answer, the answers checked together.

    The server handles one channel's requests in order, so a file's writes and close follow its
    open; only the round trip per request is saved. Uses paramiko's request pipelining
    (``_async_request``, as its own prefetch does). paramiko's own pipelined ``SFTPFile.write``
    drops the answers to its writes (and to the close), so a failed write would go unnoticed;
    here every answer is checked.
    """

    CHUNK = 32768  # paramiko's (and most servers') largest write request

    def __init__(self, sftp: paramiko.SFTPClient) -> None:
        self.sftp: Any = sftp  # its private request API is not in paramiko's stubs
        self.answers: dict[int, tuple[int, paramiko.Message]] = {}
        self.sent: list[int] = []

    def send(self, kind: int, *args: Any) -> int:
        """Send one request; its answer is kept for :meth:`wait`."""
        num = int(self.sftp._async_request(self, kind, *args))
        self.sent.append(num)
        return num

    def _async_response(self, kind: int, msg: paramiko.Message, num: int) -> None:
        # Called by paramiko with each answer.
        self.answers[num] = (kind, msg)

    def _check_exception(self) -> None:
        pass  # answers are judged in wait(), once all are in

    def collect(self) -> list[tuple[int, paramiko.Message]]:
        """Every answer to what was sent so far, in the order sent."""
        self.sftp._finish_responses(self)
        sent, self.sent = self.sent, []
        return [self.answers.pop(num) for num in sent]

    def _status(self, kind: int, msg: paramiko.Message) -> None:
        if kind != paramiko.sftp.CMD_STATUS:
            raise OSError(f"unexpected SFTP answer {kind}")
        self.sftp._convert_status(msg)  # raises the failure as paramiko would

    def wait(self) -> None:
        """Every request sent so far has been answered; raise the first failure."""
        for kind, msg in self.collect():
            self._status(kind, msg)

    def open_for_writing(self, paths: list[str]) -> list[bytes]:
        """Open (create, truncate) every path in one round trip; their handles. The answers
        to what was sent before (a mkdir) are not judged. On a failure the files opened are
        closed and the first failure is raised."""
        flags = (
            paramiko.sftp.SFTP_FLAG_WRITE
            | paramiko.sftp.SFTP_FLAG_CREATE
            | paramiko.sftp.SFTP_FLAG_TRUNC
        )
        before = len(self.sent)
        for path in paths:
            self.send(paramiko.sftp.CMD_OPEN, path, flags, paramiko.SFTPAttributes())
        answers = self.collect()[before:]
        handles: list[bytes] = []
        failure: BaseException | None = None
        for kind, msg in answers:
            if kind == paramiko.sftp.CMD_HANDLE:
                handles.append(msg.get_binary())
                continue
            try:
                self._status(kind, msg)
                failure = failure or OSError(f"unexpected SFTP answer {kind} to an open")
            except (OSError, EOFError) as exc:
                failure = failure or exc
        if failure is not None:
            for handle in handles:
                self.send(paramiko.sftp.CMD_CLOSE, handle)
            self.collect()
            raise failure
        return handles

    def write_and_close(self, handle: bytes, data: bytes) -> None:
        """Send the whole of ``data`` to the open file, then its close."""
        for offset in range(0, len(data), self.CHUNK):
            self.send(
                paramiko.sftp.CMD_WRITE,
                handle,
                paramiko.sftp.int64(offset),
                data[offset : offset + self.CHUNK],
            )
        self.send(paramiko.sftp.CMD_CLOSE, handle)


class _Renames:
    """``posix_rename`` requests sent without waiting for each answer, checked together.

    The server handles one channel's requests in order, so a rename still follows the close of
    its file; only the round trip per rename is saved. Answers are collected (and any failure
    raised) by :meth:`wait` before anything that depends on them, i.e. the trigger file and the
    receipt. Uses paramiko's request pipelining (``_async_request``, as its own prefetch does);
    without it, each rename waits for its answer.
    """

    def __init__(self, sftp: paramiko.SFTPClient) -> None:
        self.sftp = sftp
        self.error: OSError | None = None

    def send(self, old: str, new: str) -> None:
        """Ask for ``old`` to be renamed over ``new``."""
        if not hasattr(self.sftp, "_async_request"):
            self.sftp.posix_rename(old, new)
            return
        self.sftp._async_request(
            self, paramiko.sftp.CMD_EXTENDED, "posix-rename@openssh.com", old, new
        )

    def _async_response(self, kind: int, msg: paramiko.Message, num: int) -> None:
        # Called by paramiko with each answer.
        if kind != paramiko.sftp.CMD_STATUS:
            self.error = self.error or OSError(f"unexpected SFTP answer {kind} to a rename")
            return
        code, text = msg.get_int(), msg.get_text()
        if code != paramiko.sftp.SFTP_OK:
            self.error = self.error or OSError(code, f"rename failed: {text}")

    def _check_exception(self) -> None:
        if self.error is not None:
            raise self.error

    def wait(self) -> None:
        """Every rename sent so far has been answered; raise the first failure."""
        if hasattr(self.sftp, "_finish_responses"):
            self.sftp._finish_responses(self)
        self._check_exception()


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
        self._stack: ExitStack | None = None
        self._sftp: paramiko.SFTPClient | None = None

    def _client(self) -> paramiko.SFTPClient:
        if self._sftp is None:
            stack = ExitStack()
            self._sftp = stack.enter_context(open_sftp(self.endpoint))
            self._stack = stack
        return self._sftp

    def close(self) -> None:
        """Close the kept connection."""
        stack, self._stack, self._sftp = self._stack, None, None
        if stack is not None:
            try:
                stack.close()
            except (OSError, EOFError, paramiko.SSHException):
                pass  # already gone

    def _failed(self, what: str, exc: BaseException) -> SourceError:
        self.close()
        return SourceError(
            "sftp.read_failed",
            f"{self.name}: {what} on {self.endpoint.host}:{self.endpoint.port} failed: {exc}",
            "SFTP接続先からの読み込みに失敗しました。",
        )

    def _list(self) -> list[FileEntry]:
        try:
            items = self._client().listdir_attr(self.directory)
        except FileNotFoundError as exc:
            raise SourceError(
                "sftp.no_directory",
                f"{self.name}: no folder {self.directory} on {self.endpoint.host}",
                f"SFTP接続先にフォルダ {self.directory} がありません。",
                disposition=Disposition.FATAL,
            ) from exc
        except (OSError, EOFError, paramiko.SSHException) as exc:
            raise self._failed("listing", exc) from exc
        return [
            FileEntry(item.filename, int(item.st_size or 0), int(item.st_mtime or 0))
            for item in items
            if item.st_mode is not None and stat.S_ISREG(item.st_mode)
        ]

    def _open(self, name: str) -> AbstractContextManager[IO[bytes]]:
        path = posixpath.join(self.directory, name)
        try:
            handle = self._client().open(path, "rb")
        except (OSError, EOFError, paramiko.SSHException) as exc:
            raise self._failed(f"opening {path}", exc) from exc
        return io.BufferedReader(_SftpStream(handle), buffer_size=256 * 1024)

    def _stat(self, path: str) -> FileEntry | None:
        try:
            attrs = self._client().stat(path)
        except FileNotFoundError:
            return None
        except (OSError, EOFError, paramiko.SSHException) as exc:
            raise self._failed(f"stat {path}", exc) from exc
        if attrs.st_mode is None or not stat.S_ISREG(attrs.st_mode):
            return None
        return FileEntry(
            posixpath.basename(path), int(attrs.st_size or 0), int(attrs.st_mtime or 0)
        )

    def _read(self, path: str) -> bytes:
        try:
            with self._client().open(path, "rb") as handle:
                handle.prefetch()  # pipelined reads instead of one round trip per 32 KB
                return bytes(handle.read())
        except FileNotFoundError as exc:
            raise SourceError(
                "sftp.vanished",
                f"{path} disappeared while being read",
                f"文書ファイル {path} が読み込み中に削除されました。",
            ) from exc
        except (OSError, EOFError, paramiko.SSHException) as exc:
            raise self._failed(f"reading {path}", exc) from exc

    def _move(self, name: str, target_dir: str, target_name: str) -> None:
        sftp = self._client()
        try:
            try:
                sftp.stat(target_dir)
            except FileNotFoundError:
                sftp.mkdir(target_dir)
            sftp.posix_rename(
                posixpath.join(self.directory, name), posixpath.join(target_dir, target_name)
            )
        except (OSError, EOFError, paramiko.SSHException) as exc:
            raise self._failed(f"moving {name}", exc) from exc


class SftpEndpointConfig(ConnectorConfig):
    """The connection settings every SFTP sink and source has: the server, the key-only login
    and the known_hosts file its host key must be in."""

    host: str
    port: int = Field(default=22, ge=1, le=65535)
    username: str
    key_path: Path
    key_passphrase: SecretStr | None = None
    known_hosts: Path
    timeout_seconds: float = Field(default=15, gt=0)

    def endpoint(self, resolve: Resolve) -> SftpEndpoint:
        """The endpoint these settings describe, with their files resolved."""
        return SftpEndpoint(
            host=self.host,
            port=self.port,
            username=self.username,
            key_path=resolve(self.key_path),
            known_hosts=resolve(self.known_hosts),
            key_passphrase=self.key_passphrase.get_secret_value() if self.key_passphrase else None,
            timeout=self.timeout_seconds,
        )


class SftpSinkConfig(SftpEndpointConfig):
    """An SFTP sink's settings (``sinks.NAME`` with ``kind: sftp``)."""

    kind: Literal["sftp"]
    path: str
    trigger: str | None = None

    def open(self, *, name: str, resolve: Resolve) -> SftpSink:
        """The sink these settings describe."""
        return SftpSink(
            name=name, endpoint=self.endpoint(resolve), root=self.path, trigger=self.trigger
        )


class SftpSourceConfig(InboxConfig, SftpEndpointConfig):
    """An SFTP source's settings (``sources.NAME`` with ``kind: sftp``)."""

    kind: Literal["sftp"]
    path: str
    documents_dir: str | None = None

    def open(
        self, *, name: str, resolve: Resolve, csv_format: CsvFormat, max_document_bytes: int
    ) -> SftpSource:
        """The source these settings describe, reading CSV files of ``csv_format``."""
        return SftpSource(
            endpoint=self.endpoint(resolve),
            name=name,
            directory=self.path,
            csv_format=csv_format,
            documents_dir=self.documents_dir,
            max_document_bytes=max_document_bytes,
            **self.inbox_options(),
        )


class SftpDocumentsConfig(SftpEndpointConfig):
    """An SFTP folder that documents named by path are read from (a SOAP source's
    ``documents`` with ``kind: sftp``)."""

    kind: Literal["sftp"]
    path: str

    def open(self, *, name: str, resolve: Resolve, max_document_bytes: int) -> SftpSource:
        """A source used only for :meth:`~connectors.inbox.InboxSource.fetch_document`."""
        return SftpSource(
            endpoint=self.endpoint(resolve), name=name, directory=self.path,
            csv_format=CsvFormat(), documents_dir=self.path, max_document_bytes=max_document_bytes,
        )  # fmt: skip
