"""What the folder and SFTP sinks share: temporary names, receipts and the write order.

A drop-folder reader must never see half a file, and a delivery repeated after a crash must
not be dropped twice. So every file is written under a hidden temporary name (``.name.<key
hash>.part``) and renamed into place; the optional trigger (control) file is written last, so
its presence means every file of the delivery is complete; and a receipt named after the
idempotency key is written after that, in a folder of its own. A delivery whose receipt, or
whose trigger file carrying the same key, already exists is done: the push succeeds without
writing anything.

Exactly once, with or without a trigger file: every file is first written under its temporary
name, then a *staged* marker (``<receipt>.staged``, beside the receipts) records that all of
them are complete, and only then are they renamed into place, one by one. A retry that finds
the staged marker renames only the files whose temporary name still exists (a rename is
atomic: a file either still waits under its temporary name or is in place, perhaps already
taken away by the consumer) and never writes a file into place a second time; without the
marker no file was renamed yet, and everything is written again. The marker holds the
receipt's bytes, so the SFTP sink renames it into place as the receipt (one request).

The temporary name is derived from the key, so a retry after a crash overwrites its own
leftovers instead of adding new ones. On a delivery's first attempt (``Outbound.first_attempt``:
its first claim, never failed) nothing of it can be there yet, so the sinks skip looking.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
from dataclasses import dataclass

from connectors.outbound import manifest
from core.outbound_types import Outbound, OutboundFile
from core.timezone import JST


def key_hash(idempotency_key: str) -> str:
    """A file-name-safe digest of an idempotency key."""
    return hashlib.sha256(idempotency_key.encode()).hexdigest()[:40]


def temp_name(name: str, idempotency_key: str) -> str:
    """The hidden name a file is written under before it is renamed to ``name``."""
    return f".{name}.{key_hash(idempotency_key)[:12]}.part"


@dataclass(frozen=True)
class DropPlan:
    """The writes of one delivery, in order: files, then the trigger file."""

    files: tuple[OutboundFile, ...]
    receipt_name: str
    receipt: bytes

    @classmethod
    def build(cls, outbound: Outbound, trigger: str | None) -> DropPlan:
        """Files, the trigger file named by the template ``trigger`` (e.g.
        ``"{management_number}.end"``), and the receipt."""
        files = list(outbound.files)
        if trigger:
            files.append(
                OutboundFile(
                    name=outbound.fill(trigger),
                    data=manifest(outbound),
                    media_type="application/json",
                    role="trigger",
                )
            )
        receipt = json.dumps(
            {
                "idempotency_key": outbound.idempotency_key,
                "directory": outbound.directory,
                "files": [f.name for f in files],
                "delivered_at": dt.datetime.now(JST).isoformat(timespec="seconds"),
            },
            ensure_ascii=False,
        ).encode("utf-8")
        return cls(
            files=tuple(files), receipt_name=key_hash(outbound.idempotency_key), receipt=receipt
        )

    @property
    def staged_name(self) -> str:
        """The marker, beside the receipts, saying every temporary file is complete."""
        return f"{self.receipt_name}.staged"

    @property
    def trigger(self) -> OutboundFile | None:
        """The trigger file, when one is configured."""
        return self.files[-1] if self.files and self.files[-1].role == "trigger" else None


def trigger_carries(data: bytes, idempotency_key: str) -> bool:
    """True when an existing trigger file's manifest names this idempotency key."""
    try:
        return bool(json.loads(data.decode("utf-8")).get("idempotency_key") == idempotency_key)
    except (ValueError, AttributeError):
        return False
