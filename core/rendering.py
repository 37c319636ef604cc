"""Page rendering with pdfium in bounded worker processes.

A hostile document can ask for a multi-gigabyte bitmap (a 14400 x 14400 pt MediaBox), inflate a
tiny content stream to a gigabyte, or simply take minutes. So pdfium never runs in a request
worker: :class:`RenderPool` keeps a few ``spawn``-started child processes, each with an
address-space limit (``RLIMIT_AS``), and gives each job a wall-clock budget; a child that
overruns is killed and replaced, and the caller gets ``document.too_complex`` in Japanese. The
next job gets a fresh child, so one bad document stalls nobody else.

Every bitmap is capped (:class:`RenderBudget`): at most ``max_page_pixels`` pixels and
``max_side`` pixels a side, scaled down to fit, so the bitmap of any page is bounded whatever its
MediaBox says. A child keeps the last document it was sent open, so the pages of one document
cost one transfer.

:meth:`RenderPool.check` is the upload-time test: every page within the geometry the caps can
show legibly, and every page rendered (small) within the budget; what fails is refused before
anything is stored.
"""

from __future__ import annotations

import hashlib
import io
import logging
import math
import multiprocessing
import resource
import threading
import weakref
from collections.abc import Hashable
from dataclasses import dataclass
from multiprocessing.connection import Connection
from typing import Any

from core.errors import DocumentError

__all__ = ["PageGeometry", "RenderBudget", "RenderPool", "bitmap_scale", "page_geometry"]

log = logging.getLogger(__name__)

#: A page whose long side is more than this many times its short side cannot be shown legibly
#: within the pixel caps (a 1 pt x 14400 pt strip): refused at upload.
MAX_ASPECT_RATIO = 100.0
#: The width of the trial rendering at upload: enough for pdfium to run every operator.
_CHECK_WIDTH = 96
_PALETTE_COLOURS = 16


@dataclass(frozen=True)
class RenderBudget:
    """What one rendering job may use, and how large any bitmap may be."""

    seconds: float = 30.0
    memory_bytes: int = 512 * 1024 * 1024
    max_page_pixels: int = 4_000_000
    max_side: int = 20_000
    workers: int = 2


@dataclass(frozen=True)
class PageGeometry:
    """A page's visible area (CropBox within MediaBox, PDF points) and its /Rotate."""

    left: float
    bottom: float
    right: float
    top: float
    rotation: int


def bitmap_scale(width_pt: float, height_pt: float, scale: float, budget: RenderBudget) -> float:
    """``scale`` (pixels per point), lowered so that a ``width_pt`` x ``height_pt`` page gives
    at most ``budget.max_page_pixels`` pixels and ``budget.max_side`` pixels a side."""
    width_pt, height_pt = max(width_pt, 1e-3), max(height_pt, 1e-3)
    pixels = width_pt * height_pt * scale * scale
    if pixels > budget.max_page_pixels:
        scale = math.sqrt(budget.max_page_pixels / (width_pt * height_pt))
    longest = max(width_pt, height_pt) * scale
    if longest > budget.max_side:
        scale = budget.max_side / max(width_pt, height_pt)
    # pdfium rounds each side up: keep the rounded bitmap within the caps too
    while (
        math.ceil(width_pt * scale) * math.ceil(height_pt * scale) > budget.max_page_pixels
        or math.ceil(max(width_pt, height_pt) * scale) > budget.max_side
    ):
        scale *= 0.995
    return scale


def _label(name: str | None) -> str:
    return f"「{name}」は" if name else "この文書は"


def _too_complex(name: str | None, why: str) -> DocumentError:
    label = _label(name)
    return DocumentError(
        "document.too_complex",
        f"the document cannot be displayed within the rendering budget: {why}",
        f"{label}ページが大きすぎるか複雑すぎるため、表示できません。"
        "ページの大きさや画像を見直したPDFを登録してください。",
        details={"reason": why},
    )


