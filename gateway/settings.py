"""The one settings object: read once from ``config.yaml``, validated, passed in.

``${NAME}`` anywhere in a value is replaced by the environment variable NAME, or else by NAME from
the ``secrets_file`` the config names (``keiyaku init`` writes one, mode 0600). Relative paths are
resolved against the config file's folder. Every problem is collected and reported at once.
Secrets never have defaults; outside ``environment: development`` the development TSA and the
development PKI are refused.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
import re
from collections.abc import Mapping
from decimal import Decimal
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from dotenv import dotenv_values
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from connectors.folder import FolderDocumentsConfig, FolderSinkConfig, FolderSourceConfig
from connectors.http import RestSinkConfig
from connectors.outbound import ContentConfig, check_spec
from connectors.sftp import SftpDocumentsConfig, SftpSinkConfig, SftpSourceConfig
from connectors.soap import SoapSinkConfig, SoapSourceConfig
from core.errors import ConfigError
from core.timezone import JST_NAME

_REF = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ContactSettings(_Section):
    """Whom contractors and signers ask about a contract: shown in every mail and on the
    error pages signers see; mail replies go to ``email`` (the Reply-To header)."""

    department: str = Field(default="契約課", min_length=1, max_length=100)
    phone: str | None = Field(default=None, max_length=50)
    address: str | None = Field(default=None, max_length=200)
    email: str | None = Field(default=None, max_length=320, pattern=r"^[^@\s]+@[^@\s]+$")

    @field_validator("department", "phone", "address")
    @classmethod
    def _one_line(cls, value: str | None) -> str | None:
        if value is not None and any(ch in value for ch in "\r\n"):
            raise ValueError("must be one line")
        return value


class BuyerSettings(_Section):
    name: str = Field(min_length=1)
    department: str = "契約課"
    contact: ContactSettings = ContactSettings()


class DatabaseSettings(_Section):
    url: str = "sqlite:///keiyaku.db"
    lock_timeout_seconds: float = Field(default=10, gt=0, le=3600)
    statement_timeout_seconds: float = Field(default=120, gt=0, le=86400)


class BlobSettings(_Section):
    path: Path = Path("blobs")
    master_key: SecretStr


class Pkcs12Key(_Section):
    kind: Literal["pkcs12"]
    path: Path
    passphrase: SecretStr


class Pkcs11Key(_Section):
    kind: Literal["pkcs11"]
    module: Path
    token_label: str
    pin: SecretStr
    key_label: str
    cert_label: str | None = None
    other_certs: list[Path] = Field(default_factory=list)


class DevelopmentTsa(_Section):
    cert: Path
    key: Path
    key_passphrase: SecretStr
    chain: list[Path] = Field(default_factory=list)


class TsaSettings(_Section):
    urls: list[str] = Field(default_factory=list)
    development: DevelopmentTsa | None = None
    timeout_seconds: float = Field(default=10, gt=0)
    attempts: int = Field(default=3, ge=1, le=10)

    @model_validator(mode="after")
    def _one_source(self) -> TsaSettings:
        if not self.urls and self.development is None:
            raise ValueError("give at least one TSA url, or a development TSA")
        return self


class SigningWorkerSettings(_Section):
    interval_seconds: float = Field(default=2.0, gt=0, le=3600)
    lease_seconds: int = Field(default=120, ge=1, le=3600)
    alert_after_seconds: int = Field(default=600, ge=1)


class SigningSettings(_Section):
    key: Pkcs12Key | Pkcs11Key = Field(discriminator="kind")
    trust_roots: list[Path] = Field(min_length=1)
    revocation: list[Path] = Field(default_factory=list)
    tsa: TsaSettings
    location: str = "日本"
    font: Path | None = None
    worker: SigningWorkerSettings = SigningWorkerSettings()


class SmtpSettings(_Section):
    host: str = "localhost"
    port: int = Field(default=587, ge=1, le=65535)
    starttls: bool = True
    username: str | None = None
    password: SecretStr | None = None
    ca_file: Path | None = None
    timeout_seconds: float = Field(default=30, gt=0)
    attempts: int = Field(default=3, ge=1, le=10)


class MailSettings(_Section):
    maildir: Path = Path("mail")
    sender: str = "keiyaku@localhost"
    transport: Literal["maildir", "smtp"] = "maildir"
    smtp: SmtpSettings = SmtpSettings()
    templates_dir: Path | None = None
    notices_to: str | None = None
    download_valid_days: int = Field(default=14, ge=1, le=90)
    dispatch_interval_seconds: float = Field(default=5, gt=0, le=3600)


class ServerSettings(_Section):
    host: str = "127.0.0.1"
    port: int = Field(default=8080, ge=1, le=65535)
    public_url: str = "http://127.0.0.1:8080"
    trusted_proxies: list[str] = Field(default_factory=list)
    session_key: SecretStr | None = None
    log_format: Literal["json", "text"] = "json"
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    run_jobs: bool = True
    run_pushback: bool = True
    run_signing: bool = True
    # Wrong API tokens one client address may send before it is locked out for a while.
    max_failed_tokens: int = Field(default=20, ge=3, le=1000)
    token_lockout_minutes: int = Field(default=15, ge=1, le=1440)
    # Who sees /metrics and the detailed /healthz: a bearer token and/or client networks.
    operations_token: SecretStr | None = None
    operations_networks: list[str] = Field(default_factory=lambda: ["127.0.0.1/32", "::1/128"])

    @model_validator(mode="after")
    def _check(self) -> ServerSettings:
        import ipaddress

        for entry in [*self.trusted_proxies, *self.operations_networks]:
            ipaddress.ip_network(entry, strict=False)  # ValueError names the bad entry
        if not self.public_url.startswith(("http://", "https://")):
            raise ValueError("public_url must start with http:// or https://")
        return self


class PagesSettings(_Section):
    link_valid_days: int = Field(default=30, ge=1, le=365)
    session_minutes: int = Field(default=60, ge=5, le=1440)
    access_code_min_length: int = Field(default=4, ge=4, le=64)
    max_code_attempts: int = Field(default=5, ge=1, le=20)
    page_dpi: int = Field(default=110, ge=50, le=300)
    render_workers: int = Field(default=2, ge=1, le=32)
    render_seconds: float = Field(default=30, gt=0, le=600)
    render_memory_mb: int = Field(default=512, ge=256, le=65536)
    max_page_pixels: int = Field(default=4_000_000, ge=250_000, le=50_000_000)
    guarantee_entry: Literal["off", "before", "after", "both"] = "both"


class LimitSettings(_Section):
    max_file_mb: int = Field(default=20, ge=1)
    max_envelope_mb: int = Field(default=50, ge=1)
    max_files: int = Field(default=20, ge=5)
    max_parties: int = Field(default=50, ge=17)
    # A PDF whose /OpenAction or /AA runs JavaScript (or launches something): refuse or strip.
    pdf_active_content: Literal["refuse", "strip"] = "refuse"


class OutboxSettings(_Section):
    max_attempts: int = Field(default=8, ge=1, le=100)
    base_delay_seconds: float = Field(default=30, gt=0)
    max_delay_seconds: float = Field(default=6 * 3600, gt=0)
    lease_seconds: float = Field(default=300, ge=1)
    batch_size: int = Field(default=20, ge=1, le=1000)
    poll_seconds: float = Field(default=10, gt=0, le=3600)


SinkEvent = Literal["completed", "declined", "cancelled"]


def _completed_only() -> list[SinkEvent]:
    return ["completed"]


class _SinkSettings(_Section):
    """What every sink has besides its transport (its connector's settings): which envelope
    events it is sent and what it is sent."""

    events: list[SinkEvent] = Field(default_factory=_completed_only, min_length=1)
    content: ContentConfig = ContentConfig()
    # Deliver each renewed copy (new archive timestamp) of a document this sink took; None:
    # when the sink receives documents.
    renewals: bool | None = None

    # Deliver a guarantee reference added or removed after completion as an updated record;
    # None: when the sink's record carries guarantee fields.
    guarantee_updates: bool | None = None

    @property
    def takes_renewals(self) -> bool:
        """Whether renewed copies are delivered to this sink."""
        return self.content.documents if self.renewals is None else self.renewals

    @property
    def takes_guarantee_updates(self) -> bool:
        """Whether guarantee changes after completion are delivered to this sink."""
        if self.guarantee_updates is not None:
            return self.guarantee_updates
        record = self.content.record
        return record is not None and any(
            source.startswith("guarantee") for source in record.fields.values()
        )

    @model_validator(mode="after")
    def _content_is_sendable(self) -> _SinkSettings:
        try:
            check_spec(self.content.spec(None))
        except ConfigError as exc:
            raise ValueError(exc.message_en) from exc
        return self


# Each sink kind: its connector's settings plus the sink's events and content. The connector is
# the first base, which puts the shared keys first and the connector's after them.
class FolderSinkSettings(FolderSinkConfig, _SinkSettings):
    """A folder sink."""


class SftpSinkSettings(SftpSinkConfig, _SinkSettings):
    """An SFTP sink."""


class SoapSinkSettings(SoapSinkConfig, _SinkSettings):
    """A SOAP sink."""


class RestSinkSettings(RestSinkConfig, _SinkSettings):
    """A REST sink."""


SinkSettings = Annotated[
    FolderSinkSettings | SftpSinkSettings | SoapSinkSettings | RestSinkSettings,
    Field(discriminator="kind"),
]
_SINK_NAME = re.compile(r"^[a-z][a-z0-9_-]{0,31}$")


class DemoSettings(_Section):
    output: Path = Path("demo-output")


class _SourceSettings(_Section):
    """What every source has besides its transport: the mapping its records go through."""

    mapping: Path


class FolderSourceSettings(FolderSourceConfig, _SourceSettings):
    """A folder of CSV exports."""


class SftpSourceSettings(SftpSourceConfig, _SourceSettings):
    """CSV exports on an SFTP server."""


SoapDocumentsSettings = Annotated[
    FolderDocumentsConfig | SftpDocumentsConfig, Field(discriminator="kind")
]


class SoapSourceSettings(SoapSourceConfig, _SourceSettings):
    """Awards from a SOAP service."""

    # Where documents the records name by path (not inline) are read: a folder or SFTP server.
    documents: SoapDocumentsSettings | None = None


class ApiSourceSettings(_SourceSettings):
    """Awards pushed to the API (no connector: ``POST /api/v1/awards/NAME``)."""

    kind: Literal["api"]
    xsd: Path | None = None


SourceSettings = Annotated[
    FolderSourceSettings | SftpSourceSettings | SoapSourceSettings | ApiSourceSettings,
    Field(discriminator="kind"),
]


class SigningAuthoritySettings(_Section):
    department: str = Field(default="*", min_length=1)
    max_amount: Decimal | None = Field(default=None, ge=0)
    name: str = Field(min_length=1)
    title: str | None = None
    email: str = Field(pattern=r"^[^@\s]+@[^@\s]+$")


class IntakeSettings(_Section):
    creator: str = Field(default="契約課(自動取込)", min_length=1)
    creator_email: str | None = None
    auto_send: bool = False
    batch_size: int = Field(default=500, ge=1, le=10_000)
    usage_request_business_days: int = Field(default=2, ge=0, le=60)
    signing_business_days: int = Field(default=5, ge=0, le=60)
    signing_authorities: list[SigningAuthoritySettings] = Field(default_factory=list)


class CalendarSettings(_Section):
    closed_days: list[dt.date] = Field(default_factory=list)
    year_end_closure: bool = True


class ArchiveSettings(_Section):
    renew_margin_days: int = Field(default=180, ge=1, le=3650)
    batch_size: int = Field(default=200, ge=1, le=100_000)
    min_extension_days: int = Field(default=30, ge=0, le=3650)
    flagged_algorithms: list[str] = Field(default_factory=list)
    flagged_tsa_certificates: list[str] = Field(default_factory=list)

    @field_validator("flagged_tsa_certificates")
    @classmethod
    def _fingerprints(cls, value: list[str]) -> list[str]:
        cleaned = [v.replace(":", "").strip().lower() for v in value]
        for fingerprint in cleaned:
            if not re.fullmatch(r"[0-9a-f]{64}", fingerprint):
                raise ValueError(f"{fingerprint!r} is not a SHA-256 fingerprint (64 hex digits)")
        return cleaned


class BackupSettings(_Section):
    directory: Path = Path("backups")
    generations: int = Field(default=8, ge=1, le=365)
    pg_dump: str = "pg_dump"
    # Copy each document into directory/blobs as it is stored (随時取得), not only daily.
    mirror_documents: bool = True


# Below this many years a document retention is refused unless confirmed with allow_short:
# 地方自治法 236条 lets money claims of and against the buyer run five years, so a contract is
# kept at least that long, and a typo (0, 1 for 10) must not delete years of contracts.
SHORT_RETENTION_YEARS = 5


class RetentionSettings(_Section):
    documents_years: int | None = Field(default=None, ge=1, le=100)
    count_from: Literal["next_fiscal_year", "date"] = "next_fiscal_year"
    allow_short: bool = False

    @model_validator(mode="after")
    def _not_short(self) -> RetentionSettings:
        years = self.documents_years
        if years is not None and years < SHORT_RETENTION_YEARS and not self.allow_short:
            raise ValueError(
                f"documents_years {years} is under {SHORT_RETENTION_YEARS}: "
                "set allow_short: true if that is really what the buyer's rules say"
            )
        return self


class LoggingSettings(_Section):
    file: Path | None = None
    retention_days: int = Field(default=365, ge=1, le=3650)
    # With file: every line also to backup.directory/logs/<host>/<file name> (随時取得).
    mirror_to_backup: bool = True


class SchedulesSettings(_Section):
    timezone: str = JST_NAME
    # One cron expression per job of gateway.scheduling.JOBS, named by its id (a test checks).
    nightly_pull: str | None = "0 2 * * *"
    deadlines: str | None = "0 8 * * *"
    retimestamp: str | None = "0 3 * * *"
    backup: str | None = "30 1 * * *"
    retention: str | None = "30 4 * * *"
    misfire_grace_seconds: int = Field(default=600, ge=1, le=86_400)
    notice_target: str = "notice"

    @model_validator(mode="after")
    def _check(self) -> SchedulesSettings:
        from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

        from gateway.scheduling import JOB_IDS
        from schedules.runner import cron_trigger

        try:
            ZoneInfo(self.timezone)
        except (ZoneInfoNotFoundError, ValueError) as exc:
            raise ValueError(f"unknown timezone {self.timezone!r}") from exc
        for name in JOB_IDS:
            expression = getattr(self, name)
            if expression is not None:
                try:
                    cron_trigger(expression, self.timezone)
                except ValueError as exc:
                    raise ValueError(f"{name}: not a cron expression: {exc}") from exc
        return self


class StaffSettings(_Section):
    password_min_length: int = Field(default=12, ge=10, le=128)
    # zxcvbn strength (0-4) a staff password needs; 3 refuses common ones like Password123!.
    password_min_score: int = Field(default=3, ge=2, le=4)
    max_failed_logins: int = Field(default=5, ge=3, le=20)
    lockout_minutes: int = Field(default=15, ge=1, le=1440)
    # A staff session unused this long ends; whatever the use, it ends session_hours after login.
    session_idle_minutes: int = Field(default=30, ge=5, le=1440)
    session_hours: int = Field(default=10, ge=1, le=24)
    # CIDR networks allowed to reach the staff pages (/admin) and the API; empty: any.
    allowed_networks: list[str] = Field(default_factory=list)

    @model_validator(mode="after")
    def _networks(self) -> StaffSettings:
        for network in self.allowed_networks:
            try:
                ipaddress.ip_network(network, strict=False)
            except ValueError as exc:
                raise ValueError(f"staff.allowed_networks: not a network: {network!r}") from exc
        return self


class Settings(BaseSettings):
    """Everything the gateway reads from its config file."""

    model_config = SettingsConfigDict(extra="forbid", frozen=True)

    environment: Literal["development", "production"] = "production"
    secrets_file: Path | None = None
    buyer: BuyerSettings
    database: DatabaseSettings = DatabaseSettings()
    blobs: BlobSettings
    signing: SigningSettings
    mail: MailSettings = MailSettings()
    server: ServerSettings = ServerSettings()
    pages: PagesSettings = PagesSettings()
    limits: LimitSettings = LimitSettings()
    demo: DemoSettings = DemoSettings()
    outbox: OutboxSettings = OutboxSettings()
    sinks: dict[str, SinkSettings] = Field(default_factory=dict)
    intake: IntakeSettings = IntakeSettings()
    sources: dict[str, SourceSettings] = Field(default_factory=dict)
    calendar: CalendarSettings = CalendarSettings()
    schedules: SchedulesSettings = SchedulesSettings()
    archive: ArchiveSettings = ArchiveSettings()
    backup: BackupSettings = BackupSettings()
    retention: RetentionSettings = RetentionSettings()
    logging: LoggingSettings = LoggingSettings()
    staff: StaffSettings = StaffSettings()

    @model_validator(mode="after")
    def _source_names(self) -> Settings:
        for name in self.sources:
            if not _SINK_NAME.match(name):
                raise ValueError(f"source name {name!r}: lowercase letters, digits, '-' and '_'")
        return self

    @model_validator(mode="after")
    def _sink_names(self) -> Settings:
        for name in self.sinks:
            # "mail" is the mailer's outbox target; a sink name is a delivery target too.
            if not _SINK_NAME.match(name) or name == "mail":
                raise ValueError(
                    f"sink name {name!r}: lowercase letters, digits, '-' and '_' (not 'mail')"
                )
        return self

    config_dir: Path = Field(default=Path("."), exclude=True)

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # The YAML file is the only source; environment variables enter through ${NAME} only,
        # so what a running gateway uses can always be read off its config file.
        return (init_settings,)

    @model_validator(mode="after")
    def _production_rules(self) -> Settings:
        if self.environment == "production" and self.signing.tsa.development is not None:
            raise ValueError(
                "signing.tsa.development is for development only; set signing.tsa.urls"
            )
        smtp = self.mail.smtp
        if self.environment == "production" and self.mail.transport == "smtp":
            if not smtp.starttls or smtp.username is None or smtp.password is None:
                raise ValueError("production SMTP needs mail.smtp.starttls and username/password")
        return self

    def path(self, value: Path) -> Path:
        """``value`` resolved against the config file's folder."""
        return value if value.is_absolute() else (self.config_dir / value)

    @property
    def database_url(self) -> str:
        """The database URL, with a relative SQLite path resolved against the config folder."""
        url = self.database.url
        prefix = "sqlite:///"
        if url.startswith(prefix) and not url.startswith(prefix + "/") and url != "sqlite://":
            return prefix + str(self.path(Path(url[len(prefix) :])))
        return url


def _read_secrets_file(path: Path) -> dict[str, str]:
    """NAME=value lines read as dotenv reads them (quotes removed, ``export`` and comments
    allowed). Values are taken literally: no ``${OTHER}`` is expanded inside the file, so a
    passphrase holding ``$`` is kept whole and nothing is read from the environment here. A
    NAME without ``=`` is not set."""
    values = dotenv_values(path, encoding="utf-8", interpolate=False)
    return {name: value for name, value in values.items() if value is not None}


def _substitute(node: Any, lookup: Mapping[str, str], missing: set[str]) -> Any:
    if isinstance(node, dict):
        return {k: _substitute(v, lookup, missing) for k, v in node.items()}
    if isinstance(node, list):
        return [_substitute(v, lookup, missing) for v in node]
    if isinstance(node, str):

        def repl(match: re.Match[str]) -> str:
            name = match.group(1)
            if name not in lookup:
                missing.add(name)
                return ""
            return lookup[name]

        return _REF.sub(repl, node)
    return node


def load_settings(path: Path, *, environ: Mapping[str, str] | None = None) -> Settings:
    """Read, substitute and validate the config at ``path``; raise one ``ConfigError`` listing
    every problem."""
    path = Path(path)
    environ = os.environ if environ is None else environ
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except FileNotFoundError as exc:
        raise ConfigError(
            "config.not_found", f"no config file at {path}", f"設定ファイル {path} がありません。"
        ) from exc
    except yaml.YAMLError as exc:
        raise ConfigError(
            "config.yaml",
            f"{path} is not valid YAML: {exc}",
            "設定ファイルの書式が正しくありません。",
        ) from exc
    if not isinstance(raw, dict):
        raise ConfigError(
            "config.yaml", f"{path} must hold a mapping", "設定ファイルの書式が正しくありません。"
        )
    config_dir = path.resolve().parent
    lookup: dict[str, str] = {}
    secrets_file = raw.get("secrets_file")
    if isinstance(secrets_file, str):
        secrets_path = Path(secrets_file)
        secrets_path = secrets_path if secrets_path.is_absolute() else config_dir / secrets_path
        if secrets_path.exists():
            lookup.update(_read_secrets_file(secrets_path))
    lookup.update(environ)  # the environment wins over the file
    missing: set[str] = set()
    data = _substitute(raw, lookup, missing)
    problems = [f"${{{name}}} is not set (environment or secrets_file)" for name in sorted(missing)]
    try:
        settings = Settings(**data, config_dir=config_dir)
    except ValidationError as exc:
        for err in exc.errors():
            where = ".".join(str(p) for p in err["loc"])
            problems.append(f"{where}: {err['msg']}")
        settings = None
    if problems or settings is None:
        raise ConfigError(
            "config.invalid",
            f"{path}: " + "; ".join(problems),
            "設定ファイルに誤りがあります: " + "; ".join(problems),
            details={"problems": problems},
        )
    return settings
