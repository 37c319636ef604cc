"""The one error root of keiyaku-gateway.

Every failure the gateway reports on purpose is a :class:`GatewayError` with a stable dotted
``code`` (what systems match on), a Japanese ``message_ja`` (what people read), an English
``message_en`` (what logs and other systems read) and a :class:`Disposition` that tells the caller
what to do with it::

    GatewayError                      code prefix          disposition
    │   (itself)                      request.*, mail.*,   fatal, or retriable for outages
    │                                 server.*, health.*,  (mail server, health check)
    │                                 internal.*,
    │                                 idempotency.*
    ├── ConfigError                   config.*, mapping.*  fatal (also mapping.spec's
    │                                                      MappingSpecError: a wrong mapping file)
    ├── StateError                    state.*              fatal: 409 (illegal transition, wrong
    │   │                                                  party, already acted)
    │   └── InputError                envelope.*, party.*, fatal: 422 (refused input: a bad date,
    │                                 api_client.*,        a missing field, a name too long)
    │                                 consent.*, award.*,
    │                                 records.*, outbox.*,
    │                                 text.*, guarantee.*  (core/envelopes/ still raises
    │                                                      StateError for its envelope.*, party.*)
    ├── DocumentError                 document.*           skippable record (bad input PDF, limits)
    ├── BlobError                     blob.*               fatal (missing or tampered blob)
    ├── SigningError                  signing.*            fatal, or retriable for TSA outages
    ├── RecordError                   mapping.*, format.*, skippable record (one bad input record:
    │                                 intake.*, demo.*,    a line error, the rest goes on)
    │                                 award.*, request.*
    ├── SourceError                   source.*, sftp.*,    retriable (outage), or fatal
    │                                 soap.*, folder.*     (refused credentials, host key, XML)
    ├── SinkError                     sink.*, folder.*,    retriable (outage), or fatal: the
    │                                 http.*, outbound.*,  sink refused this one delivery,
    │                                 sftp.*, soap.*       which goes dead with the error
    ├── GuaranteeError                guarantee.*          fatal (refused reference or notice)
    ├── BackupError                   backup.*             fatal (backup or restore refused/failed)
    ├── StaffError                    staff.*,             fatal (refused staff record, password
    │                                 address_book.*,      policy, missing role, a search)
    │                                 search.*
    ├── NotFoundError                 not_found.*          fatal
    ├── AuthError                     auth.*, link.*       fatal (missing or wrong token, code, lock)
    └── InfrastructureError           storage.*,           retriable (disk full or read-only,
                                      database.*           database unavailable, lock or statement
                                                           timeout): answered 503 + Retry-After

Every code, with its HTTP status and disposition, is catalogued in :mod:`core.error_codes`
(and listed in ``docs/errors.md``); a family may span classes (``sftp.*`` is a source's or a
sink's error), the catalogue says which class raises each code.

Library exceptions are chained with ``raise ... from exc`` so the cause survives in logs.
"""

from __future__ import annotations

import enum
import errno
from typing import Any

__all__ = [
    "AuthError",
    "BackupError",
    "BlobError",
    "ConfigError",
    "Disposition",
    "DocumentError",
    "GatewayError",
    "GuaranteeError",
    "InfrastructureError",
    "InputError",
    "NotFoundError",
    "RecordError",
    "SigningError",
    "SinkError",
    "SourceError",
    "StaffError",
    "StateError",
    "storage_error",
]


class Disposition(enum.Enum):
    """What a caller should do with an error."""

    FATAL = "fatal"
    RETRIABLE = "retriable"
    SKIPPABLE_RECORD = "skippable_record"