def _unreadable(why: str) -> DocumentError:
    return DocumentError("document.unreadable", f"cannot render: {why}", "文書を表示できません。")


def _no_such_page(page_index: int) -> DocumentError:
    return DocumentError(
        "document.no_such_page", f"no page {page_index + 1}", "指定されたページはありません。"
    )


def _inherited(page: Any, key: str) -> Any:
    """``key`` of ``page`` or of its nearest page-tree ancestor (MediaBox, CropBox and Rotate
    are inheritable)."""
    node = page
    for _ in range(64):
        if node is None:
            return None
        value = node.get(key)
        if value is not None:
            return value
        node = node.get("/Parent")
    return None


def _rectangle(value: Any) -> tuple[float, float, float, float] | None:
    try:
        x1, y1, x2, y2 = (float(v) for v in value)
    except (TypeError, ValueError):
        return None
    return min(x1, x2), min(y1, y2), max(x1, x2), max(y1, y2)


def page_geometry(data: bytes) -> list[PageGeometry]:
    """The visible area (CropBox clipped to MediaBox, US Letter when there is none) and the
    /Rotate of every page, as the signing engine reads them; no content stream is decoded."""
    import pikepdf

    from core.qpdf import open_pdf

    pages = []
    try:
        with open_pdf(data) as pdf:
            for page in pdf.pages:
                node = page.obj
                media = _rectangle(_inherited(node, "/MediaBox")) or (0.0, 0.0, 612.0, 792.0)
                crop = _rectangle(_inherited(node, "/CropBox"))
                if crop is not None:
                    box = (
                        max(media[0], crop[0]),
                        max(media[1], crop[1]),
                        min(media[2], crop[2]),
                        min(media[3], crop[3]),
                    )
                    if box[2] > box[0] and box[3] > box[1]:
                        media = box
                rotate = _inherited(node, "/Rotate")
                try:
                    turn = int(rotate) % 360 if rotate is not None else 0
                except (TypeError, ValueError):
                    turn = 0
                pages.append(PageGeometry(*media, turn if turn in (0, 90, 180, 270) else 0))
    except pikepdf.PdfError as exc:
        raise _unreadable(str(exc)) from exc
    return pages


# --- the child ------------------------------------------------------------------------------


