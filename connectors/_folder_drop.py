"""The steps of dropping one delivery into a local (or mounted) folder for
:class:`~connectors.folder.FolderSink`: what is already there, each file written whole under a
temporary name and renamed into place, the staged marker before any rename (the protocol is
:mod:`connectors._drop`'s). With ``fsync`` every write and rename is on disk before the next
step, so a receipt never says "done" for a file a power cut could still lose."""

from __future__ import annotations

import os
from pathlib import Path

from connectors._drop import DropPlan, temp_name, trigger_carries

__all__ = ["already_done", "drop_files", "place", "stage", "sync_folder"]


def already_done(plan: DropPlan, folder: Path, receipts: Path, key: str) -> str | None:
    """``"receipt"`` when the delivery's receipt is there, ``"trigger"`` when only its trigger
    file (carrying its key) is, else None."""
    if (receipts / plan.receipt_name).exists():
        return "receipt"
    trigger = plan.trigger
    if trigger is None:
        return None
    try:
        data = (folder / trigger.name).read_bytes()
    except FileNotFoundError:
        return None
    return "trigger" if trigger_carries(data, key) else None


def stage(folder: Path, name: str, data: bytes, key: str, *, fsync: bool) -> None:
    """Write ``name``'s bytes, complete, under its temporary name."""
    with open(folder / temp_name(name, key), "wb") as fh:
        fh.write(data)
        if fsync:
            fh.flush()
            os.fsync(fh.fileno())


def place(folder: Path, name: str, data: bytes, key: str, *, fsync: bool) -> None:
    """Write ``name`` whole or not at all (a temporary name, then a rename)."""
    stage(folder, name, data, key, fsync=fsync)
    os.replace(folder / temp_name(name, key), folder / name)
    sync_folder(folder, fsync=fsync)


def sync_folder(folder: Path, *, fsync: bool) -> None:
    """With ``fsync``, put the folder's entries (the renames into it) on disk."""
    if fsync:
        # The rename itself must survive a power cut before the receipt says "done".
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def drop_files(
    plan: DropPlan, folder: Path, staged: Path, key: str, *, retry: bool, fsync: bool
) -> None:
    """Write the delivery's files and the ``staged`` marker, then rename each file into place.
    On a ``retry`` after the marker was written, only the files still waiting are renamed."""
    folder.mkdir(parents=True, exist_ok=True)
    # No file is renamed into place before the staged marker says all are written; a retry
    # after it renames only what still waits (see connectors._drop).
    if not retry:
        for file in plan.files:
            stage(folder, file.name, file.data, key, fsync=fsync)
        place(staged.parent, staged.name, plan.receipt, key, fsync=fsync)
    for file in plan.files:
        tmp = folder / temp_name(file.name, key)
        if retry and not tmp.exists():
            continue  # renamed before the crash (and maybe taken away since)
        os.replace(tmp, folder / file.name)
        sync_folder(folder, fsync=fsync)
