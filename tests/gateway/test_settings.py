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
ENV = {
    "KEIYAKU_MASTER_KEY": "ab" * 32,
    "KEIYAKU_SIGNING_PASSPHRASE": "pass",
    "KEIYAKU_SESSION_KEY": "cd" * 32,
}


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
    if isinstance(node, list):  # a list of sections (e.g. the signing authorities): every item
        return [key for item in node for key in _leaf_keys(item, prefix)]
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
        "# comment\nKEIYAKU_MASTER_KEY="
        + "cd" * 32
        + "\nKEIYAKU_SIGNING_PASSPHRASE=file\nKEIYAKU_SESSION_KEY="
        + "ef" * 32
        + "\n"
    )
    path = _write(tmp_path, EXAMPLE.read_text(encoding="utf-8"))
    assert load_settings(path, environ={}).blobs.master_key.get_secret_value() == "cd" * 32
    env = {"KEIYAKU_MASTER_KEY": "ef" * 32}
    assert load_settings(path, environ=env).blobs.master_key.get_secret_value() == "ef" * 32


def test_the_secrets_file_is_read_as_dotenv_reads_it(tmp_path: Path) -> None:
    # Quotes are removed, `export` is allowed, an unquoted value ends at " #", and nothing is
    # expanded: the hand-written reader before python-dotenv kept quotes and comments in the
    # value and read `export NAME` as the name (CHANGELOG, issue 18).
    (tmp_path / "secrets.env").write_text(
        "# comment\n"
        'KEIYAKU_MASTER_KEY="' + "cd" * 32 + '"\n'
        "export KEIYAKU_SIGNING_PASSPHRASE=pa$$word # the PKI's\n"
        "KEIYAKU_SESSION_KEY='" + "ef" * 32 + "'\n"
        "KEIYAKU_NOT_SET\n"
        "KEIYAKU_EXTRA=a#b\n",
        encoding="utf-8",
    )
    path = _write(tmp_path, EXAMPLE.read_text(encoding="utf-8"))
    settings = load_settings(path, environ={})
    assert settings.blobs.master_key.get_secret_value() == "cd" * 32
    passphrase = settings.signing.key.passphrase.get_secret_value()  # type: ignore[union-attr]
    assert passphrase == "pa$$word"
    assert settings.server.session_key is not None
    assert settings.server.session_key.get_secret_value() == "ef" * 32
    from gateway.settings import _read_secrets_file

    read = _read_secrets_file(tmp_path / "secrets.env")
    assert "KEIYAKU_NOT_SET" not in read  # a name without "=" sets nothing
    assert read["KEIYAKU_EXTRA"] == "a#b"  # "#" starts a comment only after a space


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


def test_example_documents_every_source_kind() -> None:
    """Each source kind's settings appear, live (the folder source) or in the commented
    alternatives, so an admin can see every key of every kind."""
    import typing

    from gateway.settings import SourceSettings

    text = EXAMPLE.read_text(encoding="utf-8")
    live = yaml.safe_load(text)["sources"]
    live_keys = {key for source in live.values() for key in _leaf_keys(source)}
    commented = set(re.findall(r"^\s*#\s+([a-z_]+):", text, re.M))
    variants = typing.get_args(typing.get_args(SourceSettings)[0])
    assert {v.model_fields["kind"].annotation.__args__[0] for v in variants} == {
        "folder",
        "sftp",
        "soap",
        "api",
    }
    for variant in variants:
        for key in _model_keys(variant):
            top = key.split(".")[0]
            assert key in live_keys or top in commented, f"{variant.__name__}.{key} undocumented"


def _commented_sinks(text: str) -> dict[str, object]:
    """The sink kinds shown commented out under `sinks:`, uncommented and parsed."""
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("  # Other kinds"))
    block = []
    for line in lines[start + 1 :]:
        if not line.startswith("  #   "):
            break
        block.append(line[4:])
    return yaml.safe_load("\n".join(block))  # type: ignore[no-any-return]


def test_example_documents_every_sink_kind_and_its_alternatives_load() -> None:
    """Each sink kind's settings appear live (folder) or in the commented alternatives, and
    those alternatives, uncommented, are valid sink settings."""
    import typing

    from pydantic import TypeAdapter

    from gateway.settings import SinkSettings

    text = EXAMPLE.read_text(encoding="utf-8")
    live = yaml.safe_load(text)["sinks"]
    commented = _commented_sinks(text)
    assert {s["kind"] for s in commented.values()} == {"sftp", "soap", "rest"}  # type: ignore[index]
    substituted = yaml.safe_load(
        re.sub(r"\$\{[A-Z_]+\}", "x" * 32, yaml.safe_dump(commented, allow_unicode=True))
    )
    parsed = TypeAdapter(dict[str, SinkSettings]).validate_python(substituted)
    assert {type(s).__name__ for s in parsed.values()} == {
        "SftpSinkSettings",
        "SoapSinkSettings",
        "RestSinkSettings",
    }
    shared = {key for sink in live.values() for key in _leaf_keys(sink)}  # events, content.*
    variants = typing.get_args(typing.get_args(SinkSettings)[0])
    assert len(variants) == 4
    for variant in variants:
        kind = variant.model_fields["kind"].annotation.__args__[0]
        shown = {
            key
            for sink in [*live.values(), *commented.values()]
            if sink["kind"] == kind  # type: ignore[index]
            for key in _leaf_keys(sink)
        }
        for key in _model_keys(variant):
            assert key in shown or key in shared, f"{variant.__name__}.{key} undocumented"


def test_sink_settings_are_checked_when_loading(tmp_path: Path) -> None:
    text = EXAMPLE.read_text(encoding="utf-8")
    bad = text.replace("契約番号: management_number", "契約番号: contract_no").replace(
        '      directory: "{management_number}"', '      directory: "{nope}"'
    )
    with pytest.raises(ConfigError) as info:
        load_settings(_write(tmp_path, bad), environ=ENV)
    joined = "\n".join(info.value.details["problems"])
    assert "sinks.finance" in joined and "contract_no" in joined
    assert "sinks.documents" in joined and "'nope'" in joined
    mail = text.replace("  finance:\n    # A folder", "  mail:\n    # A folder")
    with pytest.raises(ConfigError, match="'mail'"):
        load_settings(_write(tmp_path, mail), environ=ENV)


def test_the_contact_block_settings_refuse_a_broken_line_and_a_bad_address(tmp_path: Path) -> None:
    example = EXAMPLE.read_text(encoding="utf-8")
    settings = load_settings(_write(tmp_path, example), environ=ENV)
    assert settings.buyer.contact.department == "総務部 契約課"
    assert settings.buyer.contact.email is None  # replies then go to mail.sender
    broken = example.replace("    email: null\n", '    email: "not an address"\n', 1).replace(
        'department: "総務部 契約課"', 'department: "総務部\\n契約課"'
    )
    with pytest.raises(ConfigError) as info:
        load_settings(_write(tmp_path, broken), environ=ENV)
    assert "buyer.contact.email" in str(info.value)
    assert "buyer.contact.department" in str(info.value) and "one line" in str(info.value)
