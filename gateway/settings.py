"""The one settings object: read once from ``config.yaml``, validated, passed in.

``${NAME}`` anywhere in a value is replaced by the environment variable NAME, or else by NAME from
the ``secrets_file`` the config names (``keiyaku init`` writes one, mode 0600). Relative paths are
resolved against the config file's folder. Every problem is collected and reported at once.
Secrets never have defaults; outside ``environment: development`` the development TSA and the
development PKI are refused.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, model_validator
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from core.errors import ConfigError

_REF = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class BuyerSettings(_Section):
    name: str = Field(min_length=1)
    department: str = "契約課"


class DatabaseSettings(_Section):
    url: str = "sqlite:///keiyaku.db"


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


class SigningSettings(_Section):
    key: Pkcs12Key | Pkcs11Key = Field(discriminator="kind")
    trust_roots: list[Path] = Field(min_length=1)
    revocation: list[Path] = Field(default_factory=list)
    tsa: TsaSettings
    location: str = "日本"
    font: Path | None = None


class MailSettings(_Section):
    maildir: Path = Path("mail")
    sender: str = "keiyaku@localhost"


class LimitSettings(_Section):
    max_file_mb: int = Field(default=20, ge=1)
    max_envelope_mb: int = Field(default=50, ge=1)
    max_files: int = Field(default=20, ge=5)
    max_parties: int = Field(default=50, ge=17)


class DemoSettings(_Section):
    output: Path = Path("demo-output")


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
    limits: LimitSettings = LimitSettings()
    demo: DemoSettings = DemoSettings()

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
    values: dict[str, str] = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        line = line.strip()
        if not line or line.startswith("#") or "=" not in line:
            continue
        key, _, value = line.partition("=")
        values[key.strip()] = value.strip()
    return values


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
