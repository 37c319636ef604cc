"""PDFs that run something when opened: ``/OpenAction`` or additional actions (``/AA``) that
start JavaScript or launch a program, and document-level JavaScript (``/Names /JavaScript``).

A contract is read, not run. Such a document is refused at upload (``document.active_content``,
with a Japanese message) or, when the buyer configures ``limits.pdf_active_content: strip``,
rewritten without those actions before anything is stored, so the first signature already
covers the harmless file. The rewrite is a whole new file (not an incremental update), so the
removed script is not left in an earlier revision either.

A file qpdf cannot read is accepted only when no action name appears in its bytes at all; it
is refused otherwise (what cannot be parsed cannot be stripped safely).
"""

from __future__ import annotations

import io
import logging
from collections.abc import Iterator
from typing import Any, Literal

import pikepdf

from core.errors import DocumentError
from core.qpdf import open_pdf

__all__ = ["ActiveContentMode", "check_active_content", "find_active_content"]

log = logging.getLogger(__name__)

ActiveContentMode = Literal["refuse", "strip"]
# Action types that run code or leave the document: JavaScript, launching a program, and the
# rendition/"GoToE"-style actions that can carry scripts.
_ACTIVE = frozenset({"/JavaScript", "/Launch", "/Rendition", "/ImportData", "/SubmitForm"})
_RAW_MARKERS = (b"/JavaScript", b"/JS", b"/Launch", b"/OpenAction", b"/AA")


def _is_active(action: Any, depth: int = 0) -> bool:
    """Whether an action dictionary (or one chained with ``/Next``) runs something."""
    if depth > 20:
        return True  # a chain this long is not a contract's
    if isinstance(action, pikepdf.Array):
        return any(_is_active(item, depth + 1) for item in action)
    if not isinstance(action, pikepdf.Dictionary):
        return False  # an explicit destination (go to a page) is harmless
    if str(action.get("/S", "")) in _ACTIVE or "/JS" in action:
        return True
    return "/Next" in action and _is_active(action["/Next"], depth + 1)


def _additional_actions_active(holder: pikepdf.Object) -> bool:
    aa = holder.get("/AA")
    return isinstance(aa, pikepdf.Dictionary) and any(_is_active(v) for v in aa.values())


def _dictionaries(value: Any) -> Iterator[pikepdf.Dictionary]:
    """The dictionaries in an array (``/Annots``, ``/Fields``); nothing when it is not one."""
    if isinstance(value, pikepdf.Array):
        yield from (item for item in value if isinstance(item, pikepdf.Dictionary))


def _holders(pdf: pikepdf.Pdf) -> Iterator[tuple[str, pikepdf.Object]]:
    """Every dictionary that may carry /OpenAction, /AA or /A: catalog, pages, annotations,
    form fields; with a name for the error message."""
    root = pdf.Root
    yield "catalog", root
    for number, page in enumerate(pdf.pages, start=1):
        yield f"page {number}", page.obj
        for annot in _dictionaries(page.obj.get("/Annots")):
            yield f"page {number} annotation", annot
    form = root.get("/AcroForm")
    if isinstance(form, pikepdf.Dictionary):
        for field in _dictionaries(form.get("/Fields")):
            yield "form field", field


def _findings(pdf: pikepdf.Pdf) -> list[str]:
    found: list[str] = []
    root = pdf.Root
    if _is_active(root.get("/OpenAction")):
        found.append("catalog /OpenAction")
    names = root.get("/Names")
    if isinstance(names, pikepdf.Dictionary) and "/JavaScript" in names:
        found.append("document-level JavaScript (/Names /JavaScript)")
    for where, holder in _holders(pdf):
        if _additional_actions_active(holder):
            found.append(f"{where} /AA")
        if where != "catalog" and _is_active(holder.get("/A")):
            found.append(f"{where} /A")
    return found


def find_active_content(data: bytes) -> list[str]:
    """Where ``data`` runs something when opened or used (empty: nowhere)."""
    try:
        with open_pdf(data) as pdf:
            return _findings(pdf)
    except Exception as exc:  # qpdf's own errors, and a structure no viewer could follow
        failure = exc
    log.info("qpdf does not read this PDF; judging active content by its bytes")
    if any(marker in data for marker in _RAW_MARKERS):
        return [f"unreadable structure with action names ({type(failure).__name__})"]
    return []


def _strip(data: bytes) -> bytes:
    """``data`` rewritten whole without its actions: objects no longer referenced (the
    scripts) are not written."""
    with open_pdf(data) as pdf:
        root = pdf.Root
        for key in ("/OpenAction", "/AA"):
            if key in root:
                del root[key]
        names = root.get("/Names")
        if isinstance(names, pikepdf.Dictionary) and "/JavaScript" in names:
            del names["/JavaScript"]
        for where, holder in _holders(pdf):
            if "/AA" in holder:
                del holder["/AA"]
            if where.endswith("annotation") and _is_active(holder.get("/A")):
                del holder["/A"]
        out = io.BytesIO()
        pdf.save(out, fix_metadata_version=False)
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
        except Exception as exc:  # qpdf's errors: refused below, as what cannot be stripped
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
