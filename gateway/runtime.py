"""Assembles the running gateway from settings: database, blob store, signing engine."""

from __future__ import annotations

import gc
import hashlib
import hmac
import os
import re
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from asn1crypto import x509
from pyhanko.keys import load_cert_from_pemder
from sqlalchemy import Engine
from sqlalchemy.orm import Session, sessionmaker

from core.blobs import BlobStore
from core.envelopes.certificate import find_cjk_font
from core.envelopes.links import AccessCodePolicy
from core.envelopes.notify import MailObserver
from core.errors import ConfigError
from core.records.audit import record_settings
from core.rendering import RenderBudget, RenderPool
from core.runtime import MB, Limits, Runtime
from core.signing import (
    RevocationData,
    SigningEngine,
    SigningKey,
    TimestampService,
    load_pkcs11_signer,
    load_pkcs12_signer,
)
from core.staged_blobs import staged_reader
from core.storage import create_database_engine, make_session_factory, migrate
from gateway.settings import Pkcs12Key, Settings
from gateway.sinks import pushback_observer


@dataclass
class Gateway:
    """One process's view of the gateway: engine, sessions and the services' runtime."""

    settings: Settings
    engine: Engine
    sessions: sessionmaker[Session]
    runtime: Runtime

    def close(self) -> None:
        """Release the signing engine's resources and the database connections."""
        self.runtime.signing.close()
        if self.runtime.renderer is not None:
            self.runtime.renderer.close()
        self.engine.dispose()


def load_trust_roots(settings: Settings) -> list[x509.Certificate]:
    """The configured trust roots, parsed."""
    roots = []
    for path in settings.signing.trust_roots:
        full = settings.path(path)
        try:
            roots.append(load_cert_from_pemder(str(full)))  # type: ignore[no-untyped-call]
        except (OSError, ValueError) as exc:
            raise ConfigError(
                "config.trust_root",
                f"cannot read trust root {full}: {exc}",
                f"信頼するルート証明書 {full} を読み込めません。",
            ) from exc
    return roots


def build_signing_key(settings: Settings) -> SigningKey:
    """The gateway's signing key from PKCS#12 or PKCS#11, as configured."""
    key = settings.signing.key
    if isinstance(key, Pkcs12Key):
        return load_pkcs12_signer(
            settings.path(key.path), key.passphrase.get_secret_value().encode()
        )
    return load_pkcs11_signer(
        module_path=str(settings.path(key.module)),
        token_label=key.token_label,
        pin=key.pin.get_secret_value(),
        key_label=key.key_label,
        cert_label=key.cert_label,
        other_certs=[settings.path(p) for p in key.other_certs],
    )


def build_timestamps(settings: Settings) -> TimestampService:
    """The TSA list with failover, or the in-process development TSA."""
    tsa = settings.signing.tsa
    if tsa.urls:
        return TimestampService.from_urls(
            tsa.urls, timeout=tsa.timeout_seconds, attempts=tsa.attempts
        )
    dev = tsa.development
    assert dev is not None  # settings validation guarantees one of the two
    return TimestampService.development(
        tsa_cert_path=settings.path(dev.cert),
        tsa_key_path=settings.path(dev.key),
        key_passphrase=dev.key_passphrase.get_secret_value().encode(),
        chain_paths=[settings.path(p) for p in dev.chain],
    )


def build_signing_engine(settings: Settings) -> SigningEngine:
    """The signing engine for these settings."""
    # Text-box values are Japanese: an explicitly configured font, else an installed IPAex/IPA.
    font = settings.path(settings.signing.font) if settings.signing.font else find_cjk_font()
    return SigningEngine(
        key=build_signing_key(settings),
        timestamps=build_timestamps(settings),
        trust_roots=load_trust_roots(settings),
        font_path=font,
        location=settings.signing.location,
        revinfo=RevocationData.from_files(
            crl_paths=[settings.path(p) for p in settings.signing.revocation],
            allow_fetching=True,
        ),
    )


def document_mirror(settings: Settings) -> Path | None:
    """Where each document is copied as it is stored: the backup folder's ``blobs/`` (the
    daily backup's own copy, so it then finds nothing left to copy); None when switched off."""
    if not settings.backup.mirror_documents:
        return None
    return settings.path(settings.backup.directory) / "blobs"


def database_engine(settings: Settings) -> Engine:
    """The configured database, with the configured lock and statement timeouts."""
    return create_database_engine(
        settings.database_url,
        lock_timeout=settings.database.lock_timeout_seconds,
        statement_timeout=settings.database.statement_timeout_seconds,
    )


