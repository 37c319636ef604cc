"""The two connector shapes: a :class:`Source` reads raw records, a :class:`Sink` pushes one delivery.

Everything else a connector needs (names, closing, use as a context manager) is a default
here, so a transport module implements one method. A shared contract test suite runs against every
connector (``tests/contract``). Each transport module also owns its settings: a
:class:`ConnectorConfig` model with the keys its section of ``config.yaml`` takes, which
``gateway/settings.py`` composes into the one settings object.
"""

from __future__ import annotations

import abc
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any, Self

from pydantic import BaseModel, ConfigDict

from core.errors import GatewayError
from core.outbound_types import Outbound

__all__ = [
    "Batch",
    "ConnectorConfig",
    "Provenance",
    "RawRecord",
    "Resolve",
    "Sink",
    "Source",
    "verify_tls",
]


@dataclass(frozen=True)
class Provenance:
    """Where a raw record came from, precisely enough to find it again and replay it."""

    source: str
    file: str | None = None
    line: int | None = None  # 1-based line (CSV) or record number
    path: str | None = None  # element path (XML / SOAP)

    def describe(self) -> str:
        """``source:file:line`` (or ``source:path``) for line errors and logs."""
        parts = [self.source]
        if self.file:
            parts.append(self.file)
        if self.line is not None:
            parts.append(str(self.line))
        if self.path:
            parts.append(self.path)
        return ":".join(parts)


@dataclass(frozen=True)
class RawRecord:
    """One record as the source delivered it: field name (or column position) → text.

    ``error`` is set when the source could not read this record whole (undecodable bytes, a
    wrong number of columns): it becomes a line error and the rest of the run goes on.
    """

    fields: Mapping[str, Any]
    provenance: Provenance
    error: GatewayError | None = None


@dataclass(frozen=True)
class Batch:
    """What one pull returns: the records, and the cursor to store once they are committed."""

    records: Iterator[RawRecord]
    cursor: Mapping[str, Any] = field(default_factory=dict)


# Resolves a path from the config file (relative to the config's folder) to the one to open.
Resolve = Callable[[Path], Path]


class ConnectorConfig(BaseModel):
    """A connector's settings as ``config.yaml`` gives them: unknown keys are refused and the
    values are frozen. Paths stay as written until the connector is opened with a
    :data:`Resolve`."""

    model_config = ConfigDict(extra="forbid", frozen=True)


def verify_tls(ca_file: Path | None, resolve: Resolve) -> bool | str:
    """What an HTTP client verifies the server against: the configured CA bundle, or the
    system's trust store."""
    return str(resolve(ca_file)) if ca_file is not None else True


class _Connector(abc.ABC):  # noqa: B024 - the subclasses add the abstract method
    """Closing, and ``with connector:`` closing it on the way out."""

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release connections."""

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()


class Source(_Connector):
    """Reads raw records since an opaque cursor (a bookmark the source alone understands).

    The caller stores the new cursor only after the records it covers are durably written, so a
    crash re-reads rather than loses.
    """

    name: str = "source"

    @abc.abstractmethod
    def pull(self, cursor: Mapping[str, Any]) -> Batch:
        """Records not yet seen under ``cursor``, and the cursor that covers them."""

    def acknowledge(self, cursor: Mapping[str, Any]) -> None:
        """Called after the records of ``cursor`` are committed (e.g. move processed files)."""

    def leave(self, cursor: Mapping[str, Any], files: set[str]) -> Mapping[str, Any]:
        """The cursor without ``files``: the run failed on them, so they stay where they are
        and are read again next run (by default the cursor does not name files)."""
        return cursor

    def retry(self, cursor: Mapping[str, Any], failed: Sequence[RawRecord]) -> Mapping[str, Any]:
        """The cursor to store when ``failed`` records became line errors: by default
        unchanged (files are read whole; they are retried by :meth:`leave`)."""
        return cursor

    def diagnose(self, file: str) -> str | None:
        """A hint on why every record of ``file`` failed (e.g. its bytes look like another
        encoding than the mapping declares), or None."""
        return None


class Sink(_Connector):
    """Pushes one delivery idempotently: the same ``idempotency_key`` twice has one effect."""

    name: str = "sink"

    @abc.abstractmethod
    def push(self, outbound: Outbound) -> None:
        """Deliver one rendered delivery (keyed by ``outbound.idempotency_key``); raise a
        retriable :class:`~core.errors.GatewayError` on outages and a non-retriable one when the
        target refuses the item itself."""