class _Child:
    """The state of one worker process: the document it has open."""

    def __init__(self, budget: RenderBudget) -> None:
        self.budget = budget
        self.key: Any = None
        self.pdf: Any = None
        self.forms = False
        # the bytes the last geometry job read (not opened in pdfium): the upload check's
        # first page job opens them without the parent sending the document a second time
        self.held: tuple[Any, bytes] | None = None

    def open(self, key: Any, data: bytes | None) -> Any:
        import pypdfium2 as pdfium

        held, self.held = self.held, None
        if data is None and held is not None and held[0] == key and key != self.key:
            data = held[1]
        if data is not None or self.pdf is None or key != self.key:
            if data is None:
                raise LookupError("the document is not open here")
            if self.pdf is not None:
                self.pdf.close()
                self.pdf = None
            try:
                self.pdf = pdfium.PdfDocument(data)
            except pdfium.PdfiumError as exc:
                raise _unreadable(str(exc)) from exc
            self.key = key
            self.forms = False
        return self.pdf

    def page(self, page_index: int) -> Any:
        if not self.forms:
            self.pdf.init_forms()
            self.forms = True
        if not 0 <= page_index < len(self.pdf):
            raise _no_such_page(page_index)
        return self.pdf[page_index]

    def geometry(self, key: Any, data: bytes | None) -> list[PageGeometry]:
        """Every page's visible area and rotation, read by qpdf from the page dictionaries:
        pdfium would parse every content stream (a Flate bomb) just to load a page."""
        if data is None:
            raise LookupError("the document is not here")
        self.held = None
        pages = page_geometry(data)
        self.held = (key, data)
        return pages

    def text(self, data: bytes | None, max_pages: int) -> tuple[bool, int, str]:
        """(encrypted, page count, the text of every page) of a small document read once
        (an issuer's notice); no text when it is encrypted or longer than ``max_pages``."""
        import pypdfium2 as pdfium
        import pypdfium2.raw as pdfium_c

        if data is None:
            raise LookupError("the document is not here")
        try:
            pdf = pdfium.PdfDocument(data)
        except pdfium.PdfiumError as exc:
            if getattr(exc, "err_code", None) == pdfium_c.FPDF_ERR_PASSWORD:
                return True, 0, ""
            raise _unreadable(str(exc)) from exc
        try:
            # -1: no security handler; an owner-password-only file opens but is encrypted.
            if pdfium_c.FPDF_GetSecurityHandlerRevision(pdf.raw) != -1:
                return True, len(pdf), ""
            if len(pdf) > max_pages:
                return False, len(pdf), ""
            texts = []
            for page in pdf:
                textpage = page.get_textpage()
                texts.append(textpage.get_text_range())
                textpage.close()
                page.close()
            return False, len(pdf), "\n".join(texts)
        finally:
            pdf.close()

    def bitmap(self, page_index: int, *, width: int | None, scale: float | None) -> Any:
        """Page ``page_index`` as a PIL image ``width`` pixels wide (or at ``scale`` pixels a
        point), within the pixel caps."""
        page = self.page(page_index)
        try:
            w_pt, h_pt = page.get_size()
            if page.get_rotation() in (90, 270):
                w_pt, h_pt = h_pt, w_pt
            wanted = width / max(w_pt, 1e-3) if width is not None else float(scale or 1.0)
            fitted = bitmap_scale(w_pt, h_pt, wanted, self.budget)
            return page.render(scale=fitted, may_draw_forms=True).to_pil()
        finally:
            page.close()


def _png(image: Any, *, palette: bool) -> bytes:
    from PIL import Image

    out = io.BytesIO()
    if palette:
        # Fast octree: ~4x quicker than median cut at the same size; 4 bits a pixel.
        quantized = image.quantize(colors=_PALETTE_COLOURS, method=Image.Quantize.FASTOCTREE)
        quantized.save(out, format="PNG", optimize=False, bits=4)
    else:
        image.save(out, format="PNG", optimize=False)
    return out.getvalue()


def _serve(conn: Connection, budget: RenderBudget) -> None:
    """The child: answer jobs until the pipe closes, within the address-space limit."""
    resource.setrlimit(resource.RLIMIT_AS, (budget.memory_bytes, budget.memory_bytes))
    child = _Child(budget)
    while True:
        try:
            request = conn.recv()
            if request is None:
                return
            op, key, sent, args = request
            data = conn.recv_bytes() if sent else None  # see RenderPool._ask
        except (EOFError, OSError):
            return
        try:
            if op == "geometry":
                result: Any = child.geometry(key, data)
            elif op == "text":
                result = child.text(data, args[0])
            else:
                child.open(key, data)
            if op == "image":
                result = _png(child.bitmap(args[0], width=args[1], scale=None), palette=True)
            elif op == "png":
                result = _png(child.bitmap(args[0], width=None, scale=args[1]), palette=False)
            elif op == "thumb":  # the upload check: every operator run, a tiny bitmap
                child.bitmap(args[0], width=_CHECK_WIDTH, scale=None)
                result = None
            elif op not in ("geometry", "text"):
                raise ValueError(op)
            answer: tuple[Any, ...] = ("ok", result)
        except DocumentError as exc:
            answer = ("error", exc.code, exc.message_en, exc.message_ja, exc.details)
        except LookupError:
            answer = ("resend",)
        except MemoryError:
            answer = ("budget", "its memory budget was exhausted")
        except Exception as exc:  # pdfium's failure on this document, whatever its class
            answer = (
                "error",
                "document.unreadable",
                f"cannot render: {exc}",
                "文書を表示できません。",
                {},
            )
        conn.send(answer)


