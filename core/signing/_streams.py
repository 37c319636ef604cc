"""Streams the PDF parsers decode whole, sized before any parser sees them.

pyHanko and qpdf decode an object stream (``/Type /ObjStm``) or a cross-reference stream
(``/Type /XRef``) in one piece as soon as an object in it is read; a few kilobytes of nested
Flate can inflate to gigabytes in the request worker. :func:`check_parsed_streams` finds those
streams in the raw bytes and inflates them chunk by chunk, counting and keeping nothing, so a
bomb is refused at the cost of its compressed size. Content streams and images are decoded only
by the page renderer, which runs in a bounded process (:mod:`core.rendering`).
"""

from __future__ import annotations

import re
import zlib
from collections.abc import Iterator

from core.errors import DocumentError

__all__ = ["check_parsed_streams"]

#: The most one object or cross-reference stream may inflate to, and all of them together.
MAX_STREAM_BYTES = 64 * 1024 * 1024
MAX_TOTAL_BYTES = 256 * 1024 * 1024
_CHUNK = 1024 * 1024

_PARSED_TYPE = re.compile(rb"/Type\s*/(?:ObjStm|XRef)\b")
_OBJ = re.compile(rb"\d+\s+\d+\s+obj\b")
_STREAM = re.compile(rb"stream(?:\r\n|\n|\r)")
_LENGTH = re.compile(rb"/Length\s+(\d+)(?!\s+\d+\s+R)")
_FILTERS = re.compile(rb"/Filter\s*(\[[^\]]*\]|/[A-Za-z0-9]+)")


def _too_large(total: int) -> DocumentError:
    return DocumentError(
        "document.too_complex",
        f"the PDF's object streams inflate to more than {total} bytes",
        "このPDFは内部の圧縮データを展開すると極端に大きくなるため、受け付けられません。"
        "PDFを保存し直してから登録してください。",
    )


def _inflate(pieces: Iterator[bytes]) -> Iterator[bytes]:
    inflater = zlib.decompressobj()
    for piece in pieces:
        buffer = piece
        while buffer:
            out = inflater.decompress(buffer, _CHUNK)
            if out:
                yield out
            buffer = inflater.unconsumed_tail
            if inflater.eof:
                return


def _inflated_size(raw: bytes, stages: int, limit: int) -> int:
    """Bytes ``raw`` inflates to through ``stages`` Flate passes, counted up to ``limit + 1``."""
    pieces: Iterator[bytes] = iter((raw,))
    for _ in range(stages):
        pieces = _inflate(pieces)
    size = 0
    try:
        for out in pieces:
            size += len(out)
            if size > limit:
                break
    except zlib.error:
        pass  # damage is for the parsers to report; only the size matters here
    return size


def check_parsed_streams(data: bytes) -> None:
    """Refuse (``document.too_complex``) a PDF whose object or cross-reference streams inflate
    beyond :data:`MAX_STREAM_BYTES` each or :data:`MAX_TOTAL_BYTES` in all."""
    total = 0
    for found in _PARSED_TYPE.finditer(data):
        start = max(
            (m.end() for m in _OBJ.finditer(data, max(0, found.start() - 4096), found.start())),
            default=None,
        )
        stream = _STREAM.search(data, found.end(), found.end() + 4096)
        if start is None or stream is None:
            continue
        dictionary = data[start : stream.start()]
        filters = _FILTERS.search(dictionary)
        names = re.findall(rb"/([A-Za-z0-9]+)", filters.group(1)) if filters else []
        if not names or any(n not in (b"FlateDecode", b"Fl") for n in names):
            continue  # unfiltered streams cost their size; other filters are rare here
        length = _LENGTH.search(dictionary)
        end = (
            stream.end() + int(length.group(1)) if length else data.find(b"endstream", stream.end())
        )
        if end < stream.end():
            end = len(data)
        size = _inflated_size(data[stream.end() : end], len(names), MAX_STREAM_BYTES)
        total += size
        if size > MAX_STREAM_BYTES or total > MAX_TOTAL_BYTES:
            raise _too_large(MAX_STREAM_BYTES if size > MAX_STREAM_BYTES else MAX_TOTAL_BYTES)
