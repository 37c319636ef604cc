"""Document pages as PNG images, rendered on the server with pdfium (pypdfium2), so the signer
needs no PDF plugin or viewer. pdfium runs in bounded worker processes
(:class:`core.rendering.RenderPool`: a time and memory budget per job, every bitmap capped in
pixels), so a hostile document costs its own job and no one else's; a small cache keeps recently
shown pages.

The signing pages get :meth:`PageRenderer.page_image`: a 16-colour palette PNG (4 bits a pixel;
greys for text, a seal's red kept) at one of :data:`PAGE_WIDTHS`, so a phone on a 3G line gets
tens of kilobytes a page instead of hundreds. Each is rendered once per document revision and
width, and carries an ETag that is known before rendering (see :func:`page_etag`), so a
revalidation is answered without touching the document.
"""

from __future__ import annotations

import hashlib
import threading
from collections import OrderedDict
from collections.abc import Callable, Hashable
from dataclasses import dataclass

from core.rendering import RenderPool

PageSize = tuple[float, float]

#: Widths in pixels a signer's browser may ask for (``srcset``); others snap to the next one up.
PAGE_WIDTHS = (480, 720, 960, 1200)
#: The width when the browser names none (``src``).
DEFAULT_PAGE_WIDTH = 960
#: Changes every ETag when the encoding changes, so browsers never keep an old rendering.
_IMAGE_ENCODING = "png-p16-v1"


def fit_width(requested: int | None) -> int:
    """The smallest of :data:`PAGE_WIDTHS` at least ``requested`` wide (the largest if none)."""
    if requested is None:
        return DEFAULT_PAGE_WIDTH
    return next((w for w in PAGE_WIDTHS if w >= requested), PAGE_WIDTHS[-1])


def page_etag(key: Hashable, page_index: int, width: int) -> str:
    """The strong ETag of one page image: the document revision (in ``key``), page, width and
    encoding decide its bytes, so it is computed without rendering."""
    digest = hashlib.sha256(repr((_IMAGE_ENCODING, key, page_index, width)).encode()).hexdigest()
    return f'"{digest[:32]}"'


@dataclass(frozen=True)
class PageImage:
    """One rendered page: the bytes, their media type and ETag."""

    data: bytes
    etag: str
    media_type: str = "image/png"


@dataclass(frozen=True)
class PageBox:
    """The visible area of a page (where its CropBox meets its MediaBox) in PDF user space,
    points with the origin bottom-left, and the page's /Rotate. A page image shows exactly this
    area, turned clockwise by ``rotation``."""

    left: float
    bottom: float
    right: float
    top: float
    rotation: int = 0

    @property
    def size(self) -> PageSize:
        """(width, height) in points as displayed, i.e. after the rotation."""
        width, height = self.right - self.left, self.top - self.bottom
        return (height, width) if self.rotation in (90, 270) else (width, height)


def displayed_rect(
    page: PageBox, rect: tuple[float, float, float, float]
) -> tuple[float, float, float, float]:
    """Where ``rect`` (x1, y1, x2, y2 in PDF user space) is on ``page`` as displayed: left, top,
    width and height in points from the top-left corner of the page image, which shows the
    visible area turned clockwise by the page's rotation."""
    x1, y1, x2, y2 = rect
    if page.rotation == 90:  # user-space origin at the top left, x growing downwards
        return (y1 - page.bottom, x1 - page.left, y2 - y1, x2 - x1)
    if page.rotation == 180:
        return (page.right - x2, y1 - page.bottom, x2 - x1, y2 - y1)
    if page.rotation == 270:  # user-space origin at the bottom right, x growing upwards
        return (page.top - y2, page.right - x2, y2 - y1, x2 - x1)
    return (x1 - page.left, page.top - y2, x2 - x1, y2 - y1)


def placement(page: PageBox, rect: tuple[float, float, float, float]) -> dict[str, float]:
    """Where ``rect`` (x1, y1, x2, y2 in PDF user space) sits on the page image, as displayed
    (turned): left, top, width and height in percent of the image, for a box laid over it."""
    width, height = page.size
    left, top, box_width, box_height = displayed_rect(page, rect)
    return {
        "left": round(100 * left / width, 3),
        "top": round(100 * top / height, 3),
        "width": round(100 * box_width / width, 3),
        "height": round(100 * box_height / height, 3),
    }


