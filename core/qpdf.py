"""qpdf (through pikepdf) one document at a time per process.

Creates run in parallel threads (FastAPI's thread pool, the intake runner, the render check
that waits beside a create), and each of them reads uploads with qpdf: the tolerant second
reading (:mod:`core.signing._repair`), the page geometry (:mod:`core.rendering`), the rewrite
the active-content check falls back on. With two such readings at once the process died of a
segmentation fault inside pikepdf (``bench.api`` with two in-process clients, about one run in
twenty: both threads iterating ``Pdf.objects`` of their own documents while a garbage
collection was under way). qpdf holds the GIL for nearly all of this work, so taking turns
costs little; a crash takes every request of the process with it.

Every ``pikepdf.open`` in the product goes through :func:`open_pdf`; a test keeps it so.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from io import BytesIO
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import pikepdf

__all__ = ["open_pdf"]

# reentrant: a reading may call another (the rebuild checks what the repair check reports)
_turn = threading.RLock()


@contextmanager
def open_pdf(data: bytes, **options: Any) -> Iterator[pikepdf.Pdf]:
    """``data`` opened by pikepdf (``options`` as for ``pikepdf.open``) and closed on exit,
    while no other thread of this process uses pikepdf. pikepdf's own exceptions pass
    through unchanged."""
    import pikepdf

    with _turn, pikepdf.open(BytesIO(data), **options) as pdf:
        yield pdf
