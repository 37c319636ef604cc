"""The SFTP push-back sink: each delivery's files dropped into a remote folder, exactly once."""

from __future__ import annotations

import posixpath
from contextlib import ExitStack

import paramiko

from connectors._drop import DropPlan, temp_name, trigger_carries
from connectors.base import Sink
from connectors.sftp._pipeline import RenamePipeline, RequestPipeline
from connectors.sftp.transport import SftpEndpoint, open_sftp
from core.errors import Disposition, GatewayError, SinkError
from core.outbound_types import Outbound

__all__ = ["SftpSink"]


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
                renames = RenamePipeline(sftp)
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
        pipeline = RequestPipeline(sftp)
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