def rect_at(
    page: PageBox, left: float, top: float, width: float, height: float
) -> tuple[float, float, float, float]:
    """The rectangle (x1, y1, x2, y2 in PDF user space) that sits ``left`` and ``top`` points
    from the top-left corner of the page as displayed (turned), ``width`` by ``height`` points
    as displayed: the inverse of :func:`displayed_rect`."""
    if page.rotation == 90:
        x1, y1 = page.left + top, page.bottom + left
        rect = (x1, y1, x1 + height, y1 + width)
    elif page.rotation == 180:
        x2, y1 = page.right - left, page.bottom + top
        rect = (x2 - width, y1, x2, y1 + height)
    elif page.rotation == 270:
        x2, y2 = page.right - top, page.top - left
        rect = (x2 - height, y2 - width, x2, y2)
    else:
        x1, y2 = page.left + left, page.top - top
        rect = (x1, y2 - height, x1 + width, y2)
    x1, y1, x2, y2 = rect
    return (round(x1, 2), round(y1, 2), round(x2, 2), round(y2, 2))


class PageRenderer:
    """Renders pages of stored documents in ``pool``'s worker processes; results are cached by
    (document, revision, page)."""

    def __init__(
        self,
        dpi: int = 110,
        cache_entries: int = 128,
        image_cache_bytes: int = 64 * 2**20,
        *,
        pool: RenderPool | None = None,
    ) -> None:
        self.scale = dpi / 72
        self.pool = pool if pool is not None else RenderPool()
        # Guards the caches only: rendering happens outside it, in the pool.
        self._lock = threading.Lock()
        self._pngs: OrderedDict[Hashable, bytes] = OrderedDict()
        self._boxes: dict[Hashable, list[PageBox]] = {}
        self._cache_entries = cache_entries
        self._images: OrderedDict[Hashable, PageImage] = OrderedDict()
        self._image_bytes = 0
        self._image_cache_bytes = image_cache_bytes
        # The last document read for a page image: its other pages follow right after.
        self._source: tuple[Hashable, bytes] | None = None
        #: Page images rendered so far (not served from the cache): for tests and benches.
        self.renders = 0

    def _document(self, key: Hashable, load: Callable[[], bytes]) -> bytes:
        with self._lock:
            if self._source is not None and self._source[0] == key:
                return self._source[1]
        data = load()
        with self._lock:
            self._source = (key, data)
        return data

    def page_boxes(self, key: Hashable, load: Callable[[], bytes]) -> list[PageBox]:
        """The visible area and rotation of every page; ``load`` reads the document when needed."""
        with self._lock:
            cached = self._boxes.get(key)
        if cached is not None:
            return cached
        geometry = self.pool.geometry(key, self._document(key, load))
        boxes = [PageBox(g.left, g.bottom, g.right, g.top, g.rotation) for g in geometry]
        with self._lock:
            self._boxes[key] = boxes
        return boxes

    def page_sizes(self, key: Hashable, load: Callable[[], bytes]) -> list[PageSize]:
        """(width, height) in points of every page as displayed."""
        return [box.size for box in self.page_boxes(key, load)]

    def png(self, key: Hashable, load: Callable[[], bytes], page_index: int) -> bytes:
        """Page ``page_index`` (0-based) as PNG, text boxes filled so far included, at the
        renderer's resolution (lower for a page too large for the pixel caps)."""
        cache_key = (key, page_index)
        with self._lock:
            cached = self._pngs.get(cache_key)
            if cached is not None:
                self._pngs.move_to_end(cache_key)
                return cached
        png = self.pool.png(key, self._document(key, load), page_index, self.scale)
        with self._lock:
            self._pngs[cache_key] = png
            while len(self._pngs) > self._cache_entries:
                self._pngs.popitem(last=False)
        return png

    def page_image(
        self, key: Hashable, load: Callable[[], bytes], page_index: int, width: int
    ) -> PageImage:
        """Page ``page_index`` (0-based) ``width`` pixels wide (one of :data:`PAGE_WIDTHS`;
        narrower for a page too long for the pixel caps) as a 16-colour palette PNG; rendered
        once per ``key`` (document revision) and width."""
        if width not in PAGE_WIDTHS:
            raise ValueError(f"width {width} is not one of {PAGE_WIDTHS}")
        cache_key = (key, page_index, width)
        with self._lock:
            cached = self._images.get(cache_key)
            if cached is not None:
                self._images.move_to_end(cache_key)
                return cached
        data = self.pool.page_image(key, self._document(key, load), page_index, width)
        rendered = PageImage(data, page_etag(key, page_index, width))
        with self._lock:
            self.renders += 1
            self._images[cache_key] = rendered
            self._image_bytes += len(rendered.data)
            while self._image_bytes > self._image_cache_bytes and len(self._images) > 1:
                _, dropped = self._images.popitem(last=False)
                self._image_bytes -= len(dropped.data)
        return rendered
