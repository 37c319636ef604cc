"""File answers: the ``Content-Disposition`` of every download (RFC 6266).

A document is named by whoever uploaded it, so its name may hold anything: quotes, a backslash,
a line break (which would make the header illegal and the download fail), Japanese. The header
carries an ASCII ``filename`` fallback (quotes, backslashes, controls and non-ASCII letters
replaced, the extension kept) and the exact name as ``filename*`` (RFC 8187 UTF-8, percent-
encoded), which every current browser prefers.
"""

from __future__ import annotations

import re
import unicodedata
from typing import Literal
from urllib.parse import quote

from fastapi.responses import Response

from core.text import without_controls

__all__ = ["content_disposition", "file_response"]

_UNSAFE_ASCII = re.compile(r"[^A-Za-z0-9._()\[\] -]+")


def _ascii_fallback(name: str) -> str:
    decomposed = unicodedata.normalize("NFKD", name).encode("ascii", "ignore").decode()
    stem, dot, extension = _UNSAFE_ASCII.sub("_", decomposed).rpartition(".")
    if not dot:
        stem, extension = extension, ""
    stem = stem.strip(" ._") or "download"
    return f"{stem}.{extension}" if extension else stem


def content_disposition(name: str, *, kind: Literal["attachment", "inline"] = "attachment") -> str:
    """The header value for a file called ``name``: always legal, whatever the name holds."""
    clean = without_controls(name) or "download"
    return (
        f"{kind}; filename=\"{_ascii_fallback(clean)}\"; filename*=UTF-8''{quote(clean, safe='')}"
    )


def file_response(
    data: bytes,
    name: str,
    *,
    media_type: str = "application/pdf",
    inline: bool = False,
    no_store: bool = True,
) -> Response:
    """``data`` as a download (or shown inline) named ``name``."""
    headers = {
        "Content-Disposition": content_disposition(name, kind="inline" if inline else "attachment")
    }
    if no_store:
        headers["Cache-Control"] = "no-store"
    return Response(data, media_type=media_type, headers=headers)
