"""docs/mapping.md documents every registered transform, and its YAML examples load."""

from __future__ import annotations

import re
from pathlib import Path

from mapping import load_mapping, transform_names
from mapping.spec import AWARD_KEYS, CONDITION_OPS, FORMAT_KEYS, USAGE_KEYS, VALUE_KEYS

DOC = Path(__file__).resolve().parents[2] / "docs" / "mapping.md"


def test_every_transform_has_a_section() -> None:
    text = DOC.read_text(encoding="utf-8")
    documented = set(re.findall(r"^### `([a-z_]+)`$", text, re.M))
    assert set(transform_names()) - documented == set()
    assert documented - set(transform_names()) == set(), "documented but not registered"


def test_every_key_is_documented() -> None:
    text = DOC.read_text(encoding="utf-8")
    for key in FORMAT_KEYS | AWARD_KEYS | USAGE_KEYS | VALUE_KEYS | CONDITION_OPS:
        assert f"`{key}" in text, key


def test_worked_examples_load() -> None:
    text = DOC.read_text(encoding="utf-8")
    blocks = re.findall(r"```yaml\n(.*?)```", text, re.S)
    complete = [b for b in blocks if b.startswith("# ")]
    assert len(complete) >= 4  # registry, usage requests, headerless portal, CP932 municipal
    for block in complete:
        load_mapping(block, name="docs/mapping.md")
