"""Settings: ${ENV} references, secrets file, collected errors, and a complete example config."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from core.errors import ConfigError
from gateway.settings import Settings, load_settings

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "config.example.yaml"
ENV = {"KEIYAKU_MASTER_KEY": "ab" * 32, "KEIYAKU_SIGNING_PASSPHRASE": "pass"}


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "config.yaml"
    path.write_text(text, encoding="utf-8")
    return path


def test_example_loads_with_its_secrets_set(tmp_path: Path) -> None:
    settings = load_settings(_write(tmp_path, EXAMPLE.read_text(encoding="utf-8")), environ=ENV)
    assert settings.blobs.master_key.get_secret_value() == "ab" * 32
    assert settings.path(settings.blobs.path) == tmp_path / "blobs"
    assert settings.database_url == f"sqlite:///{tmp_path / 'keiyaku.db'}"
    assert "ab" * 32 not in repr(settings)  # secrets never printed


def _leaf_keys(node: object, prefix: str = "") -> list[str]:
    if isinstance(node, dict):
        keys = []
        for key, value in node.items():
            keys.append(prefix + key)
            keys += _leaf_keys(value, prefix + key + ".")
        return keys
    return []


def _model_keys(model: type, prefix: str = "") -> list[str]:
    keys = []
    for name, field in model.model_fields.items():  # type: ignore[attr-defined]
        if field.exclude:
            continue
        keys.append(prefix + name)
        annotation = field.annotation
        args = getattr(annotation, "__args__", ())
        candidates = [annotation, *args]
        for candidate in candidates:
            if isinstance(candidate, type) and hasattr(candidate, "model_fields"):
                if name == "key":  # a union of key kinds: the example shows pkcs12 live
                    if candidate.__name__ != "Pkcs12Key":
                        continue
                keys += _model_keys(candidate, prefix + name + ".")
    return keys


def test_example_mentions_every_setting_with_a_comment() -> None:
    text = EXAMPLE.read_text(encoding="utf-8")
    present = set(_leaf_keys(yaml.safe_load(text)))
    expected = set(_model_keys(Settings))
    assert expected - present == set(), "settings missing from config.example.yaml"
    lines = text.splitlines()
    for index, line in enumerate(lines):
        match = re.match(r"^(\s*)([a-z_]+):", line)
        if not match:
            continue
        above = lines[index - 1].strip() if index else ""
        assert above.startswith("#") or "#" in line, (
            f"line {index + 1} ({line.strip()}) lacks a comment"
        )
    # The PKCS#11 alternative is documented too.
    for key in ("module", "token_label", "pin", "key_label", "cert_label", "other_certs"):
        assert f"#   {key}:" in text or f"#   {key}: " in text


def test_secrets_come_from_the_secrets_file_and_env_wins(tmp_path: Path) -> None:
    (tmp_path / "secrets.env").write_text(
        "# comment\nKEIYAKU_MASTER_KEY=" + "cd" * 32 + "\nKEIYAKU_SIGNING_PASSPHRASE=file\n"
    )
    path = _write(tmp_path, EXAMPLE.read_text(encoding="utf-8"))
    assert load_settings(path, environ={}).blobs.master_key.get_secret_value() == "cd" * 32
    env = {"KEIYAKU_MASTER_KEY": "ef" * 32}
    assert load_settings(path, environ=env).blobs.master_key.get_secret_value() == "ef" * 32


def test_all_problems_are_reported_at_once(tmp_path: Path) -> None:
    text = EXAMPLE.read_text(encoding="utf-8").replace("max_files: 20", "max_files: 2")
    text = text.replace("environment: development", "environment: development\nunknown_key: 1")
    with pytest.raises(ConfigError) as info:
        load_settings(_write(tmp_path, text), environ={})
    problems = info.value.details["problems"]
    joined = "\n".join(problems)
    assert "${KEIYAKU_MASTER_KEY} is not set" in joined
    assert "${KEIYAKU_SIGNING_PASSPHRASE} is not set" in joined
    assert "limits.max_files" in joined
    assert "unknown_key" in joined


def test_production_refuses_the_development_tsa(tmp_path: Path) -> None:
    text = EXAMPLE.read_text(encoding="utf-8").replace(
        "environment: development", "environment: production"
    )
    with pytest.raises(ConfigError) as info:
        load_settings(_write(tmp_path, text), environ=ENV)
    assert "development only" in info.value.message_en


def test_missing_file_and_bad_yaml(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="config.not_found"):
        load_settings(tmp_path / "nope.yaml")
    with pytest.raises(ConfigError, match="config.yaml"):
        load_settings(_write(tmp_path, "a: [unclosed"))
