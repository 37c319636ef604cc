"""A changed configuration is an audit event: what changed, old and new, and no secret."""

from __future__ import annotations

import json
from pathlib import Path

from sqlalchemy import select

from core.model import AuditEvent
from core.records.audit import SETTINGS_ACTION, verify_chain
from core.signing.devpki import DevPki
from gateway.runtime import open_gateway
from gateway.settings import load_settings
from tests.fixtures.gateway import SECRETS, write_config


def _settings_events(config: Path, environ: dict[str, str]) -> list[AuditEvent]:
    gateway = open_gateway(load_settings(config, environ=environ))
    try:
        with gateway.sessions() as session:
            events = session.scalars(
                select(AuditEvent)
                .where(AuditEvent.action == SETTINGS_ACTION)
                .order_by(AuditEvent.id)
            ).all()
            assert verify_chain(session=session).ok
            return list(events)
    finally:
        gateway.close()


def test_a_changed_setting_is_recorded_once_with_old_and_new(
    tmp_path: Path, devpki: DevPki
) -> None:
    url = f"sqlite:///{tmp_path / 'k.db'}"
    config = write_config(tmp_path, devpki, database_url=url)
    first = _settings_events(config, SECRETS)
    assert len(first) == 1 and first[0].detail["first"] is True
    assert first[0].actor.startswith("system:")

    # the same configuration again (a restart, another node): nothing new
    assert len(_settings_events(config, SECRETS)) == 1

    config.write_text(
        config.read_text(encoding="utf-8").replace('name: "開発市"', 'name: "開発市役所"'),
        encoding="utf-8",
    )
    events = _settings_events(config, SECRETS)
    assert len(events) == 2
    assert events[1].detail["changed"] == [
        {"key": "buyer.name", "old": "開発市", "new": "開発市役所"}
    ]


def test_secrets_stay_out_of_the_recorded_settings(tmp_path: Path, devpki: DevPki) -> None:
    url = f"sqlite:///{tmp_path / 'k.db'}"
    config = write_config(
        tmp_path,
        devpki,
        database_url=url,
        extra='sinks:\n  finance:\n    kind: rest\n    url: "https://svc:hunter2pass@finance.example.jp/in"\n'
        '    hmac_secret: "s3cret-hmac-value-0123"\n',
    )
    environ = dict(SECRETS)
    events = _settings_events(config, environ)
    text = json.dumps(events[-1].detail, ensure_ascii=False)
    for secret in (*SECRETS.values(), "hunter2pass", "s3cret-hmac-value-0123"):
        assert secret not in text
    assert "https://svc:***@finance.example.jp/in" in text

    # a changed secret is not shown, and the unchanged masked value records nothing new
    environ["TEST_SESSION_KEY"] = "33" * 32
    assert len(_settings_events(config, environ)) == len(events)