# --- the parent -----------------------------------------------------------------------------


class _Worker:
    def __init__(self, context: Any, budget: RenderBudget, number: int) -> None:
        parent, child = context.Pipe()
        self.process = context.Process(
            target=_serve, args=(child, budget), daemon=True, name=f"keiyaku-render-{number}"
        )
        self.process.start()
        child.close()
        self.conn: Connection = parent
        self.key: Any = None

    def stop(self, *, kill: bool) -> None:
        if kill:
            self.process.kill()
        else:
            try:
                self.conn.send(None)
            except OSError:
                pass
        self.process.join(timeout=10)
        if self.process.is_alive():
            self.process.kill()
            self.process.join()
        self.conn.close()


class RenderPool:
    """At most ``budget.workers`` rendering processes, reused across jobs; each job within
    ``budget.seconds`` and ``budget.memory_bytes``. Thread-safe: a caller waits for a free
    worker, never for another caller's document."""

    def __init__(self, budget: RenderBudget | None = None) -> None:
        self.budget = budget or RenderBudget()
        self._context = multiprocessing.get_context("spawn")
        self._idle: list[_Worker] = []
        self._running = 0
        self._started = 0
        self._ready = threading.Condition()
        self._closed = False
        #: Workers killed for overrunning their budget: for tests and metrics.
        self.killed = 0
        # A pool dropped without close() still stops its idle workers.
        weakref.finalize(self, _stop_all, self._idle)

    def __enter__(self) -> RenderPool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Stop every idle worker (busy ones stop when their job ends)."""
        with self._ready:
            self._closed = True
            idle = list(self._idle)
            self._idle.clear()
            self._running -= len(idle)
            self._ready.notify_all()
        for worker in idle:
            worker.stop(kill=False)

    def _acquire(self, key: Hashable) -> _Worker | None:
        """An idle worker (the one holding ``key`` if any), or None when one may be started."""
        with self._ready:
            while True:
                if self._idle:
                    for worker in self._idle:
                        if worker.key == key:
                            self._idle.remove(worker)
                            return worker
                    return self._idle.pop()
                if self._running < self.budget.workers:
                    self._running += 1
                    return None
                self._ready.wait()

    def _release(self, worker: _Worker) -> None:
        with self._ready:
            if self._closed:
                self._running -= 1
                worker.stop(kill=False)
            else:
                self._idle.append(worker)
            self._ready.notify()

    def _forget(self) -> None:
        """A worker stopped (or never started): its place is free."""
        with self._ready:
            self._running -= 1
            self._ready.notify()

    def _run(
        self, op: str, key: Hashable, data: bytes, args: tuple[Any, ...], name: str | None
    ) -> Any:
        worker = self._acquire(key)
        if worker is None:
            self._started += 1
            try:
                worker = _Worker(self._context, self.budget, self._started)
            except BaseException:
                self._forget()
                raise
        try:
            keep = worker.key == key and op not in ("geometry", "text")
            answer = self._ask(worker, (op, key, None if keep else data, args))
            if answer[0] == "resend":
                answer = self._ask(worker, (op, key, data, args))
        except _Overrun as overrun:
            self.killed += 1
            worker.stop(kill=True)
            self._forget()
            raise _too_complex(name, str(overrun)) from None
        except BaseException:
            worker.stop(kill=True)
            self._forget()
            raise
        # after geometry the child holds the bytes (see _Child.held); a job that finds them
        # gone is answered "resend" and sent them again; a text job leaves what it held
        if op != "text":
            worker.key = key
        self._release(worker)
        if answer[0] == "ok":
            return answer[1]
        if answer[0] == "budget":
            raise _too_complex(name, answer[1])
        _, code, message_en, message_ja, details = answer
        raise DocumentError(code, message_en, message_ja, details=details or None)

    def _ask(self, worker: _Worker, request: tuple[Any, ...]) -> tuple[Any, ...]:
        op, key, data, args = request
        try:
            # The document follows the job as raw bytes: pickled with it, it would be copied
            # whole in this process (and unpickled into a second copy in the child).
            worker.conn.send((op, key, data is not None, args))
            if data is not None:
                worker.conn.send_bytes(data)
            if worker.conn.poll(self.budget.seconds):
                answer: tuple[Any, ...] = worker.conn.recv()
                return answer
        except (EOFError, OSError):
            log.warning("a rendering process died (memory budget %d MB)", self._megabytes)
            raise _Overrun(f"the renderer ran out of its {self._megabytes} MB") from None
        log.warning("a rendering job overran %.0f s; stopping it", self.budget.seconds)
        raise _Overrun(f"the renderer did not finish within {self.budget.seconds:g} s")

    @property
    def _megabytes(self) -> int:
        return self.budget.memory_bytes // 2**20

    # --- jobs ---

    def geometry(self, key: Hashable, data: bytes) -> list[PageGeometry]:
        """The visible area and rotation of every page."""
        result: list[PageGeometry] = self._run("geometry", key, data, (), None)
        return result

    def page_image(self, key: Hashable, data: bytes, page_index: int, width: int) -> bytes:
        """Page ``page_index`` about ``width`` pixels wide (narrower where the pixel cap says),
        as a 16-colour palette PNG."""
        result: bytes = self._run("image", key, data, (page_index, width), None)
        return result

    def text(self, data: bytes, *, max_pages: int) -> tuple[bool, int, str]:
        """(encrypted, page count, text) of a small document such as an issuer's notice: the
        text of every page unless it is encrypted or has more than ``max_pages`` pages."""
        result: tuple[bool, int, str] = self._run("text", ("text",), data, (max_pages,), None)
        return result

    def png(self, key: Hashable, data: bytes, page_index: int, scale: float) -> bytes:
        """Page ``page_index`` at ``scale`` pixels a point (lower where the caps say), as PNG."""
        result: bytes = self._run("png", key, data, (page_index, scale), None)
        return result

    def check(self, data: bytes, *, name: str | None = None) -> int:
        """Refuse a document whose pages cannot all be shown within the caps and the budget:
        a page more than :data:`MAX_ASPECT_RATIO` times as long as it is wide
        (``document.page_size``), or one that does not render within the budget
        (``document.too_complex``; each page a job of its own). A file pdfium or qpdf cannot
        open as it is stays for the signing engine to judge (it may rebuild it). Returns the
        pages checked."""
        key = ("check", hashlib.sha256(data).hexdigest())
        try:
            pages = self.geometry(key, data)
        except DocumentError as exc:
            if exc.code == "document.unreadable":
                return 0
            raise
        for index, page in enumerate(pages):
            width, height = page.right - page.left, page.top - page.bottom
            short, long = sorted((abs(width), abs(height)))
            if short < 1 or long / short > MAX_ASPECT_RATIO:
                raise DocumentError(
                    "document.page_size",
                    f"page {index + 1} is {width:g} x {height:g} pt: too thin to display",
                    f"{_label(name)}{index + 1}ページ目の縦横比が極端なため、表示できません"
                    f"({width:g}×{height:g}ポイント)。",
                    details={"page": index + 1},
                )
        for index in range(len(pages)):
            try:
                self._run("thumb", key, data, (index,), name)
            except DocumentError as exc:
                if exc.code in ("document.unreadable", "document.no_such_page"):
                    return index
                raise
        return len(pages)


def _stop_all(workers: list[_Worker]) -> None:
    for worker in list(workers):
        worker.stop(kill=False)
    workers.clear()


class _Overrun(Exception):
    """The worker overran its budget (time) or died (memory)."""