class GatewayError(Exception):
    """Root of every error the gateway raises on purpose."""

    default_disposition = Disposition.FATAL

    def __init__(
        self,
        code: str,
        message_en: str,
        message_ja: str,
        *,
        disposition: Disposition | None = None,
        details: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(f"{code}: {message_en}")
        self.code = code
        self.message_en = message_en
        self.message_ja = message_ja
        self.disposition = disposition or self.default_disposition
        self.details = dict(details or {})

    @property
    def retriable(self) -> bool:
        """True when trying the same operation again later may succeed."""
        return self.disposition is Disposition.RETRIABLE

    def as_dict(self) -> dict[str, Any]:
        """The error as a JSON-ready mapping (the shape the API and ``--json`` outputs use)."""
        return {
            "code": self.code,
            "message": self.message_en,
            "message_ja": self.message_ja,
            "disposition": self.disposition.value,
            **({"details": self.details} if self.details else {}),
        }


class ConfigError(GatewayError):
    """The configuration is incomplete or inconsistent."""


class StateError(GatewayError):
    """An operation is not allowed in the envelope's or party's current state."""


class InputError(StateError):
    """Input refused as invalid (a bad date, a missing field, a name too long): answered 422.

    A :class:`StateError` only so that ``except StateError`` written before it existed still
    catches it (the signing pages re-render on ``envelope.field_*``, ``party.forward*``,
    ``text.control_character``); derive it from :class:`GatewayError` once those catches name
    it."""


class DocumentError(GatewayError):
    """An input document is refused (not a PDF, damaged, encrypted, too large, already signed)."""

    default_disposition = Disposition.SKIPPABLE_RECORD


class BlobError(GatewayError):
    """A stored blob is missing or fails its integrity check."""


class SigningError(GatewayError):
    """Signing, timestamping or validation-data collection failed."""


class StaffError(GatewayError):
    """A staff record, import file or password is refused, or a staff member lacks a role."""


class NotFoundError(GatewayError):
    """A looked-up object does not exist (or is not visible to the caller)."""


class AuthError(GatewayError):
    """The caller is not who it must be: an unknown API token, a wrong access code, a locked,
    expired or replaced link."""


class RecordError(GatewayError):
    """One input record is refused (bad value, missing column, undecodable line); it becomes a
    line error in the dead-letter store and the rest of the run goes on."""

    default_disposition = Disposition.SKIPPABLE_RECORD


class SourceError(GatewayError):
    """A source or its transport failed as a whole (outage, refused credentials, unsafe XML)."""

    default_disposition = Disposition.RETRIABLE


class SinkError(GatewayError):
    """A push to a sink failed: an outage (retried later) or a refusal of this one delivery
    (not retriable: the delivery goes dead with this error, the others go on)."""

    default_disposition = Disposition.RETRIABLE


class GuaranteeError(GatewayError):
    """A guarantee reference (電子保証) or an issuer's notice PDF is refused."""


class BackupError(GatewayError):
    """A backup or restore could not be made (missing tool, unreadable backup, target in use)."""


class InfrastructureError(GatewayError):
    """The machine, not the request: a disk full or read-only, the database gone or a lock or
    statement timeout. Nothing was half-written; the same request can be retried later."""

    default_disposition = Disposition.RETRIABLE

    #: seconds a client should wait before retrying (HTTP Retry-After)
    retry_after = 30


_STORAGE_ERRNOS = {
    errno.ENOSPC: (
        "storage.full",
        "no space left on the document store",
        "保存領域の空きが不足しています。",
    ),
    errno.EDQUOT: (
        "storage.full",
        "disk quota exceeded on the document store",
        "保存領域の空きが不足しています。",
    ),
    errno.EROFS: (
        "storage.read_only",
        "the document store is read-only",
        "保存領域に書き込めません(読み取り専用)。",
    ),
    errno.EIO: (
        "storage.io_error",
        "an I/O error on the document store",
        "保存領域の読み書きに失敗しました。",
    ),
}


def storage_error(exc: OSError, where: str) -> InfrastructureError | None:
    """The coded error for a disk fault (full, read-only, I/O) at ``where``; None for any other
    ``OSError`` (a missing file is a different story, told by its caller)."""
    known = _STORAGE_ERRNOS.get(exc.errno or 0)
    if known is None:
        return None
    code, message_en, message_ja = known
    return InfrastructureError(
        code,
        f"{message_en} ({where}: {exc.strerror})",
        message_ja + "しばらくしてから再度お試しください。",
        details={"errno": exc.errno},
    )
