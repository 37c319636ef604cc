"""The SFTP push-back sink: each delivery's files dropped into a remote folder, exactly once."""

from __future__ import annotations

import posixpath

import paramiko

from connectors._drop import DropPlan
from connectors.base import Sink
from connectors.sftp._delivery import RemoteDrop, exists
from connectors.sftp.transport import KeptSftp, SftpEndpoint
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
        self._connection = KeptSftp(endpoint)
        self._folders: set[str] = set()

    def close(self) -> None:
        """Close the kept connection (the next push opens a new one)."""
        self._folders.clear()
        self._connection.close()

    def push(self, outbound: Outbound) -> None:
        """Upload the delivery's files, then its trigger file and receipt; a delivery already
        received is left alone."""
        plan = DropPlan.build(outbound, self.trigger)
        folder = posixpath.join(self.root, outbound.directory) if outbound.directory else self.root
        try:
            drop = RemoteDrop(
                self._connection.client(),
                plan=plan,
                folder=folder,
                key=outbound.idempotency_key,
                receipts=self.receipts,
                folders=self._folders,
            )
            _deliver(drop, first_attempt=outbound.first_attempt)
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


def _deliver(drop: RemoteDrop, *, first_attempt: bool) -> None:
    """The delivery's steps, from where an earlier try left it (see connectors._drop)."""
    done = None if first_attempt else drop.already_done()
    if done == "receipt":
        return
    drop.makedirs(drop.receipts)
    if done == "trigger":
        # A trigger without a receipt: a crash came in between; only the receipt is left.
        drop.write_receipt()
        return
    # No file is renamed into place before the staged marker says all are written; a retry
    # after it renames only what still waits.
    retry = not first_attempt and exists(drop.sftp, drop.staged)
    if retry:
        drop.makedirs(drop.folder)
    else:
        drop.stage()
    drop.place(retry=retry)
