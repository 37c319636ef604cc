"""Intake wiring: sources, mappings, the signing-authority register and the intake policy,
built from the settings for the CLI, the API push and the scheduled jobs."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from connectors.base import RawRecord, Source
from connectors.csv import CsvFormat, read_csv
from core.business_days import BusinessCalendar
from core.drafts import SigningAuthority
from core.errors import ConfigError, NotFoundError
from core.intake.awards import (
    award_state_ja,
    dismiss_award,
    release_award,
    set_award_access_code,
    waiting_reason,
)
from core.intake.policy import IntakePolicy
from core.timezone import JST
from gateway.settings import (
    ApiSourceSettings,
    FolderSourceSettings,
    Settings,
    SftpSourceSettings,
    SoapSourceSettings,
)
from mapping import MappingSpecError, SourceMapping, load_mapping
from schedules.intake import SourceSpec, remap_award

if TYPE_CHECKING:
    from sqlalchemy.orm import Session

    from core.model import Award
    from core.runtime import Runtime

SAMPLE_MAPPINGS = Path(__file__).parent / "mappings"


def calendar(settings: Settings) -> BusinessCalendar:
    """The office calendar of these settings."""
    return BusinessCalendar.with_closed_days(
        settings.calendar.closed_days, year_end_closure=settings.calendar.year_end_closure
    )


def authorities(settings: Settings) -> list[SigningAuthority]:
    """The signing-authority register."""
    return [
        SigningAuthority(
            department=a.department,
            max_amount=a.max_amount,
            name=a.name,
            email=a.email,
            title=a.title,
        )
        for a in settings.intake.signing_authorities
    ]


def policy(settings: Settings, *, access_codes: Any = None) -> IntakePolicy:
    """The intake policy (``access_codes``: the gateway's access-code policy, for usage
    requests that carry one)."""
    intake = settings.intake
    return IntakePolicy(
        creator=intake.creator,
        creator_email=intake.creator_email,
        auto_send=intake.auto_send,
        calendar=calendar(settings),
        usage_request_business_days=intake.usage_request_business_days,
        signing_business_days=intake.signing_business_days,
        access_codes=access_codes,
    )


def source_settings(settings: Settings, name: str) -> Any:
    """One source's settings, or ``config.unknown_source``."""
    try:
        return settings.sources[name]
    except KeyError as exc:
        known = ", ".join(sorted(settings.sources)) or "none"
        raise ConfigError(
            "config.unknown_source",
            f"no source {name!r} in the config (known: {known})",
            f"取込元「{name}」は設定されていません。",
        ) from exc


def load_source_mapping(settings: Settings, name: str) -> SourceMapping:
    """Read and check the mapping file of one source."""
    path = settings.path(source_settings(settings, name).mapping)
    return read_mapping(path)


