"""The steps of dropping one delivery into a remote SFTP folder for :class:`SftpSink`: what is
already there, the folders, the files and staged marker written, the renames into place and
the receipt (the protocol is :mod:`connectors._drop`'s)."""

from __future__ import annotations

import posixpath

import paramiko

from connectors._drop import DropPlan, temp_name, trigger_carries
from connectors.sftp._pipeline import RenamePipeline, RequestPipeline

__all__ = ["RemoteDrop", "exists", "make_folders", "write_files"]


def exists(sftp: paramiko.SFTPClient, path: str) -> bool:
    """Whether ``path`` is there on the server."""
    try:
        sftp.stat(path)
    except FileNotFoundError:
        return False
    return True


class RemoteDrop:
    """One delivery's steps over an open SFTP client. ``folders`` holds the folders known to
    exist; the sink keeps it across pushes and empties it with the connection."""

    def __init__(
        self,
        sftp: paramiko.SFTPClient,
        *,
        plan: DropPlan,
        folder: str,
        key: str,
        receipts: str,
        folders: set[str],
    ) -> None:
        self.sftp = sftp
        self.plan = plan
        self.folder = folder
        self.key = key
        self.receipts = receipts
        self.folders = folders
        self.staged = posixpath.join(receipts, plan.staged_name)
        self.receipt = posixpath.join(receipts, plan.receipt_name)

    def _temp(self, name: str) -> str:
        return posixpath.join(self.folder, temp_name(name, self.key))

    def already_done(self) -> str | None:
        """``"receipt"`` when the delivery's receipt is there, ``"trigger"`` when only its
        trigger file (carrying its key) is, else None."""
        if exists(self.sftp, self.receipt):
            return "receipt"
        trigger = self.plan.trigger
        if trigger is None:
            return None
        try:
            with self.sftp.open(posixpath.join(self.folder, trigger.name), "rb") as fh:
                return "trigger" if trigger_carries(fh.read(), self.key) else None
        except FileNotFoundError:
            return None

    def makedirs(self, folder: str) -> None:
        """Make ``folder`` and any missing parent."""
        make_folders(self.sftp, folder, self.folders)

    def stage(self) -> None:
        """Write every file and the marker (under a temporary name of its own) in two
        pipelined round trips; the marker appears only once all are complete."""
        staged_tmp = posixpath.join(self.receipts, temp_name(self.plan.staged_name, self.key))
        writes = [(self._temp(f.name), f.data) for f in self.plan.files]
        write_files(
            self.sftp, self.folder, [*writes, (staged_tmp, self.plan.receipt)], self.folders
        )
        self.sftp.posix_rename(staged_tmp, self.staged)

    def place(self, *, retry: bool) -> None:
        """Rename the files into place, the trigger last; on a retry only those still under
        their temporary names. Then the staged marker becomes the receipt."""
        renames = RenamePipeline(self.sftp)
        for file in self.plan.files:
            tmp = self._temp(file.name)
            if retry and not exists(self.sftp, tmp):
                continue  # renamed before the crash (and maybe taken away since)
            if file.role == "trigger":
                renames.wait()  # every file is in place before the trigger appears
            renames.send(tmp, posixpath.join(self.folder, file.name))
        renames.wait()
        # The staged marker holds the receipt's very bytes: renamed into place it becomes the
        # receipt in one request (atomically), where writing the receipt and removing the
        # marker took three round trips.
        self.sftp.posix_rename(self.staged, self.receipt)

    def write_receipt(self) -> None:
        """Write the receipt in place and drop the staged marker, for a delivery whose
        trigger is already there: every file is complete, so even a receipt cut short by a
        crash tells the truth."""
        with self.sftp.open(self.receipt, "wb") as fh:
            fh.write(self.plan.receipt)
        try:
            self.sftp.remove(self.staged)
        except FileNotFoundError:
            pass  # never staged (the trigger said done) or removed by an earlier try


def make_folders(sftp: paramiko.SFTPClient, folder: str, known: set[str]) -> None:
    """Make ``folder`` and any missing parent (another node making it meanwhile is fine);
    ``known`` holds the folders known to exist and gains those made."""
    if folder in known:
        return
    try:
        sftp.mkdir(folder)  # the usual case: a new folder under an existing one
    except OSError:
        if not exists(sftp, folder):
            parent = posixpath.dirname(folder.rstrip("/"))
            if not parent or parent == folder:
                raise
            make_folders(sftp, parent, known)
            try:
                sftp.mkdir(folder)
            except OSError:
                if not exists(sftp, folder):  # another node made it meanwhile
                    raise
    known.add(folder)


def write_files(
    sftp: paramiko.SFTPClient, folder: str, writes: list[tuple[str, bytes]], known: set[str]
) -> None:
    """Write each (path, bytes) whole, ``folder`` made first where needed: every open in one
    round trip, then every write and close in a second; every answer is checked. ``known`` is
    as for :func:`make_folders`."""
    pipeline = RequestPipeline(sftp)
    make = folder not in known
    if make:
        pipeline.send(paramiko.sftp.CMD_MKDIR, folder, paramiko.SFTPAttributes())
    try:
        handles = pipeline.open_for_writing([path for path, _ in writes])
    except FileNotFoundError:
        if not make:
            raise
        # The folder's parent is missing too: the slow way, one level at a time.
        make_folders(sftp, folder, known)
        handles = pipeline.open_for_writing([path for path, _ in writes])
    known.add(folder)  # the opens in it succeeded, whether mkdir did or not
    for handle, (_, data) in zip(handles, writes, strict=True):
        pipeline.write_and_close(handle, data)
    pipeline.wait()
