"""Document pages as PNG images, rendered on the server with pdfium (pypdfium2), so the signer
needs no PDF plugin or viewer. pdfium is not thread-safe: one lock serialises its use, and a
small cache keeps recently shown pages."""

from __future__ import annotations

import io
import threading
from collections import OrderedDict
from collections.abc import Callable, Hashable

import pypdfium2 as pdfium

from core.errors import DocumentError

PageSize = tuple[float, float]


class PageRenderer:
    """Renders pages of stored documents; results are cached by (document, revision, page)."""

    def __init__(self, dpi: int = 110, cache_entries: int = 128) -> None:
        self.scale = dpi / 72
        self._lock = threading.Lock()
        self._pngs: OrderedDict[Hashable, bytes] = OrderedDict()
        self._sizes: dict[Hashable, list[PageSize]] = {}
        self._cache_entries = cache_entries

    def page_sizes(self, key: Hashable, load: Callable[[], bytes]) -> list[PageSize]:
        """(width, height) in points of every page; ``load`` reads the document when needed."""
        with self._lock:
            if key not in self._sizes:
                pdf = self._open(load())
                try:
                    self._sizes[key] = [pdf.get_page_size(i) for i in range(len(pdf))]
                finally:
                    pdf.close()
            return self._sizes[key]

    def png(self, key: Hashable, load: Callable[[], bytes], page_index: int) -> bytes:
        """Page ``page_index`` (0-based) as PNG, text boxes filled so far included."""
        cache_key = (key, page_index)
        with self._lock:
            cached = self._pngs.get(cache_key)
            if cached is not None:
                self._pngs.move_to_end(cache_key)
                return cached
            pdf = self._open(load())
            try:
                if not 0 <= page_index < len(pdf):
                    raise DocumentError(
                        "document.no_such_page",
                        f"no page {page_index + 1}",
                        "指定されたページはありません。",
                    )
                pdf.init_forms()
                page = pdf[page_index]
                bitmap = page.render(scale=self.scale, may_draw_forms=True)
                image = bitmap.to_pil()
                out = io.BytesIO()
                image.save(out, format="PNG", optimize=False)
                png = out.getvalue()
                page.close()
            finally:
                pdf.close()
            self._pngs[cache_key] = png
            while len(self._pngs) > self._cache_entries:
                self._pngs.popitem(last=False)
            return png

    @staticmethod
    def _open(data: bytes) -> pdfium.PdfDocument:
        try:
            return pdfium.PdfDocument(data)
        except pdfium.PdfiumError as exc:
            raise DocumentError(
                "document.unreadable", f"cannot render: {exc}", "文書を表示できません。"
            ) from exc