def read_mapping(path: Path) -> SourceMapping:
    """Read and check one mapping file."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise MappingSpecError(
            "mapping.unreadable",
            f"cannot read mapping {path}: {exc}",
            f"マッピング定義 {path} を読み込めません。",
        ) from exc
    return load_mapping(text, name=str(path))


def _kind(mapping: SourceMapping) -> str:
    return mapping.kind


def open_source(settings: Settings, name: str, mapping: SourceMapping) -> Source:
    """A connector for one configured source."""
    config = source_settings(settings, name)
    limit = settings.limits.max_file_mb * 1024 * 1024
    if isinstance(config, FolderSourceSettings | SftpSourceSettings):
        return config.open(
            name=name,
            resolve=settings.path,
            csv_format=CsvFormat.from_options(mapping.format),
            max_document_bytes=limit,
        )
    if isinstance(config, SoapSourceSettings):
        documents = config.documents
        return config.open(
            name=name,
            resolve=settings.path,
            documents=None
            if documents is None
            else documents.open(name=name, resolve=settings.path, max_document_bytes=limit),
        )
    raise ConfigError(
        "config.source_not_pulled",
        f"source {name!r} is pushed (kind api); it cannot be pulled",
        f"取込元「{name}」はAPIで受け付ける取込元のため、取得処理はありません。",
    )


def source_spec(settings: Settings, name: str) -> SourceSpec:
    """What the sync pipeline needs for one source."""
    mapping = load_source_mapping(settings, name)

    def opener() -> Source:
        return open_source(settings, name, mapping)

    return SourceSpec(name=name, kind=_kind(mapping), mapping=mapping, open=opener)


def configured_spec(settings: Settings, name: str) -> SourceSpec:
    """The source's spec for a staff decision on one of its awards (re-map): a source no longer
    in the config is ``not_found.source`` (the caller's mistake, not the server's)."""
    if name not in settings.sources:
        raise NotFoundError(
            "not_found.source",
            f"no source {name!r} in the config",
            f"取込元「{name}」は設定されていません。",
        )
    return source_spec(settings, name)


def pulled_sources(settings: Settings) -> list[str]:
    """Names of the sources that are pulled (every kind but api)."""
    return [n for n, s in settings.sources.items() if not isinstance(s, ApiSourceSettings)]


def sample_records(mapping: SourceMapping, sample: Path, *, source: str) -> Iterator[RawRecord]:
    """The records of a local sample file, read the way the source would read it."""
    if mapping.format.get("type", "csv") == "records":
        import json

        data = json.loads(sample.read_text(encoding="utf-8"))
        items = data if isinstance(data, list) else [data]
        from connectors.base import Provenance

        for index, item in enumerate(items, start=1):
            yield RawRecord(dict(item), Provenance(source=source, file=sample.name, line=index))
        return
    with sample.open("rb") as stream:
        yield from read_csv(
            stream, CsvFormat.from_options(mapping.format), source=source, file=sample.name
        )


def award_json(award: Any) -> dict[str, Any]:
    """One award as the CLI and the API show it, with why it waits and what releases it."""
    why = waiting_reason(award)
    return {
        "source": award.source,
        "award_id": award.award_id,
        "title": award.title,
        "state": award.state.value,
        "state_ja": award_state_ja(award.state),
        "amount": None if award.amount is None else str(award.amount),
        "award_date": award.award_date.isoformat() if award.award_date else None,
        "counterparty": award.counterparty,
        "corporate_number": award.corporate_number,
        "contractor_id": award.contractor_id,
        "envelope_id": award.envelope_id,
        "usage_request_due": award.usage_request_due.isoformat()
        if award.usage_request_due
        else None,
        "signing_due": award.signing_due.isoformat() if award.signing_due else None,
        "waiting": None
        if why is None
        else {
            "code": why.code,
            "reason": why.reason,
            "reason_ja": why.reason_ja,
            "release_ja": why.release_ja,
        },
        "file": award.file,
        "line": award.line,
        "updated_at": award.updated_at.astimezone(JST).strftime("%Y-%m-%d %H:%M:%S JST"),
    }


AwardAction = Literal["release", "remap", "set-code", "dismiss"]


@dataclass(frozen=True)
class AwardDecision:
    """Staff's decision on one award, as the API, the CLI and the staff page take it: which
    award, who decided, and what the action needs (the contractor staff confirmed for
    ``release``, the signer's code for ``set-code``, the reason for ``dismiss``)."""

    source: str
    award_id: str
    actor: str
    contractor_id: str | None = None
    code: str = ""
    reason: str = ""


def _policy(settings: Settings) -> IntakePolicy:
    from gateway.runtime import access_code_policy

    return policy(settings, access_codes=access_code_policy(settings))


def _release(settings: Settings, runtime: Runtime, session: Session, d: AwardDecision) -> Award:
    return release_award(
        session=session, runtime=runtime, policy=_policy(settings), source=d.source,
        award_id=d.award_id, actor=d.actor, contractor_id=d.contractor_id,
    )  # fmt: skip


def _remap(settings: Settings, runtime: Runtime, session: Session, d: AwardDecision) -> Award:
    return remap_award(
        session=session, runtime=runtime, policy=_policy(settings),
        spec=configured_spec(settings, d.source), award_id=d.award_id, actor=d.actor,
        authorities=authorities(settings),
    )  # fmt: skip


def _set_code(settings: Settings, runtime: Runtime, session: Session, d: AwardDecision) -> Award:
    return set_award_access_code(
        session=session, runtime=runtime, policy=_policy(settings), source=d.source,
        award_id=d.award_id, actor=d.actor, code=d.code,
    )  # fmt: skip


def _dismiss(settings: Settings, runtime: Runtime, session: Session, d: AwardDecision) -> Award:
    return dismiss_award(
        session=session, runtime=runtime, source=d.source, award_id=d.award_id,
        actor=d.actor, reason=d.reason,
    )  # fmt: skip


AWARD_ACTIONS: dict[AwardAction, Callable[[Settings, Runtime, Session, AwardDecision], Award]] = {
    "release": _release,
    "remap": _remap,
    "set-code": _set_code,
    "dismiss": _dismiss,
}


def decide_award(
    *,
    settings: Settings,
    runtime: Runtime,
    session: Session,
    action: AwardAction,
    decision: AwardDecision,
) -> Award:
    """Apply staff's decision on one award (audited by the service it calls) and commit:
    release, re-map with the source's current mapping, set the signer's code and send, or
    dismiss."""
    award = AWARD_ACTIONS[action](settings, runtime, session, decision)
    session.commit()
    return award
