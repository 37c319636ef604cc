"""PDFs that run something when opened: ``/OpenAction`` or additional actions (``/AA``) that
start JavaScript or launch a program, and document-level JavaScript (``/Names /JavaScript``).

A contract is read, not run. Such a document is refused at upload (``document.active_content``,
with a Japanese message) or, when the buyer configures ``limits.pdf_active_content: strip``,
rewritten without those actions before anything is stored, so the first signature already
covers the harmless file. The rewrite is a whole new file (not an incremental update), so the
removed script is not left in an earlier revision either.

A file pypdf cannot read is accepted only when no action name appears in its bytes at all; it
is refused otherwise (what cannot be parsed cannot be stripped safely).
"""

from __future__ import annotations

import io
import logging
from collections.abc import Iterator
from typing import Any, Literal

from pypdf import PdfReader, PdfWriter
from pypdf.errors import PyPdfError
from pypdf.generic import ArrayObject, DictionaryObject, IndirectObject, NameObject

from core.errors import DocumentError

__all__ = ["ActiveContentMode", "check_active_content", "find_active_content"]

log = logging.getLogger(__name__)

ActiveContentMode = Literal["refuse", "strip"]
# Action types that run code or leave the document: JavaScript, launching a program, and the
# rendition/"GoToE"-style actions that can carry scripts.
_ACTIVE = frozenset({"/JavaScript", "/Launch", "/Rendition", "/ImportData", "/SubmitForm"})
_RAW_MARKERS = (b"/JavaScript", b"/JS", b"/Launch", b"/OpenAction", b"/AA")


def _resolve(value: Any) -> Any:
    return value.get_object() if isinstance(value, IndirectObject) else value


def _catalog(reader: PdfReader) -> DictionaryObject:
    root = _resolve(reader.trailer["/Root"])
    if not isinstance(root, DictionaryObject):
        raise ValueError("the trailer names no catalog")
    return root


def _is_active(action: Any, depth: int = 0) -> bool:
    """Whether an action dictionary (or one chained with ``/Next``) runs something."""
    action = _resolve(action)
    if depth > 20:
        return True  # a chain this long is not a contract's
    if isinstance(action, ArrayObject):
        return any(_is_active(item, depth + 1) for item in action)
    if not isinstance(action, DictionaryObject):
        return False  # an explicit destination (go to a page) is harmless
    if action.get("/S") in _ACTIVE or "/JS" in action:
        return True
    return "/Next" in action and _is_active(action["/Next"], depth + 1)


def _additional_actions_active(holder: DictionaryObject) -> bool:
    aa = _resolve(holder.get("/AA"))
    return isinstance(aa, DictionaryObject) and any(_is_active(v) for v in aa.values())


def _holders(reader: PdfReader) -> Iterator[tuple[str, DictionaryObject]]:
    """Every dictionary that may carry /OpenAction, /AA or /A: catalog, pages, annotations,
    form fields; with a name for the error message."""
    root = _catalog(reader)
    yield "catalog", root
    for number, page in enumerate(reader.pages, start=1):
        yield f"page {number}", page
        for annot in _resolve(page.get("/Annots")) or []:
            annot = _resolve(annot)
            if isinstance(annot, DictionaryObject):
                yield f"page {number} annotation", annot
    form = _resolve(root.get("/AcroForm"))
    if isinstance(form, DictionaryObject):
        for field in _resolve(form.get("/Fields")) or []:
            field = _resolve(field)
            if isinstance(field, DictionaryObject):
                yield "form field", field


def _findings(reader: PdfReader) -> list[str]:
    found: list[str] = []
    root = _catalog(reader)
    if _is_active(root.get("/OpenAction")):
        found.append("catalog /OpenAction")
    names = _resolve(root.get("/Names"))
    if isinstance(names, DictionaryObject) and "/JavaScript" in names:
        found.append("document-level JavaScript (/Names /JavaScript)")
    for where, holder in _holders(reader):
        if _additional_actions_active(holder):
            found.append(f"{where} /AA")
        if where != "catalog" and _is_active(holder.get("/A")):
            found.append(f"{where} /A")
    return found


def find_active_content(data: bytes) -> list[str]:
    """Where ``data`` runs something when opened or used (empty: nowhere)."""
    try:
        return _findings(PdfReader(io.BytesIO(data)))
    except (PyPdfError, ValueError, KeyError, TypeError, AttributeError, RecursionError) as exc:
        failure = exc
    # What pypdf cannot read, qpdf (pikepdf) often can: look again at its rewrite, the same file
    # the signing path rebuilds before the first signature (core.signing._repair).
    try:
        import pikepdf

        from core.qpdf import open_pdf

        rebuilt = io.BytesIO()
        with open_pdf(data) as pdf:
            # streams copied as they are, the XMP packet untouched: never decoded whole here
            pdf.save(
                rebuilt,
                stream_decode_level=pikepdf.StreamDecodeLevel.none,
                fix_metadata_version=False,
            )
        return _findings(PdfReader(io.BytesIO(rebuilt.getvalue())))
    except Exception:  # unreadable by both: judge by the raw bytes below
        log.info("neither pypdf nor qpdf reads this PDF; judging active content by its bytes")
    if any(marker in data for marker in _RAW_MARKERS):
        return [f"unreadable structure with action names ({type(failure).__name__})"]
    return []


def _strip(data: bytes) -> bytes:
    writer = PdfWriter(clone_from=PdfReader(io.BytesIO(data)))
    root = writer._root_object
    for key in ("/OpenAction", "/AA"):
        if key in root:
            del root[NameObject(key)]
    names = _resolve(root.get("/Names"))
    if isinstance(names, DictionaryObject) and "/JavaScript" in names:
        del names[NameObject("/JavaScript")]
    for page in writer.pages:
        if "/AA" in page:
            del page[NameObject("/AA")]
        for annot in _resolve(page.get("/Annots")) or []:
            annot = _resolve(annot)
            if isinstance(annot, DictionaryObject):
                if "/AA" in annot:
                    del annot[NameObject("/AA")]
                if _is_active(annot.get("/A")):
                    del annot[NameObject("/A")]
    form = _resolve(root.get("/AcroForm"))
    if isinstance(form, DictionaryObject):
        for field in _resolve(form.get("/Fields")) or []:
            field = _resolve(field)
            if isinstance(field, DictionaryObject) and "/AA" in field:
                del field[NameObject("/AA")]
    out = io.BytesIO()
    writer.write(out)
    return out.getvalue()


def check_active_content(data: bytes, *, name: str, mode: ActiveContentMode) -> bytes:
    """``data`` when it runs nothing; else refused (``document.active_content``) or, with
    ``mode="strip"``, rewritten without the actions (checked again afterwards)."""
    found = find_active_content(data)
    if not found:
        return data
    if mode == "strip":
        try:
            stripped = _strip(data)
        except (PyPdfError, ValueError, KeyError, TypeError, AttributeError) as exc:
            log.warning("could not strip active content from %s: %s", name, exc)
        else:
            if not find_active_content(stripped):
                log.info("stripped active content from %s: %s", name, "; ".join(found))
                return stripped
    raise DocumentError(
        "document.active_content",
        f"{name} runs something when opened ({'; '.join(found)}); such PDFs are not accepted",
        f"「{name}」には、開いたときに実行されるJavaScript等の動作が含まれているため、"
        "受け付けられません。動作を含まないPDFを作成し直してください。",
        details={"document": name, "found": found},
    )
