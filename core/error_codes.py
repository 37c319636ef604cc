"""The catalogue of every error code the gateway raises, by family.

Each code is a constant named after it (``STAFF_BAD_EMAIL = "staff.bad_email"``) and is
catalogued where it is defined with the HTTP status the API answers it with, its disposition
(the ``disposition`` of the API's error JSON: ``fatal``, ``retriable`` or ``skippable_record``;
``None`` where the raise site decides, e.g. an outage is retriable and a refusal fatal), the
error class it is raised as and what it means. ``gateway/errors.py`` reads the status from
here; ``docs/errors.md`` is this catalogue as a table (``tests/core/test_error_catalogue.py``
checks that every raised code is catalogued and that the table is current).

A 5xx status is the one of the code's usual disposition: an error raised retriable answers
503 (with Retry-After), one raised fatal 500.

One family is open-ended: ``request.http_<status>``, an HTTP error of the framework that no
other code covers, answered with the status it names (:func:`lookup`).

This module imports nothing but :mod:`core.errors`, so anything may import it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Final

from core.errors import (
    AuthError,
    BackupError,
    BlobError,
    ConfigError,
    Disposition,
    DocumentError,
    GatewayError,
    GuaranteeError,
    InfrastructureError,
    InputError,
    NotFoundError,
    RecordError,
    SigningError,
    SinkError,
    SourceError,
    StaffError,
    StateError,
)

__all__ = ["CATALOGUE", "FAMILIES", "REQUEST_HTTP_PREFIX", "ErrorCode", "lookup", "markdown"]

FATAL = Disposition.FATAL
RETRIABLE = Disposition.RETRIABLE
SKIPPABLE = Disposition.SKIPPABLE_RECORD
#: the raise site decides (an outage retriable, a refusal fatal; or two sites disagree)
PER_CASE = None


@dataclass(frozen=True)
class ErrorCode:
    """One catalogued code."""

    code: str
    status: int
    disposition: Disposition | None
    raised_as: type[GatewayError]
    meaning: str

    @property
    def family(self) -> str:
        """The part of the code before the dot."""
        return self.code.split(".", 1)[0]


_codes: dict[str, ErrorCode] = {}
_families: dict[str, str] = {}


def _family(name: str, about: str) -> None:
    _families[name] = about


def _code(
    code: str,
    status: int,
    disposition: Disposition | None,
    raised_as: type[GatewayError],
    meaning: str,
) -> str:
    family = code.split(".", 1)[0]
    if code in _codes or family not in _families:
        raise ValueError(f"{code}: catalogued twice or outside a declared family")
    _codes[code] = ErrorCode(code, status, disposition, raised_as, meaning)
    return code


# One line per code, so that the catalogue reads as a table.
# fmt: off
# --- address_book.* ---

_family("address_book", "the address book of contractor contacts")
ADDRESS_BOOK_EXISTS: Final = _code("address_book.exists", 422, FATAL, StaffError, "a contact … of … exists")
ADDRESS_BOOK_IMPORT_HEADER: Final = _code("address_book.import_header", 422, FATAL, StaffError, "the address book import file lacks a required column")
ADDRESS_BOOK_IMPORT_INVALID: Final = _code("address_book.import_invalid", 422, FATAL, StaffError, "bad line(s); nothing was imported")
ADDRESS_BOOK_NOT_FOUND: Final = _code("address_book.not_found", 422, FATAL, StaffError, "the picked contact is not in the address book")
ADDRESS_BOOK_TOO_LONG: Final = _code("address_book.too_long", 422, FATAL, StaffError, "is longer than … characters")

# --- api_client.* ---

_family("api_client", "API clients and their tokens")
API_CLIENT_BAD_NAME: Final = _code("api_client.bad_name", 422, FATAL, InputError, "a client needs a name of 1-100 characters")
API_CLIENT_BAD_SCOPE: Final = _code("api_client.bad_scope", 422, FATAL, InputError, "unknown scopes …; known: …")
API_CLIENT_EXISTS: Final = _code("api_client.exists", 422, FATAL, InputError, "an API client named … exists")

# --- auth.* ---

_family("auth", "who the caller is: tokens, staff login, IP allow-list")
AUTH_FORBIDDEN: Final = _code("auth.forbidden", 403, FATAL, AuthError, "this token lacks the scope …")
AUTH_INVALID_TOKEN: Final = _code("auth.invalid_token", 401, FATAL, AuthError, "missing, unknown or revoked API token")
AUTH_IP_REFUSED: Final = _code("auth.ip_refused", 403, FATAL, AuthError, "this API client may not call from this address")
AUTH_LOGIN_FAILED: Final = _code("auth.login_failed", 401, FATAL, AuthError, "wrong e-mail address, password or one-time code")
AUTH_OPERATIONS_ONLY: Final = _code("auth.operations_only", 401, FATAL, AuthError, "metrics need the operations token or an operations network")
AUTH_STAFF_DISABLED: Final = _code("auth.staff_disabled", 401, FATAL, AuthError, "the staff member this client acts for is disabled or gone")
AUTH_TOTP_REUSED: Final = _code("auth.totp_reused", 401, FATAL, AuthError, "this one-time code was used already; wait for the next one")

# --- award.* ---

_family("award", "awards (落札) waiting, released or re-mapped")
AWARD_JSON_INVALID: Final = _code("award.json_invalid", 422, SKIPPABLE, RecordError, "the body is not JSON")
AWARD_NO_RECORD: Final = _code("award.no_record", 422, FATAL, InputError, "award … of … keeps no source record (taken in before 0017a); re-import it from the source instead")
AWARD_REMAP_FAILED: Final = _code("award.remap_failed", 422, PER_CASE, GatewayError, "the award cannot be mapped again with the current mapping")
AWARD_REMAP_SKIPPED: Final = _code("award.remap_skipped", 422, FATAL, InputError, "the current mapping skips this record: …")
AWARD_XML_INVALID: Final = _code("award.xml_invalid", 422, SKIPPABLE, RecordError, "the XML holds no record")

# --- backup.* ---

_family("backup", "backup and restore")
BACKUP_BAD_NAME: Final = _code("backup.bad_name", 500, FATAL, BackupError, "not a backup generation name: …")
BACKUP_CORRUPT: Final = _code("backup.corrupt", 500, FATAL, BackupError, "backup file … does not match its manifest's SHA-256")
BACKUP_DATABASE_MISSING: Final = _code("backup.database_missing", 500, FATAL, BackupError, "the SQLite database … does not exist")
BACKUP_NONE_FOUND: Final = _code("backup.none_found", 500, FATAL, BackupError, "no database backup in …")
BACKUP_NOT_FOUND: Final = _code("backup.not_found", 500, FATAL, BackupError, "backup file … does not exist")
BACKUP_REFUSED: Final = _code("backup.refused", 500, FATAL, BackupError, "restore refused: the backup is from another site, another key or another kind")
BACKUP_TARGET_NOT_EMPTY: Final = _code("backup.target_not_empty", 500, FATAL, BackupError, "the target database holds … envelopes; pass --force to replace them")
BACKUP_TOOL_FAILED: Final = _code("backup.tool_failed", 500, FATAL, BackupError, "failed (…): …")
BACKUP_TOOL_MISSING: Final = _code("backup.tool_missing", 500, FATAL, BackupError, "is not installed or not on PATH")
BACKUP_UNSUPPORTED_DATABASE: Final = _code("backup.unsupported_database", 500, FATAL, BackupError, "an in-memory SQLite database cannot be backed up")

# --- blob.* ---

_family("blob", "the encrypted blob store")
BLOB_BAD_ID: Final = _code("blob.bad_id", 500, FATAL, BlobError, "not a blob id: …")
BLOB_MISSING: Final = _code("blob.missing", 500, FATAL, BlobError, "blob … is missing from …")
BLOB_TAMPERED: Final = _code("blob.tampered", 500, FATAL, BlobError, "blob … failed its integrity check (modified or truncated)")
BLOB_WRONG_MASTER_KEY: Final = _code("blob.wrong_master_key", 500, FATAL, BlobError, "blob … was encrypted under a different master key")

# --- config.* ---

_family("config", "the settings file and what it names")
CONFIG_BLOB_MIRROR_IS_STORE: Final = _code("config.blob_mirror_is_store", 500, FATAL, ConfigError, "the document mirror … is the blob store itself")
CONFIG_CERTIFICATE_FONT: Final = _code("config.certificate_font", 500, FATAL, ConfigError, "cannot embed the certificate font …: …")
CONFIG_INVALID: Final = _code("config.invalid", 500, FATAL, ConfigError, "the settings file is invalid (every problem listed at once)")
CONFIG_MASTER_KEY: Final = _code("config.master_key", 500, FATAL, ConfigError, "blobs.master_key must be 64 hex characters")
CONFIG_MASTER_KEY_LENGTH: Final = _code("config.master_key_length", 500, FATAL, ConfigError, "the blob master key must be 32 bytes (64 hex characters)")
CONFIG_NO_ACCESS_CODE_POLICY: Final = _code("config.no_access_code_policy", 422, FATAL, InputError, "no access-code policy configured")
CONFIG_NOT_FOUND: Final = _code("config.not_found", 500, FATAL, ConfigError, "no config file at …")
CONFIG_PUBLIC_URL: Final = _code("config.public_url", 500, FATAL, ConfigError, "server.public_url must be https in production (links carry secrets)")
CONFIG_RETENTION_YEARS: Final = _code("config.retention_years", 500, FATAL, ConfigError, "a document retention of … years would delete documents at once")
CONFIG_SESSION_KEY: Final = _code("config.session_key", 500, FATAL, ConfigError, "server.session_key is missing or malformed")
CONFIG_SINK_CONTENT: Final = _code("config.sink_content", 500, FATAL, ConfigError, "a sink's content settings are inconsistent")
CONFIG_SMTP: Final = _code("config.smtp", 500, FATAL, ConfigError, "mail.smtp.host is required")
CONFIG_SOURCE_NOT_PULLED: Final = _code("config.source_not_pulled", 500, FATAL, ConfigError, "source … is pushed (kind api); it cannot be pulled")
CONFIG_TRUST_ROOT: Final = _code("config.trust_root", 500, FATAL, ConfigError, "cannot read trust root …: …")
CONFIG_UNKNOWN_SINK: Final = _code("config.unknown_sink", 500, FATAL, GatewayError, "no sink named …")
CONFIG_UNKNOWN_SOURCE: Final = _code("config.unknown_source", 500, FATAL, ConfigError, "no source … in the config (known: …)")
CONFIG_YAML: Final = _code("config.yaml", 500, FATAL, ConfigError, "is not valid YAML: …")

# --- consent.* ---

_family("consent", "the contractor's consent to electronic contracting")
CONSENT_OTHER_CONTRACTOR: Final = _code("consent.other_contractor", 422, FATAL, InputError, "the consent belongs to another contractor")
CONSENT_REQUIRED: Final = _code("consent.required", 422, FATAL, InputError, "a construction contract needs the contractor's recorded prior consent (建設業法19条3項) before it is created or sent")
CONSENT_WITHDRAWN: Final = _code("consent.withdrawn", 422, FATAL, InputError, "the contractor withdrew its consent …")

# --- database.* ---

_family("database", "the database as infrastructure (503 + Retry-After)")
DATABASE_TIMEOUT: Final = _code("database.timeout", 503, RETRIABLE, InfrastructureError, "the database did not answer in time (…)")
DATABASE_UNAVAILABLE: Final = _code("database.unavailable", 503, RETRIABLE, InfrastructureError, "the database is unavailable (…)")

# --- demo.* ---

_family("demo", "the demo walk-through")
DEMO_FOREIGN_STAFF: Final = _code("demo.foreign_staff", 422, SKIPPABLE, RecordError, "is an existing staff account; the demo does not sign as it")
DEMO_MAIL_FAILED: Final = _code("demo.mail_failed", 422, SKIPPABLE, RecordError, "mail … was not sent: …")
DEMO_MAIL_PENDING: Final = _code("demo.mail_pending", 422, SKIPPABLE, RecordError, "… mail(s) of envelope … still unsent after … s")
DEMO_NO_ENVELOPE: Final = _code("demo.no_envelope", 422, SKIPPABLE, RecordError, "the demo award … did not become an envelope: …")
DEMO_NO_LINK: Final = _code("demo.no_link", 422, SKIPPABLE, RecordError, "the request mail has no link")
DEMO_NO_MAIL: Final = _code("demo.no_mail", 422, SKIPPABLE, RecordError, "no mail to … about … arrived within … s")
DEMO_NOT_COMPLETED: Final = _code("demo.not_completed", 422, SKIPPABLE, RecordError, "envelope … did not complete")
DEMO_PAGE: Final = _code("demo.page", 422, SKIPPABLE, RecordError, "the page has no form")

# --- document.* ---

_family("document", "input PDFs refused (damaged, encrypted, too complex, ...)")
DOCUMENT_ACTIVE_CONTENT: Final = _code("document.active_content", 422, SKIPPABLE, DocumentError, "runs something when opened (…); such PDFs are not accepted")
DOCUMENT_ALREADY_SIGNED: Final = _code("document.already_signed", 422, SKIPPABLE, DocumentError, "The PDF already carries a digital signature; adding the certificate ID would invalidate it. Upload the unsigned original")
DOCUMENT_BAD_BASE64: Final = _code("document.bad_base64", 422, SKIPPABLE, DocumentError, "document … is not valid base64")
DOCUMENT_DAMAGED: Final = _code("document.damaged", 422, SKIPPABLE, DocumentError, "no reader (strict, qpdf repair, tolerant) can read the PDF, or a stream cannot be decoded")
DOCUMENT_EMPTY: Final = _code("document.empty", 422, SKIPPABLE, DocumentError, "The PDF has no pages")
DOCUMENT_ENCRYPTED: Final = _code("document.encrypted", 422, SKIPPABLE, DocumentError, "the PDF is encrypted")
DOCUMENT_ENVELOPE_TOO_LARGE: Final = _code("document.envelope_too_large", 422, SKIPPABLE, DocumentError, "documents total … bytes; at most … per envelope")
DOCUMENT_FORM_INVALID: Final = _code("document.form_invalid", 422, SKIPPABLE, DocumentError, "The PDF's form or structure tree cannot be checked after signing: …")
DOCUMENT_NO_SUCH_PAGE: Final = _code("document.no_such_page", 422, SKIPPABLE, DocumentError, "no page …")
DOCUMENT_NONE: Final = _code("document.none", 422, SKIPPABLE, DocumentError, "an envelope needs at least one document")
DOCUMENT_NOT_PDF: Final = _code("document.not_pdf", 422, SKIPPABLE, DocumentError, "The file is not a PDF document")
DOCUMENT_PAGE_SIZE: Final = _code("document.page_size", 422, SKIPPABLE, DocumentError, "page … is … x … pt: too thin to display")
DOCUMENT_PURGED: Final = _code("document.purged", 410, FATAL, DocumentError, "the documents of envelope … were deleted at the end of their retention period (…)")
DOCUMENT_RESTRICTED: Final = _code("document.restricted", 422, SKIPPABLE, DocumentError, "The PDF opens without a password but its owner password restricts it (… not allowed). A signed copy can keep neither the restriction nor the document unchanged, and the gateway does not lift an author's restriction on its own: upload a copy saved without the permission password")
DOCUMENT_TOO_COMPLEX: Final = _code("document.too_complex", 422, SKIPPABLE, DocumentError, "the document cannot be displayed within the rendering budget: …")
DOCUMENT_TOO_LARGE: Final = _code("document.too_large", 422, SKIPPABLE, DocumentError, "is … bytes; at most … per file")
DOCUMENT_TOO_MANY_FILES: Final = _code("document.too_many_files", 422, SKIPPABLE, DocumentError, "files given; at most … per envelope")
DOCUMENT_UNREADABLE: Final = _code("document.unreadable", 422, SKIPPABLE, DocumentError, "cannot render: …")

# --- envelope.* ---

_family("envelope", "refused envelope input (fields, parties, dates, amounts)")
ENVELOPE_AMENDS_ITSELF: Final = _code("envelope.amends_itself", 422, FATAL, InputError, "an envelope cannot amend itself")
ENVELOPE_AMOUNT_REQUIRED: Final = _code("envelope.amount_required", 422, FATAL, InputError, "an envelope needs its amount before it is sent (a unit-price contract gives its estimated total, a contract without consideration 0)")
ENVELOPE_BAD_AMOUNT: Final = _code("envelope.bad_amount", 422, FATAL, InputError, "not an amount: …")
ENVELOPE_BAD_AUTH_METHOD: Final = _code("envelope.bad_auth_method", 422, FATAL, InputError, "party … cannot have authenticated by … (expected one of …)")
ENVELOPE_BAD_DATE: Final = _code("envelope.bad_date", 422, FATAL, InputError, "not a date: …")
ENVELOPE_BAD_DEADLINE: Final = _code("envelope.bad_deadline", 422, FATAL, InputError, "a date YYYY-MM-DD is needed")
ENVELOPE_BAD_FIELD: Final = _code("envelope.bad_field", 422, FATAL, InputError, "field …: …")
ENVELOPE_BAD_PARTY: Final = _code("envelope.bad_party", 422, FATAL, InputError, "party … needs a name and an e-mail address")
ENVELOPE_CANCEL_REASON_REQUIRED: Final = _code("envelope.cancel_reason_required", 422, FATAL, InputError, "a cancel needs a reason")
ENVELOPE_CONTRACT_TYPE: Final = _code("envelope.contract_type", 422, FATAL, InputError, "contract_type must be one of …")
ENVELOPE_DEADLINE_NOT_LATER: Final = _code("envelope.deadline_not_later", 422, FATAL, InputError, "the new deadline … must be after …")
ENVELOPE_DECLINE_REASON_REQUIRED: Final = _code("envelope.decline_reason_required", 422, FATAL, InputError, "a decline needs a reason")
ENVELOPE_FIELD_REQUIRED: Final = _code("envelope.field_required", 422, FATAL, InputError, "field … is required")
ENVELOPE_FIELD_TOO_LONG: Final = _code("envelope.field_too_long", 422, FATAL, InputError, "field … takes at most … characters")
ENVELOPE_FIELD_TOO_WIDE: Final = _code("envelope.field_too_wide", 422, FATAL, InputError, "the value of field … does not fit its box")
ENVELOPE_FOREIGN_FIELD: Final = _code("envelope.foreign_field", 422, FATAL, InputError, "fields … do not belong to this party")
ENVELOPE_NO_SIGNER: Final = _code("envelope.no_signer", 422, FATAL, InputError, "an envelope needs at least one approver or signer")
ENVELOPE_NO_TITLE: Final = _code("envelope.no_title", 422, FATAL, InputError, "an envelope needs a title")
ENVELOPE_PARTY_CANNOT_AUTHENTICATE: Final = _code("envelope.party_cannot_authenticate", 422, FATAL, InputError, "party … (…) cannot authenticate: …")
ENVELOPE_PARTY_NOT_STAFF: Final = _code("envelope.party_not_staff", 422, FATAL, InputError, "no enabled staff account has the e-mail …")
ENVELOPE_TOO_MANY_PARTIES: Final = _code("envelope.too_many_parties", 422, FATAL, InputError, "parties given; at most …")

# --- folder.* ---

_family("folder", "the folder connector")
FOLDER_NO_DIRECTORY: Final = _code("folder.no_directory", 500, FATAL, SourceError, "no folder …")
FOLDER_WRITE_FAILED: Final = _code("folder.write_failed", 500, PER_CASE, SinkError, "a delivery cannot be written to the folder (retriable unless permanent)")

# --- format.* ---

_family("format", "a record's file format (CSV, JSON, XML)")
FORMAT_COLUMN_COUNT: Final = _code("format.column_count", 422, SKIPPABLE, RecordError, "line … has … columns; … expected")
FORMAT_CSV: Final = _code("format.csv", 422, SKIPPABLE, RecordError, "line … is not valid CSV: …")
FORMAT_ENCODING: Final = _code("format.encoding", 422, SKIPPABLE, RecordError, "line … is not valid …")

# --- guarantee.* ---

_family("guarantee", "electronic guarantees (電子保証)")
GUARANTEE_BAD_ISSUER: Final = _code("guarantee.bad_issuer", 422, FATAL, GuaranteeError, "the issuer (保証機関) is required, at most 200 characters")
GUARANTEE_BAD_KEY: Final = _code("guarantee.bad_key", 422, FATAL, GuaranteeError, "an authentication key is 6-64 letters, digits, '-' or '_'")
GUARANTEE_BAD_KIND: Final = _code("guarantee.bad_kind", 422, FATAL, GuaranteeError, "unknown guarantee kind …; use 契約保証, 前払金保証 or 中間前払金保証")
GUARANTEE_BAD_NUMBER: Final = _code("guarantee.bad_number", 422, FATAL, GuaranteeError, "a guarantee contract number is 4-32 letters or digits")
GUARANTEE_BUYER_MISMATCH: Final = _code("guarantee.buyer_mismatch", 422, FATAL, GuaranteeError, "the guarantee names the buyer …, not …")
GUARANTEE_DUPLICATE: Final = _code("guarantee.duplicate", 422, FATAL, GuaranteeError, "guarantee … is already registered on this envelope")
GUARANTEE_ENTRY_CLOSED: Final = _code("guarantee.entry_closed", 422, FATAL, InputError, "guarantees cannot be entered on the signing pages at this point")
GUARANTEE_KEY_UNREADABLE: Final = _code("guarantee.key_unreadable", 422, FATAL, GuaranteeError, "the authentication key of guarantee … cannot be decrypted (changed, moved to another row, or another master key)")
GUARANTEE_NOT_A_NOTICE: Final = _code("guarantee.not_a_notice", 422, FATAL, GuaranteeError, "not an issuer's notice (…): …")
GUARANTEE_NOTICE_INCOMPLETE: Final = _code("guarantee.notice_incomplete", 422, FATAL, GuaranteeError, "the notice lacks …")
GUARANTEE_NOTICE_UNREADABLE: Final = _code("guarantee.notice_unreadable", 422, FATAL, GuaranteeError, "the PDF cannot be read: …")
GUARANTEE_NUMBER_IN_USE: Final = _code("guarantee.number_in_use", 422, FATAL, GuaranteeError, "guarantee … is registered on another envelope")
GUARANTEE_PROJECT_MISMATCH: Final = _code("guarantee.project_mismatch", 422, FATAL, GuaranteeError, "the guarantee is for …, the envelope is …")
GUARANTEE_REASON_REQUIRED: Final = _code("guarantee.reason_required", 422, FATAL, GuaranteeError, "removing a guarantee needs a reason")

# --- health.* ---

_family("health", "the health check")
HEALTH_BLOBS: Final = _code("health.blobs", 503, RETRIABLE, GatewayError, "the blob store is unavailable (health check)")
HEALTH_DATABASE: Final = _code("health.database", 503, RETRIABLE, GatewayError, "the database is unavailable (health check)")
HEALTH_UNAVAILABLE: Final = _code("health.unavailable", 503, RETRIABLE, GatewayError, "the gateway cannot serve requests")

# --- http.* ---

_family("http", "the HTTP sink")
HTTP_REJECTED: Final = _code("http.rejected", 500, FATAL, SinkError, "HTTP …: …")
HTTP_UNAVAILABLE: Final = _code("http.unavailable", 503, RETRIABLE, SinkError, "HTTP …: …")
HTTP_UNREACHABLE: Final = _code("http.unreachable", 503, RETRIABLE, SinkError, "http.unreachable")

# --- idempotency.* ---

_family("idempotency", "idempotency keys")
IDEMPOTENCY_KEY_REUSED: Final = _code("idempotency.key_reused", 409, FATAL, GatewayError, "this Idempotency-Key was used with a different request")

# --- intake.* ---

_family("intake", "one award record refused by intake (a line error)")
INTAKE_ACCESS_CODE_POLICY: Final = _code("intake.access_code_policy", 422, SKIPPABLE, RecordError, "an access code arrived but no access-code policy is configured")
INTAKE_CONTRACTOR_UNIDENTIFIED: Final = _code("intake.contractor_unidentified", 422, SKIPPABLE, RecordError, "no corporate number or registry code; a name alone never identifies a contractor")
INTAKE_DOCUMENT_MISSING: Final = _code("intake.document_missing", 422, SKIPPABLE, RecordError, "no file …")
INTAKE_DOCUMENT_PATH: Final = _code("intake.document_path", 422, SKIPPABLE, RecordError, "is outside …")
INTAKE_DOCUMENT_TOO_LARGE: Final = _code("intake.document_too_large", 422, SKIPPABLE, RecordError, "is … bytes; at most …")
INTAKE_DOCUMENT_TRANSPORT: Final = _code("intake.document_transport", 422, SKIPPABLE, RecordError, "document … is named by path but the source has no documents transport (sources.….documents: folder or sftp)")
INTAKE_DOCUMENT_UNAVAILABLE: Final = _code("intake.document_unavailable", 422, SKIPPABLE, RecordError, "cannot fetch document …: …: …")
INTAKE_DUPLICATE_AWARD: Final = _code("intake.duplicate_award", 422, SKIPPABLE, RecordError, "award … appears twice in this run; the first was kept")
INTAKE_DUPLICATE_MANAGEMENT_NUMBER: Final = _code("intake.duplicate_management_number", 422, SKIPPABLE, RecordError, "award …: its management number is already used")

# --- internal.* ---

_family("internal", "an unexpected failure")
INTERNAL_UNEXPECTED: Final = _code("internal.unexpected", 500, FATAL, GatewayError, "unexpected …")

# --- link.* ---

_family("link", "signing and download links")
LINK_CODE_WRONG: Final = _code("link.code_wrong", 401, FATAL, AuthError, "wrong access code; … attempts left")
LINK_EXPIRED: Final = _code("link.expired", 410, FATAL, AuthError, "the download period of this link has ended")
LINK_FORWARDED: Final = _code("link.forwarded", 410, FATAL, AuthError, "this link was forwarded to someone else")
LINK_LOCKED: Final = _code("link.locked", 423, FATAL, AuthError, "this link is locked after too many wrong access codes")
LINK_NOT_FOUND: Final = _code("link.not_found", 404, FATAL, AuthError, "no such link")
LINK_REVOKED: Final = _code("link.revoked", 410, FATAL, AuthError, "this link was replaced by a newer one")

# --- mail.* ---

_family("mail", "sending mail")
MAIL_REJECTED: Final = _code("mail.rejected", 500, FATAL, GatewayError, "SMTP server refused the message: …")
MAIL_SMTP_AUTH: Final = _code("mail.smtp_auth", 503, RETRIABLE, GatewayError, "SMTP login refused: …")
MAIL_SMTP_UNAVAILABLE: Final = _code("mail.smtp_unavailable", 503, RETRIABLE, GatewayError, "SMTP server …:… failed … times: …")

# --- mapping.* ---

_family("mapping", "mapping files and mapped values")
MAPPING_INVALID: Final = _code("mapping.invalid", 500, FATAL, ConfigError, "a mapping file has problems (each listed with its line)")
MAPPING_UNREADABLE: Final = _code("mapping.unreadable", 500, FATAL, ConfigError, "cannot read mapping …: …")

# --- not_found.* ---

_family("not_found", "a looked-up object does not exist")
NOT_FOUND_ACTION: Final = _code("not_found.action", 404, FATAL, NotFoundError, "no action …")
NOT_FOUND_API_CLIENT: Final = _code("not_found.api_client", 404, FATAL, NotFoundError, "no API client …")
NOT_FOUND_AWARD: Final = _code("not_found.award", 404, FATAL, NotFoundError, "no award … from …")
NOT_FOUND_CERTIFICATE: Final = _code("not_found.certificate", 404, FATAL, NotFoundError, "the envelope is not concluded yet")
NOT_FOUND_COMPOSE_DRAFT: Final = _code("not_found.compose_draft", 404, FATAL, NotFoundError, "no such compose draft (expired, sent, or another staff member's)")
NOT_FOUND_CONFLICT: Final = _code("not_found.conflict", 404, FATAL, NotFoundError, "no conflict …")
NOT_FOUND_CONSENT: Final = _code("not_found.consent", 404, FATAL, NotFoundError, "no consent …")
NOT_FOUND_CONTACT: Final = _code("not_found.contact", 404, FATAL, NotFoundError, "no contact …")
NOT_FOUND_CONTRACTOR: Final = _code("not_found.contractor", 404, FATAL, NotFoundError, "no contractor …")
NOT_FOUND_DELIVERY: Final = _code("not_found.delivery", 404, FATAL, NotFoundError, "no delivery …")
NOT_FOUND_DOCUMENT: Final = _code("not_found.document", 404, FATAL, NotFoundError, "document … does not exist")
NOT_FOUND_ENVELOPE: Final = _code("not_found.envelope", 404, FATAL, NotFoundError, "no such envelope (or not visible to the caller)")
NOT_FOUND_GUARANTEE: Final = _code("not_found.guarantee", 404, FATAL, NotFoundError, "no guarantee … on envelope …")
NOT_FOUND_ORIGINAL: Final = _code("not_found.original", 404, FATAL, NotFoundError, "no envelope … to amend")
NOT_FOUND_PARTY: Final = _code("not_found.party", 404, FATAL, NotFoundError, "no party … on envelope …")
NOT_FOUND_ROUTE: Final = _code("not_found.route", 404, FATAL, NotFoundError, "no route …")
NOT_FOUND_SOURCE: Final = _code("not_found.source", 404, FATAL, NotFoundError, "no source … accepting pushed awards")
NOT_FOUND_STAFF: Final = _code("not_found.staff", 404, FATAL, NotFoundError, "no staff member …")
NOT_FOUND_SYNC_RUN: Final = _code("not_found.sync_run", 404, FATAL, NotFoundError, "no sync run …")

# --- outbound.* ---

_family("outbound", "what is pushed back to a sink")
OUTBOUND_BAD_SOURCE: Final = _code("outbound.bad_source", 500, FATAL, SinkError, "unknown record source …")
OUTBOUND_BAD_TEMPLATE: Final = _code("outbound.bad_template", 500, FATAL, SinkError, "template … cannot be filled: …")
OUTBOUND_INVALID_RECORD: Final = _code("outbound.invalid_record", 500, FATAL, SinkError, "the XML record does not match the sink's XSD")
OUTBOUND_UNENCODABLE: Final = _code("outbound.unencodable", 500, FATAL, SinkError, "field …: … (U+…) has no CP932 form")

# --- outbox.* ---

_family("outbox", "the push-back outbox")
OUTBOX_NOT_DEAD: Final = _code("outbox.not_dead", 422, FATAL, InputError, "delivery … is …, only dead ones are retried")

# --- party.* ---

_family("party", "refused party input (names, addresses, access codes, forwarding)")
PARTY_ACCESS_CODE_FOR_STAFF: Final = _code("party.access_code_for_staff", 422, FATAL, InputError, "party … signs as staff (staff login) and takes no access code")
PARTY_ACCESS_CODE_REQUIRED: Final = _code("party.access_code_required", 422, FATAL, InputError, "party … (…) needs an access code")
PARTY_BAD_ACCESS_CODE: Final = _code("party.bad_access_code", 422, FATAL, InputError, "an access code is … to … letters or digits")
PARTY_BAD_EMAIL: Final = _code("party.bad_email", 422, FATAL, InputError, "a valid e-mail address is needed")
PARTY_BAD_NAME: Final = _code("party.bad_name", 422, FATAL, InputError, "a name of 1 to 200 characters is needed")
PARTY_FORWARD_CODE: Final = _code("party.forward_code", 422, FATAL, InputError, "a forward needs the new person's access code")
PARTY_FORWARD_EMAIL: Final = _code("party.forward_email", 422, FATAL, InputError, "the new person needs a valid e-mail address")
PARTY_FORWARD_NAME: Final = _code("party.forward_name", 422, FATAL, InputError, "the new person needs a name")
PARTY_FORWARD_REASON: Final = _code("party.forward_reason", 422, FATAL, InputError, "a forward needs a reason (at most 500 characters)")
PARTY_FORWARD_SAME: Final = _code("party.forward_same", 422, FATAL, InputError, "the request is already addressed to this e-mail")
PARTY_NOT_LOCKED: Final = _code("party.not_locked", 422, FATAL, InputError, "party … has no locked link")
PARTY_REPLACE_REASON_REQUIRED: Final = _code("party.replace_reason_required", 422, FATAL, InputError, "replacing a signer needs a reason")
PARTY_STAFF_HAS_NO_CODE: Final = _code("party.staff_has_no_code", 422, FATAL, InputError, "this party signs as staff and has no access code")
PARTY_UNCHANGED: Final = _code("party.unchanged", 422, FATAL, InputError, "nothing to change")

# --- records.* ---

_family("records", "the records (帳簿) search and exports")
RECORDS_REASON_REQUIRED: Final = _code("records.reason_required", 422, FATAL, InputError, "a correction needs a reason")

# --- request.* ---

_family("request", "the HTTP request itself (size, media type, form, CSRF)")
REQUEST_BAD_STATE: Final = _code("request.bad_state", 422, SKIPPABLE, RecordError, "unknown award state …")
REQUEST_CSRF: Final = _code("request.csrf", 403, FATAL, GatewayError, "missing or wrong CSRF token")
REQUEST_INVALID: Final = _code("request.invalid", 422, FATAL, GatewayError, "each `documents` part must be a file")
REQUEST_IP_REFUSED: Final = _code("request.ip_refused", 403, FATAL, GatewayError, "this address may not use the staff pages or the API")
REQUEST_METHOD_NOT_ALLOWED: Final = _code("request.method_not_allowed", 405, FATAL, GatewayError, "is not allowed here")
REQUEST_TOO_DEEP: Final = _code("request.too_deep", 422, FATAL, GatewayError, "the request body is nested too deeply")
REQUEST_TOO_LARGE: Final = _code("request.too_large", 413, PER_CASE, GatewayError, "the request body is over its route's limit")
REQUEST_UNSUPPORTED_MEDIA_TYPE: Final = _code("request.unsupported_media_type", 415, PER_CASE, GatewayError, "the request body's media type is not one this route takes")

# --- search.* ---

_family("search", "staff searches")
SEARCH_TOO_MANY: Final = _code("search.too_many", 422, FATAL, StaffError, "more than … envelopes match; narrow the conditions")
SEARCH_UNENCODABLE: Final = _code("search.unencodable", 422, FATAL, StaffError, "(U+…) has no CP932 form; export in UTF-8")

# --- server.* ---

_family("server", "starting the server")
SERVER_LOG_FILE_WORKERS: Final = _code("server.log_file_workers", 500, FATAL, GatewayError, "logging.file needs a single process: unset it (log to stderr) or use one worker")
SERVER_START_FAILED: Final = _code("server.start_failed", 500, FATAL, GatewayError, "uvicorn did not start on …:…")
SERVER_WORKERS: Final = _code("server.workers", 500, FATAL, GatewayError, "workers need the config path")

# --- sftp.* ---

_family("sftp", "the SFTP source and sink")
SFTP_AUTH_FAILED: Final = _code("sftp.auth_failed", 500, FATAL, GatewayError, "authentication to … failed")
SFTP_HOST_KEY_MISMATCH: Final = _code("sftp.host_key_mismatch", 500, FATAL, GatewayError, "host key of … does not match known_hosts")
SFTP_HOST_KEY_UNKNOWN: Final = _code("sftp.host_key_unknown", 500, FATAL, GatewayError, "host key of … is not in known_hosts")
SFTP_KNOWN_HOSTS_UNREADABLE: Final = _code("sftp.known_hosts_unreadable", 500, FATAL, GatewayError, "cannot read known_hosts …: …")
SFTP_NO_DIRECTORY: Final = _code("sftp.no_directory", 500, FATAL, SourceError, "no folder … on …")
SFTP_READ_FAILED: Final = _code("sftp.read_failed", 503, RETRIABLE, SourceError, "on …:… failed: …")
SFTP_UNREACHABLE: Final = _code("sftp.unreachable", 503, RETRIABLE, GatewayError, "SSH negotiation with … failed: …")
SFTP_VANISHED: Final = _code("sftp.vanished", 503, RETRIABLE, SourceError, "disappeared while being read")
SFTP_WRITE_FAILED: Final = _code("sftp.write_failed", 503, RETRIABLE, SinkError, "upload to …:… failed: …")

# --- signing.* ---

_family("signing", "signing, timestamping and validation data")
SIGNING_CERTIFICATE_ID_INVALID: Final = _code("signing.certificate_id_invalid", 500, FATAL, SigningError, "The completion-certificate ID must be 32 lower-case hex digits")
SIGNING_DOCUMENT_UNREADABLE: Final = _code("signing.document_unreadable", 500, FATAL, SigningError, "The sealed document cannot be read")
SIGNING_FAILED: Final = _code("signing.failed", 500, FATAL, SigningError, "signing failed for a reason the engine does not name otherwise")
SIGNING_FIELD_EXISTS: Final = _code("signing.field_exists", 500, FATAL, SigningError, "A signature field named … already exists")
SIGNING_FIELD_INVALID: Final = _code("signing.field_invalid", 500, FATAL, SigningError, "Field name … must be 1-64 ASCII letters, digits, '_' or '-'")
SIGNING_FIELD_LOCKED: Final = _code("signing.field_locked", 500, FATAL, SigningError, "Text field … was already filled and is read-only")
SIGNING_FONT_MISSING: Final = _code("signing.font_missing", 500, FATAL, SigningError, "Filling text fields needs a CJK font (font_path)")
SIGNING_KEY_UNAVAILABLE: Final = _code("signing.key_unavailable", 500, FATAL, SigningError, "Cannot load the signing key from … (missing file or wrong passphrase)")
SIGNING_NOT_SEALED: Final = _code("signing.not_sealed", 500, FATAL, SigningError, "The document has no document timestamp to renew; seal it first")
SIGNING_TSA_CERTIFICATE_MISSING: Final = _code("signing.tsa_certificate_missing", 500, FATAL, SigningError, "The TSA's token does not carry its signing certificate")
SIGNING_TSA_UNREACHABLE: Final = _code("signing.tsa_unreachable", 503, RETRIABLE, SigningError, "No timestamp authority answered after … attempts (… URL(s)); try again later")
SIGNING_UNKNOWN_FIELD: Final = _code("signing.unknown_field", 500, FATAL, SigningError, "The document has no text fields named …")
SIGNING_VALIDATION_DATA_UNAVAILABLE: Final = _code("signing.validation_data_unavailable", 503, RETRIABLE, SigningError, "Validation data (certificate chain, CRL/OCSP) for a signature could not be collected; the document was not sealed")

# --- sink.* ---

_family("sink", "any sink")
SINK_BAD_DELIVERY: Final = _code("sink.bad_delivery", 500, FATAL, SinkError, "delivery … names no envelope")

# --- soap.* ---

_family("soap", "the SOAP source and sink")
SOAP_BAD_REQUEST: Final = _code("soap.bad_request", 500, FATAL, SinkError, "the record does not fit …: …")
SOAP_BAD_RESPONSE: Final = _code("soap.bad_response", 500, FATAL, SourceError, "the response is not well-formed XML: …")
SOAP_BAD_SCHEMA: Final = _code("soap.bad_schema", 500, FATAL, SourceError, "cannot load response schema …: …")
SOAP_BAD_WSDL: Final = _code("soap.bad_wsdl", 500, FATAL, GatewayError, "WSDL … has no usable …: …")
SOAP_FAULT: Final = _code("soap.fault", 500, FATAL, SourceError, "soap.fault")
SOAP_HTTP_ERROR: Final = _code("soap.http_error", 500, PER_CASE, GatewayError, "the SOAP endpoint answered an HTTP error (retriable for 5xx/429, else fatal)")
SOAP_INVALID_RESPONSE: Final = _code("soap.invalid_response", 500, FATAL, SourceError, "the response does not match its schema: …")
SOAP_REJECTED: Final = _code("soap.rejected", 500, FATAL, SinkError, "soap.rejected")
SOAP_SERVER_FAULT: Final = _code("soap.server_fault", 503, RETRIABLE, SinkError, "soap.server_fault")
SOAP_UNREACHABLE: Final = _code("soap.unreachable", 503, RETRIABLE, GatewayError, "soap.unreachable")
SOAP_UNSAFE_XML: Final = _code("soap.unsafe_xml", 500, FATAL, SourceError, "the response carries a DTD or entities (refused): …")

# --- source.* ---

_family("source", "any source")
SOURCE_SYNC_FAILED: Final = _code("source.sync_failed", 503, RETRIABLE, SourceError, "sources failed: …")

# --- staff.* ---

_family("staff", "staff accounts, roles and import files")
STAFF_BAD_DEPARTMENT: Final = _code("staff.bad_department", 422, FATAL, StaffError, "a department of at most 200 characters")
STAFF_BAD_EMAIL: Final = _code("staff.bad_email", 422, FATAL, StaffError, "not an e-mail address: …")
STAFF_BAD_MONTH: Final = _code("staff.bad_month", 422, FATAL, StaffError, "not a month (YYYY-MM): …")
STAFF_BAD_NAME: Final = _code("staff.bad_name", 422, FATAL, StaffError, "a name of 1 to 200 characters is required")
STAFF_BAD_NETWORK: Final = _code("staff.bad_network", 422, FATAL, StaffError, "not a network: …")
STAFF_DEPARTMENT_SCOPE: Final = _code("staff.department_scope", 422, FATAL, StaffError, "may only create envelopes for their own department")
STAFF_EXISTS: Final = _code("staff.exists", 422, FATAL, StaffError, "a staff member with e-mail … exists")
STAFF_IMPORT_EMPTY: Final = _code("staff.import_empty", 422, FATAL, StaffError, "the file is empty")
STAFF_IMPORT_ENCODING: Final = _code("staff.import_encoding", 422, FATAL, StaffError, "the file is neither UTF-8 nor CP932")
STAFF_IMPORT_HEADER: Final = _code("staff.import_header", 422, FATAL, StaffError, "the staff import file lacks a required column")
STAFF_IMPORT_INVALID: Final = _code("staff.import_invalid", 422, FATAL, StaffError, "bad line(s); nothing was imported")
STAFF_IMPORT_SIZE: Final = _code("staff.import_size", 422, FATAL, StaffError, "the import file is larger than 1 MB")
STAFF_IMPORT_UNREADABLE: Final = _code("staff.import_unreadable", 422, FATAL, StaffError, "the file is not readable as CSV: …")
STAFF_NO_API_CLIENT: Final = _code("staff.no_api_client", 422, FATAL, StaffError, "no API client named …")
STAFF_NOT_FOUND: Final = _code("staff.not_found", 422, FATAL, StaffError, "no staff member with e-mail …")
STAFF_ROLE_REQUIRED: Final = _code("staff.role_required", 403, FATAL, StaffError, "this operation needs the … role")
STAFF_SEARCH_INPUT: Final = _code("staff.search_input", 422, FATAL, StaffError, "unreadable search condition: …")
STAFF_SEARCH_RANGE: Final = _code("staff.search_range", 422, FATAL, StaffError, "the start of the date range is after its end")
STAFF_UNKNOWN_ROLE: Final = _code("staff.unknown_role", 422, FATAL, StaffError, "unknown role(s): … (admin, sender, signer)")
STAFF_UNKNOWN_SCOPE: Final = _code("staff.unknown_scope", 422, FATAL, StaffError, "unknown visibility scope … (own, department, all)")
STAFF_WEAK_PASSWORD: Final = _code("staff.weak_password", 422, FATAL, StaffError, "the password does not meet the policy")

# --- state.* ---

_family("state", "an operation not allowed in the current state (409)")
STATE_ALREADY_ACTED: Final = _code("state.already_acted", 409, FATAL, StateError, "party … has already acted (…)")
STATE_ALREADY_SEALED: Final = _code("state.already_sealed", 409, FATAL, StateError, "this envelope was already sealed")
STATE_AWARD_CONTRACTOR_UNKNOWN: Final = _code("state.award_contractor_unknown", 409, FATAL, StateError, "award …: name its contractor (--contractor) to release it")
STATE_AWARD_NEEDS_ACCESS_CODE: Final = _code("state.award_needs_access_code", 409, FATAL, StateError, "award … of … has its draft; set the signer's access code to send it")
STATE_AWARD_NOT_REMAPPABLE: Final = _code("state.award_not_remappable", 409, FATAL, StateError, "award … of … cannot be re-mapped (…)")
STATE_AWARD_NOT_WAITING: Final = _code("state.award_not_waiting", 409, FATAL, StateError, "award … of … has an envelope (…); cancel it first")
STATE_AWARD_NOT_WAITING_ACCESS_CODE: Final = _code("state.award_not_waiting_access_code", 409, FATAL, StateError, "award … of … does not wait for an access code (…)")
STATE_CC_CANNOT_ACT: Final = _code("state.cc_cannot_act", 409, FATAL, StateError, "a cc party cannot approve")
STATE_CONFLICT: Final = _code("state.conflict", 409, FATAL, StateError, "the envelope conflicts with one created at the same time")
STATE_DUPLICATE_MANAGEMENT_NUMBER: Final = _code("state.duplicate_management_number", 409, FATAL, StateError, "management number … is in use")
STATE_ENVELOPE_NOT_OPEN: Final = _code("state.envelope_not_open", 409, FATAL, StateError, "the envelope is …; parties act only while it is sent")
STATE_ILLEGAL_TRANSITION: Final = _code("state.illegal_transition", 409, FATAL, StateError, "envelope cannot go from … to …")
STATE_NOT_COMPLETED: Final = _code("state.not_completed", 409, FATAL, StateError, "only a concluded envelope whose documents are kept has a copy to send")
STATE_NOT_YOUR_TURN: Final = _code("state.not_your_turn", 409, FATAL, StateError, "party … cannot act before the parties ahead of it")
STATE_ORIGINAL_NOT_COMPLETED: Final = _code("state.original_not_completed", 409, FATAL, StateError, "only a contract concluded electronically can be amended")
STATE_REASON_REQUIRED: Final = _code("state.reason_required", 409, FATAL, StateError, "give a reason")

# --- storage.* ---

_family("storage", "the document store's disk (503 + Retry-After)")
STORAGE_FULL: Final = _code("storage.full", 503, RETRIABLE, InfrastructureError, "no space left (or quota exceeded) on the document store")
STORAGE_IO_ERROR: Final = _code("storage.io_error", 503, RETRIABLE, InfrastructureError, "an I/O error on the document store")
STORAGE_READ_ONLY: Final = _code("storage.read_only", 503, RETRIABLE, InfrastructureError, "the document store is read-only")

# --- text.* ---

_family("text", "free text (control characters)")
TEXT_CONTROL_CHARACTER: Final = _code("text.control_character", 422, FATAL, GatewayError, "the control character … is not allowed (position …)")
# fmt: on

#: ``request.http_<status>``: an HTTP error of the framework that no other code covers
REQUEST_HTTP_PREFIX: Final = "request.http_"

#: every catalogued code (read-only: built once, at import)
CATALOGUE: Mapping[str, ErrorCode] = MappingProxyType(_codes)
#: every family, with what it is about
FAMILIES: Mapping[str, str] = MappingProxyType(_families)


def lookup(code: str) -> ErrorCode | None:
    """The catalogue's entry for ``code`` (``request.http_<status>`` included); None for a code
    it does not know."""
    entry = CATALOGUE.get(code)
    suffix = code.removeprefix(REQUEST_HTTP_PREFIX)
    if entry is None and code != suffix and suffix.isdigit():
        entry = ErrorCode(code, int(suffix), FATAL, GatewayError, "an HTTP error of the framework")
    return entry


def markdown() -> str:
    """The catalogue as the Markdown table of ``docs/errors.md``."""
    lines = [
        "# Error codes",
        "",
        "<!-- Generated from core/error_codes.py by core.error_codes.markdown(); do not edit by",
        "hand (tests/core/test_error_catalogue.py fails when this file is not current). -->",
        "",
        "Every error the API answers is a JSON body",
        '`{"error": {"code", "message", "message_ja", "disposition", "details"}}` (a Japanese page',
        "on `/sign`, `/download` and `/admin`). The `code` is stable: match on it, not on the",
        "messages. A 5xx status is the one of the code's usual disposition: raised retriable it is",
        "503 with `Retry-After`, raised fatal 500. `per case` means the raise site decides.",
        "",
        "`request.http_<status>`: an HTTP error of the framework that no other code covers,",
        "answered with the status it names.",
    ]
    for family, about in sorted(FAMILIES.items()):
        lines += ["", f"## `{family}.*`: {about}", ""]
        lines += ["| code | HTTP | disposition | raised as | meaning |", "|---|---|---|---|---|"]
        for entry in sorted(CATALOGUE.values(), key=lambda e: e.code):
            if entry.family == family:
                disposition = "per case" if entry.disposition is None else entry.disposition.value
                meaning = entry.meaning.replace("|", "\\|")
                lines.append(
                    f"| `{entry.code}` | {entry.status} | {disposition} | "
                    f"{entry.raised_as.__name__} | {meaning} |"
                )
    return "\n".join(lines) + "\n"