def open_gateway(settings: Settings, *, migrate_schema: bool = True) -> Gateway:
    """Connect to the database (migrating it), open the blob store and load the signing key."""
    engine = database_engine(settings)
    if migrate_schema:
        migrate(engine)
    limits = settings.limits
    runtime = Runtime(
        blobs=BlobStore(
            settings.path(settings.blobs.path),
            master_key(settings),
            mirror=document_mirror(settings),
        ),
        signing=build_signing_engine(settings),
        buyer_name=settings.buyer.name,
        limits=Limits(
            max_file_bytes=limits.max_file_mb * MB,
            max_envelope_bytes=limits.max_envelope_mb * MB,
            max_files=limits.max_files,
            max_parties=limits.max_parties,
            pdf_active_content=limits.pdf_active_content,
        ),
        # Each envelope event adds its mails to the outbox in the same transaction.
        # Push-back: one delivery per subscribed sink, in the same transaction (gateway.sinks).
        observers=(
            MailObserver(fallback_sender=settings.mail.notices_to),
            pushback_observer(settings),
        ),
        renderer=render_pool(settings),
    )
    sessions = make_session_factory(engine)
    # an approval's signature blob may still be only in its database row (core.staged_blobs)
    runtime.blobs.fallback = staged_reader(sessions)
    with sessions() as session:
        # Every process records the configuration it starts with when it differs from the
        # last one recorded, so a changed setting is in the audit trail with when and where.
        if record_settings(session=session, settings=settings_snapshot(settings), actor=_node()):
            session.commit()
    return Gateway(settings, engine, sessions, runtime)


def render_pool(settings: Settings) -> RenderPool:
    """The page renderer's worker processes, within the configured budget (started on first
    use, so a command that never renders starts none)."""
    pages = settings.pages
    return RenderPool(
        RenderBudget(
            seconds=pages.render_seconds,
            memory_bytes=pages.render_memory_mb * MB,
            max_page_pixels=pages.max_page_pixels,
            workers=pages.render_workers,
        )
    )


def _node() -> str:
    return f"system:{socket.gethostname()}:{os.getpid()}"


_URL_PASSWORD = re.compile(r"(://[^/:@\s]+:)[^@/\s]+@")


def settings_snapshot(settings: Settings) -> dict[str, Any]:
    """The settings as JSON for the audit trail, every secret masked: pydantic prints SecretStr
    as stars, and a password inside a URL (``postgresql://user:pw@host``) becomes ``***``."""

    def mask(value: Any) -> Any:
        if isinstance(value, dict):
            return {k: mask(v) for k, v in value.items()}
        if isinstance(value, list):
            return [mask(v) for v in value]
        if isinstance(value, str):
            return _URL_PASSWORD.sub(r"\1***@", value)
        return value

    snapshot: dict[str, Any] = mask(settings.model_dump(mode="json"))
    return snapshot


def access_code_policy(settings: Settings) -> AccessCodePolicy:
    """How access codes are hashed and checked.

    The pepper is derived from the blob master key: it stays out of the database like the key,
    and losing it would lose the documents anyway, so it adds no new secret to keep.
    """
    master = master_key(settings)
    pepper = hmac.new(master, b"keiyaku-gateway access-code pepper v1", hashlib.sha256).digest()
    return AccessCodePolicy(
        pepper=pepper,
        min_length=settings.pages.access_code_min_length,
        max_attempts=settings.pages.max_code_attempts,
    )


def master_key(settings: Settings) -> bytes:
    """The configured blob master key, checked (64 hex characters)."""
    return _master_key(settings.blobs.master_key.get_secret_value())


def _master_key(text: str) -> bytes:
    try:
        key = bytes.fromhex(text.strip())
    except ValueError as exc:
        raise ConfigError(
            "config.master_key",
            "blobs.master_key must be 64 hex characters",
            "blobs.master_key は16進数64文字で指定してください。",
        ) from exc
    if len(key) != 32:
        raise ConfigError(
            "config.master_key",
            "blobs.master_key must be 64 hex characters",
            "blobs.master_key は16進数64文字で指定してください。",
        )
    return key


def settle_heap() -> int:
    """Take what start-up left alive out of the cycle collector's sight; the number of objects
    frozen. Call once a long-running process is built, before it serves.

    A full collection walks every object the collector tracks, with the GIL held: with the
    served app's heap (about 300,000 objects: modules, the app, the signing engine, caches)
    that was about 145 ms during which every request in flight stood still, and it came
    whenever the collector judged a full pass due (about once every 35 approvals). Frozen
    (``gc.freeze``), those objects are skipped, so a full pass walks only what was allocated
    since. Garbage is collected first, so only live objects are frozen; a frozen object that
    later becomes garbage in a reference cycle is never reclaimed, so at worst what start-up
    built stays allocated for the life of the process, which most of it does anyway."""
    gc.collect()
    gc.freeze()
    return gc.get_freeze_count()
