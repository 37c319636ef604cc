"""The JSON create's base64 decoding, a chunk at a time: the very bytes, and the very refusals,
of ``base64.b64decode(..., validate=True)``."""

from __future__ import annotations

import base64
import binascii
import secrets

import pytest

from gateway.api import envelopes


def _whole(text: str) -> bytes | None:
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        return None


def _chunked(text: str) -> bytes | None:
    try:
        return envelopes._b64decode(text)
    except (binascii.Error, ValueError):
        return None


def _texts() -> list[str]:
    valid = [base64.b64encode(secrets.token_bytes(n)).decode() for n in range(0, 40)]
    broken = []
    for text in valid[1:]:
        for at in range(len(text) + 1):
            broken += [
                text[:at] + "=" + text[at:],  # padding inside, at every chunk position
                text[:at] + "==" + text[at:],
                text[:at] + "\n" + text[at:],  # a line break: not in the alphabet
                text[:at] + "é" + text[at:],  # not ASCII
                text[:at] + "-" + text[at:],  # the URL-safe alphabet
            ]
        broken += [text[:-1], text + "A", "=" + text]
        broken += [text + "=" * n for n in range(1, 7)]  # strict decoding takes some of these
    return valid + broken


@pytest.mark.parametrize("chunk", [4, 8, 12, 1 << 20])
def test_chunked_decoding_is_strict_decoding(monkeypatch: pytest.MonkeyPatch, chunk: int) -> None:
    monkeypatch.setattr(envelopes, "_BASE64_CHUNK", chunk)
    texts = _texts()
    assert sum(_whole(t) is None for t in texts) > 1000  # the refusals are exercised
    for text in texts:
        assert _chunked(text) == _whole(text), text


def test_a_large_document_decodes_to_the_same_bytes() -> None:
    data = secrets.token_bytes(3 * (1 << 20) + 7)
    assert envelopes._b64decode(base64.b64encode(data).decode()) == data
