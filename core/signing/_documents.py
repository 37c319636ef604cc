# mypy: disable-error-code="no-untyped-call"
# (pyHanko's PDF object constructors and writer methods are unannotated; every call would need
# its own ignore otherwise)
"""PDF-level work of the signing engine: refusing bad input, stamping the ID, text fields.

Everything here is synchronous, pure CPU work on pyHanko's reader and writers; no signatures.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from io import BytesIO
from typing import Any

from pyhanko.pdf_utils import generic
from pyhanko.pdf_utils.generic import pdf_name
from pyhanko.pdf_utils.incremental_writer import IncrementalPdfFileWriter
from pyhanko.pdf_utils.reader import PdfFileReader
from pyhanko.pdf_utils.writer import BasePdfFileWriter
from pyhanko.sign.fields import enumerate_sig_fields

from core.errors import DocumentError, SigningError

from . import _repair
from ._cjkfont import CjkFont, ShapedText
from ._streams import check_parsed_streams

__all__ = [
    "FieldBox",
    "LoadedDocument",
    "PdfInfo",
    "fill_text_fields",
    "inspect_document",
    "load_document",
    "open_document",
    "prepare_document",
    "release_reader",
]

log = logging.getLogger(__name__)

_CERTIFICATE_ID = re.compile(r"[0-9a-f]{32}")
_FIELD_NAME = re.compile(r"[A-Za-z0-9_\-]{1,64}")
# how far the certificate ID sits from the visible page's bottom-left corner, and its size
_ID_OFFSET_X = 12.0
_ID_OFFSET_Y = 10.0
_ID_FONT_SIZE = 7
_ID_FONT = "/KgIdHelv"
_ID_XOBJECT = "/KgIdStamp"
_ID_PADDING = 1.5  # the opaque white backing around the ID text, points
# Helvetica advance widths (1/1000 em) of the characters the ID line uses
_HELVETICA_WIDTHS = {
    **dict.fromkeys("0123456789abde", 556),
    "c": 500,
    "f": 278,
    "I": 278,
    "D": 722,
    ":": 278,
    " ": 278,
}
_FIELD_FONT = "/KgFieldFont"
_MAX_XMP = 4 * 1024 * 1024  # decoded bytes of a document XMP packet kept as it is
_READ_ONLY = 1  # /Ff bit 1
_PRINT = 4  # annotation /F bit 3


@dataclass(frozen=True)
class FieldBox:
    """A text box to create in the PDF (``rect`` is x1, y1, x2, y2 in points, origin bottom-left)."""

    name: str
    page: int
    rect: tuple[float, float, float, float]


@dataclass(frozen=True)
class PageArea:
    """A page's displayed area (CropBox clipped to MediaBox) in PDF points, origin bottom-left,
    and its /Rotate (0, 90, 180 or 270)."""

    left: float
    bottom: float
    right: float
    top: float
    rotation: int = 0


@dataclass(frozen=True)
class PdfInfo:
    """What the engine learnt about an accepted input document."""

    page_count: int
    size: int
    pages: tuple[PageArea, ...] = ()


def _refuse(code: str, message_en: str, message_ja: str, **details: object) -> DocumentError:
    return DocumentError(code, message_en, message_ja, details=dict(details) or None)


class _NeedsRebuild(Exception):
    """The strict reading failed, or found a shape the writers should not touch as it is."""


@dataclass(frozen=True)
class LoadedDocument:
    """An accepted upload as the engine signs it: ``data`` is the upload itself, or the file
    qpdf rebuilt from it (``rebuilt``), and ``reader`` pyHanko's strict reader over ``data``."""

    data: bytes
    reader: PdfFileReader
    pages: list[tuple[generic.DictionaryObject, generic.IndirectObject]]
    rebuilt: bool


def open_document(data: bytes) -> PdfFileReader:
    """Parse ``data`` and refuse what the engine cannot sign; see :func:`load_document`."""
    return load_document(data).reader


def load_document(data: bytes) -> LoadedDocument:
    """The one boundary around PDF parsing of an upload: the strict reader first, then qpdf's
    rebuild for what real viewers read but the strict reader refuses. Every failure of the PDF
    libraries becomes a coded ``document.*`` error; nothing else escapes."""
    if b"%PDF-" not in data[:1024]:
        raise _refuse(
            "document.not_pdf",
            "The file is not a PDF document.",
            "PDFファイルではありません。PDF形式のファイルを指定してください。",
        )
    check_parsed_streams(data)  # before any parser inflates an object stream whole
    try:
        return _checked(data, rebuilt=False)
    except DocumentError:
        raise
    except _NeedsRebuild as exc:
        log.info("strict reading refused an upload (%s); rebuilding it with qpdf", exc)
    except RecursionError as exc:  # a hostile nesting depth is damage, not a crash
        raise _repair.damaged("nesting too deep") from exc
    data = _repair.rebuild_tolerantly(data)
    try:
        return _checked(data, rebuilt=True)
    except DocumentError:
        raise
    except (_NeedsRebuild, RecursionError) as exc:
        raise _repair.damaged(str(exc.__cause__ or exc)) from exc


def _checked(data: bytes, *, rebuilt: bool) -> LoadedDocument:
    try:
        reader = PdfFileReader(BytesIO(data), strict=True)
        if reader.encrypted:
            # qpdf tells the two kinds apart: a password to open it, or owner restrictions only
            raise _NeedsRebuild("encrypted")
        if reader.xrefs.hybrid_xrefs_present:
            # pyHanko refuses to sign hybrid-xref files in strict mode (Word writes them)
            raise _NeedsRebuild("hybrid-reference file")
        pages = _iter_pages(reader)
        for page, _ref in pages:
            _check_page(page)
        if not rebuilt:
            # before reading every object: what qpdf repairs, and object streams too large for
            # pyHanko's reader, are rebuilt first
            repairs = _repair.qpdf_repairs(data)
            if repairs:
                raise _NeedsRebuild("; ".join(repairs)[:300])
        _read_everything(reader)
        trees = _check_trees(reader.root)
        if trees is not None:
            if rebuilt:
                raise _refuse(
                    "document.form_invalid",
                    f"The PDF's form or structure tree cannot be checked after signing: {trees}.",
                    "PDFのフォーム（入力欄）または文書構造の定義が不正なため、署名後の検証が"
                    "できません。フォームを含まない形で保存し直したPDFを登録してください。",
                    reason=trees[:200],
                )
            raise _NeedsRebuild(trees)
        signed = any(True for _ in enumerate_sig_fields(reader, filled_status=True))
        perms = _get(reader.root, "/Perms")
        certified = isinstance(perms, generic.DictionaryObject) and "/DocMDP" in perms
        _fields_of(reader.root)
        metadata = _get(reader.root, "/Metadata")
        if isinstance(metadata, generic.StreamObject):
            # decoded within a bound: pyHanko decodes the packet whole on every write
            packet = None
            if "/DecodeParms" not in metadata:
                filters = _repair.filter_names(_get(metadata, "/Filter"))
                packet = _repair.bounded_flate(metadata.encoded_data, filters or [], _MAX_XMP)
            if packet is None or not _repair.xmp_readable(packet):
                raise _NeedsRebuild("the XMP packet is not UTF-8, too large or undecodable")
    except (DocumentError, _NeedsRebuild):
        raise
    except Exception as exc:  # the library's failure on this file, whatever its class
        raise _NeedsRebuild(f"{type(exc).__name__}: {exc}") from exc
    if not pages:
        raise _refuse("document.empty", "The PDF has no pages.", "PDFにページがありません。")
    if signed or certified:
        # the certificate ID is stamped on page 1 before signing, which would invalidate an
        # existing signature: refuse instead of silently breaking it
        raise _refuse(
            "document.already_signed",
            "The PDF already carries a digital signature; adding the certificate ID would "
            "invalidate it. Upload the unsigned original.",
            "このPDFにはすでに電子署名が付いています。締結証明書IDの付記により既存の署名が無効になる"
            "ため受け付けられません。署名前の原本を登録してください。",
        )
    return LoadedDocument(data=data, reader=reader, pages=pages, rebuilt=rebuilt)


# objects reachable from the trailer that the strict reader parses before accepting an upload; a
# file with more is still accepted, the rest is left to the verifier's own budget
_MAX_OBJECTS = 20_000


def _read_everything(reader: PdfFileReader, *, newer_than: int | None = None) -> None:
    """Parse every object reachable from the trailer with pyHanko's reader (streams are not
    decoded); with ``newer_than`` (a revision index), only the objects written after that
    revision (the older ones were read before, from the very same bytes). Every signature's check later walks the whole object graph (pyHanko's difference
    analysis), so an object only the tolerant parsers read, e.g. a name with unescaped
    non-ASCII bytes as Chinese and Japanese producers write font names (``/\xba\xda\xcc\xe5``),
    would make ``keiyaku verify`` reject the product's own output. qpdf writes such objects in
    canonical form (``/#ba#da#cc#e5``), so the upload is rebuilt instead."""
    trailer = reader.trailer_view  # the newest value of every trailer key
    seen: set[tuple[int, int]] = set()
    # the catalog's graph first: an /Info that is part of it is a shared object (see below)
    fresh = None if newer_than is None else _written_after(reader, newer_than)
    if not _walk([trailer.raw_get("/Root")], seen, fresh):
        return
    extra = sorted(
        key
        for key in trailer.keys()
        if key not in _TRAILER_KEYS
        and isinstance(
            trailer.raw_get(key),
            generic.IndirectObject | generic.ArrayObject | generic.DictionaryObject,
        )
    )
    if extra:
        # a second path to document objects (qpdf's tests put /QTest there): pyHanko's check
        # of later revisions refuses an update to an object reachable from outside the catalog
        raise _NeedsRebuild(f"trailer entries {extra[:3]} refer to document objects")
    info = trailer.raw_get("/Info") if "/Info" in trailer else None
    if isinstance(info, generic.IndirectObject) and (info.idnum, info.generation) in seen:
        # every signature writes /ModDate into /Info, changing that document object
        raise _NeedsRebuild("the document information dictionary is also a document object")
    _walk(
        [
            trailer.raw_get(key)
            for key in trailer.keys()
            if key not in ("/Prev", "/XRefStm", "/Root")
        ],
        seen,
        fresh,
    )


def _written_after(
    reader: PdfFileReader, revision: int
) -> Callable[[generic.IndirectObject], bool]:
    """Whether a reference's newest definition comes after ``revision``."""
    xrefs = reader.xrefs

    def fresh(ref: generic.IndirectObject) -> bool:
        try:
            return bool(xrefs.get_last_change(ref.reference) > revision)
        except KeyError:  # a reference to nothing: parsing it costs nothing either way
            return True

    return fresh


# trailer and cross-reference stream entries of the specification (others are dropped in the
# rebuild when they refer to objects)
_TRAILER_KEYS = frozenset(
    {"/Root", "/Info", "/ID", "/Encrypt", "/Size", "/Prev", "/XRefStm", "/Type", "/W", "/Index",
     "/Filter", "/DecodeParms", "/Length"}
)  # fmt: skip


def _walk(
    stack: list[generic.PdfObject],
    seen: set[tuple[int, int]],
    fresh: Callable[[generic.IndirectObject], bool] | None = None,
) -> bool:
    """Parse what ``stack`` reaches (adding references to ``seen``); False when it stopped at
    :data:`_MAX_OBJECTS`. With ``fresh``, a reference it says no to is neither parsed nor
    followed: an object of an earlier revision, read (with all it reaches) by an earlier walk."""
    while stack:
        obj = stack.pop()
        if isinstance(obj, generic.IndirectObject):
            key = (obj.idnum, obj.generation)
            if key in seen:
                continue
            seen.add(key)
            if fresh is not None and not fresh(obj):
                continue
            if len(seen) > _MAX_OBJECTS:
                return False
            obj = obj.get_object()
        if isinstance(obj, generic.DictionaryObject):
            stack.extend(obj.raw_get(key) for key in obj.keys())
        elif isinstance(obj, generic.ArrayObject):
            stack.extend(obj.raw_get(i) for i in range(len(obj)))
    return True


def _check_trees(root: generic.DictionaryObject) -> str | None:
    """What pyHanko's difference analysis would refuse in the structure tree or the form's
    field list (None: nothing). It reads both for every signature; a structure element reached
    twice, or sibling fields of the same name, would make the product fail its own check."""
    tree = _get(root, "/StructTreeRoot")
    if isinstance(tree, generic.DictionaryObject):
        seen: set[tuple[int, int]] = set()
        stack: list[generic.DictionaryObject] = [tree]
        while stack:
            node = stack.pop()
            kids = _get(node, "/K")
            items = list(kids) if isinstance(kids, generic.ArrayObject) else [kids]
            raw = (
                [kids.raw_get(i) for i in range(len(kids))]
                if isinstance(kids, generic.ArrayObject)
                else [node.raw_get("/K") if "/K" in node else None]
            )
            for item, ref in zip(items, raw, strict=True):
                item = _resolve(item)
                if not isinstance(item, generic.DictionaryObject):
                    continue
                if _get(item, "/Type", "/StructElem") != "/StructElem":
                    continue
                if isinstance(ref, generic.IndirectObject):
                    key = (ref.idnum, ref.generation)
                    if key in seen:
                        return "a structure element reached twice in the structure tree"
                    seen.add(key)
                stack.append(item)
    form = _get(root, "/AcroForm")
    fields = _get(form, "/Fields") if isinstance(form, generic.DictionaryObject) else None
    if isinstance(fields, generic.ArrayObject):
        try:
            # pyHanko's own reader of field lists, so that the upload is held to exactly what its
            # difference analysis will hold the signed document to (private: pinned by the lock,
            # and tests/core/signing/test_real_world_pdfs.py fails if it moves)
            from pyhanko.sign.diff_analysis.form_rules_api import _list_fields

            list(_list_fields(fields, fields, None))
        except Exception as exc:  # pyHanko's own reason for refusing the field list
            return f"form fields: {exc}"
    return None


def _check_page(page: generic.DictionaryObject) -> None:
    """Resolve what the stamp and the fields will use (catches damage before any writing)."""
    _visible_box(page)
    _rotation(page)
    _content_refs(page)
    resources = _inherited(page, "/Resources")
    if resources is not None and not isinstance(resources, generic.DictionaryObject):
        raise _NeedsRebuild("page /Resources is not a dictionary")
    annots = _get(page, "/Annots")
    if annots is not None and not isinstance(annots, generic.ArrayObject | generic.NullObject):
        raise _NeedsRebuild("page /Annots is not an array")
    if isinstance(annots, generic.ArrayObject) and any(
        isinstance(annots.raw_get(i), generic.DictionaryObject) for i in range(len(annots))
    ):
        raise _NeedsRebuild("direct annotation dictionaries in a page's /Annots")


def _fields_of(root: generic.DictionaryObject) -> list[generic.PdfObject]:
    form = _get(root, "/AcroForm")
    if form is None or isinstance(form, generic.NullObject):
        return []
    if not isinstance(form, generic.DictionaryObject):
        raise _NeedsRebuild("/AcroForm is not a dictionary")
    fields = _get(form, "/Fields")
    if fields is None or isinstance(fields, generic.NullObject):
        return []
    if not isinstance(fields, generic.ArrayObject):
        raise _NeedsRebuild("/AcroForm /Fields is not an array")
    return list(fields)


def _count_pages(reader: PdfFileReader) -> int:
    return len(_iter_pages(reader))


def _iter_pages(
    reader: PdfFileReader,
) -> list[tuple[generic.DictionaryObject, generic.IndirectObject]]:
    pages: list[tuple[generic.DictionaryObject, generic.IndirectObject]] = []
    seen: set[tuple[int, int]] = set()

    def walk(node_ref: generic.PdfObject, depth: int) -> None:
        if not isinstance(node_ref, generic.IndirectObject):
            # a direct page-tree node cannot be updated on its own: qpdf makes it indirect
            raise _NeedsRebuild("direct object in the page tree")
        if depth > 64:
            raise _NeedsRebuild("page tree too deep")
        key = (node_ref.idnum, node_ref.generation)
        if key in seen:
            raise _NeedsRebuild("circular page tree or a page used twice")
        seen.add(key)
        node = node_ref.get_object()
        if not isinstance(node, generic.DictionaryObject):
            raise _NeedsRebuild("page tree node is not a dictionary")
        if _get(node, "/Type") == "/Pages" or "/Kids" in node:
            kids = node["/Kids"]
            if not isinstance(kids, generic.ArrayObject):
                raise _NeedsRebuild("/Kids is not an array")
            for kid in kids:
                walk(kid, depth + 1)
        else:
            pages.append((node, node_ref))

    walk(reader.root.raw_get("/Pages"), 0)
    return pages


def inspect_document(data: bytes) -> PdfInfo:
    """Accept or refuse an input PDF (see :meth:`SigningEngine.inspect`)."""
    return inspect_upload(data).info


class InspectedDocument:
    """An accepted upload, its :class:`PdfInfo`, and the strict reader that accepted it, kept
    for one :func:`prepare_document` of the same bytes: an upload is then parsed and checked
    once, not once to inspect and again to prepare (about half a create's fixed cost)."""

    def __init__(self, source: bytes, info: PdfInfo, loaded: LoadedDocument) -> None:
        self.source = source
        self.info = info
        # What signers will be shown before the stamp: the file qpdf rebuilt when the strict
        # reader refused the upload (pdfium can loop on a form tree the rebuild mends), else
        # None (the upload itself).
        self.rebuilt: bytes | None = loaded.data if loaded.rebuilt else None
        self._loaded: LoadedDocument | None = loaded

    def take(self, data: bytes) -> LoadedDocument | None:
        """The reader, once, and only for the very bytes inspected (``data is source``: a
        copy changed in between, e.g. scripts stripped, is parsed and checked afresh). Once:
        preparing writes into the reader's objects."""
        loaded, self._loaded = self._loaded, None
        return loaded if loaded is not None and data is self.source else None


def inspect_upload(data: bytes) -> InspectedDocument:
    """Accept or refuse an input PDF, keeping what was parsed for :func:`prepare_document`."""
    loaded = load_document(data)
    info = PdfInfo(
        page_count=len(loaded.pages),
        size=len(data),
        pages=tuple(PageArea(*_visible_box(page), _rotation(page)) for page, _ in loaded.pages),
    )
    return InspectedDocument(data, info, loaded)


def _resolve(value: generic.PdfObject | None) -> generic.PdfObject | None:
    return value.get_object() if isinstance(value, generic.IndirectObject) else value


def _get(dictionary: generic.DictionaryObject, key: str, default: Any = None) -> Any:
    """``dictionary[key]`` resolved when it is an indirect reference (pyHanko's ``get`` does not
    resolve; the PDF specification allows a reference almost anywhere)."""
    if key not in dictionary:
        return default
    return _resolve(dictionary.raw_get(key))


def _inherited(page: generic.DictionaryObject, key: str) -> generic.PdfObject | None:
    """``key`` of ``page`` or of the nearest page-tree ancestor that has it (MediaBox, CropBox,
    Rotate and Resources are inheritable), resolved; None when no node has it."""
    node: generic.PdfObject | None = page
    for _ in range(64):
        if not isinstance(node, generic.DictionaryObject):
            return None
        if key in node:
            value = _resolve(node.raw_get(key))
            return None if isinstance(value, generic.NullObject) else value
        node = _resolve(node.raw_get("/Parent")) if "/Parent" in node else None
    raise _NeedsRebuild("page tree /Parent chain too long")


def _rectangle(value: generic.PdfObject | None) -> tuple[float, float, float, float] | None:
    if not isinstance(value, generic.ArrayObject) or len(value) != 4:
        return None
    x1, y1, x2, y2 = (float(_resolve(v)) for v in value)  # type: ignore[arg-type]
    return min(x1, x2), min(y1, y2), max(x1, x2), max(y1, y2)


def _visible_box(page: generic.DictionaryObject) -> tuple[float, float, float, float]:
    """The displayed area: the CropBox clipped to the MediaBox, both read through inheritance
    (a missing MediaBox is US Letter, as viewers take it)."""
    media = _rectangle(_inherited(page, "/MediaBox")) or (0.0, 0.0, 612.0, 792.0)
    crop = _rectangle(_inherited(page, "/CropBox"))
    if crop is not None:
        box = (
            max(media[0], crop[0]),
            max(media[1], crop[1]),
            min(media[2], crop[2]),
            min(media[3], crop[3]),
        )
        if box[2] > box[0] and box[3] > box[1]:
            media = box
    if media[2] - media[0] <= 0 or media[3] - media[1] <= 0:
        raise _NeedsRebuild("page has an empty MediaBox")
    return media


def _rotation(page: generic.DictionaryObject) -> int:
    """/Rotate read through inheritance, as 0, 90, 180 or 270 (viewers ignore other values)."""
    value = _inherited(page, "/Rotate")
    if value is None:
        return 0
    rotate = int(value) % 360  # type: ignore[call-overload]
    return rotate if rotate in (0, 90, 180, 270) else 0


def _content_refs(page: generic.DictionaryObject) -> list[generic.IndirectObject]:
    """The page's content streams in order, whatever the layout: none, one stream, a direct
    array or an indirect array of streams (null and non-stream items skipped, as viewers do)."""
    if "/Contents" not in page:
        return []
    raw = page.raw_get("/Contents")
    resolved = _resolve(raw)
    if isinstance(resolved, generic.StreamObject):
        if not isinstance(raw, generic.IndirectObject):
            raise _NeedsRebuild("direct content stream")
        return [raw]
    if isinstance(resolved, generic.ArrayObject):
        refs = []
        for item in resolved:
            if isinstance(item, generic.IndirectObject) and isinstance(
                item.get_object(), generic.StreamObject
            ):
                refs.append(item)
        return refs
    return []


def _id_matrix(page: generic.DictionaryObject, scale: float = 1.0) -> tuple[float, ...]:
    """Matrix putting the ID upright at the *displayed* bottom-left, whatever /Rotate says."""
    llx, lly, urx, ury = _visible_box(page)
    rotate = _rotation(page)
    dx, dy = _ID_OFFSET_X * scale, _ID_OFFSET_Y * scale
    s = scale
    if rotate == 90:
        return (0, s, -s, 0, urx - dy, lly + dx)
    if rotate == 180:
        return (-s, 0, 0, -s, urx - dx, ury - dy)
    if rotate == 270:
        return (0, -s, s, 0, llx + dy, ury - dx)
    return (s, 0, 0, s, llx + dx, lly + dy)


def _helvetica() -> generic.DictionaryObject:
    return generic.DictionaryObject(
        {
            pdf_name("/Type"): pdf_name("/Font"),
            pdf_name("/Subtype"): pdf_name("/Type1"),
            pdf_name("/BaseFont"): pdf_name("/Helvetica"),
            pdf_name("/Encoding"): pdf_name("/WinAnsiEncoding"),
        }
    )


def _stamp_form(text: str) -> tuple[generic.StreamObject, float, float]:
    """The ID line as a form XObject with its own font resource: black Helvetica on a small
    opaque white backing (legible on dark scans and over existing ink); its width and height."""
    advance = sum(_HELVETICA_WIDTHS[c] for c in text) * _ID_FONT_SIZE / 1000
    width = advance + 2 * _ID_PADDING
    height = _ID_FONT_SIZE + 2 * _ID_PADDING
    content = (
        f"q 1 g 0 0 {width:.2f} {height:.2f} re f Q "
        f"BT {_ID_FONT} {_ID_FONT_SIZE} Tf 0 g {_ID_PADDING:g} {_ID_PADDING + 1.5:g} Td "
        f"({text}) Tj ET\n"
    ).encode("ascii")
    resources = generic.DictionaryObject(
        {pdf_name("/Font"): generic.DictionaryObject({pdf_name(_ID_FONT): _helvetica()})}
    )
    return _form_xobject(width, height, content=content, resources=resources), width, height


def _stamp_certificate_id(
    writer: BasePdfFileWriter,
    page: generic.DictionaryObject,
    page_ref: generic.IndirectObject,
    certificate_id: str,
) -> None:
    """Draw the ID at the displayed bottom-left of ``page`` whatever its content layout: the
    page's /Contents becomes [q, original streams..., Q + stamp] and its /Resources a copy of
    the inherited ones plus the stamp's form XObject (which carries its own font)."""
    form, width, height = _stamp_form(f"ID: {certificate_id}")
    llx, lly, urx, ury = _visible_box(page)
    shown_w, shown_h = urx - llx, ury - lly
    if _rotation(page) in (90, 270):
        shown_w, shown_h = shown_h, shown_w
    # on a tiny page the ID shrinks to fit (offsets included), never off the page
    scale = min(
        1.0,
        shown_w / (width + 2 * _ID_OFFSET_X),
        shown_h / (height + 2 * _ID_OFFSET_Y),
    )
    matrix = " ".join(f"{v:.4f}" for v in _id_matrix(page, scale))
    resources = _inherited(page, "/Resources")
    own = generic.DictionaryObject()
    if isinstance(resources, generic.DictionaryObject):
        for key in resources:
            own[key] = resources.raw_get(key)
    xobjects = generic.DictionaryObject()
    existing = _get(own, "/XObject")
    if isinstance(existing, generic.DictionaryObject):
        for key in existing:
            xobjects[key] = existing.raw_get(key)
    name = _ID_XOBJECT
    while name in xobjects:
        name += "X"
    xobjects[pdf_name(name)] = writer.add_object(form)
    own[pdf_name("/XObject")] = xobjects
    # isolate the original content's graphics state so that a stray cm or colour cannot move or
    # hide the ID
    opening = writer.add_object(generic.StreamObject(stream_data=b"q\n"))
    closing = writer.add_object(
        generic.StreamObject(stream_data=f"\nQ\nq {matrix} cm {name} Do Q\n".encode("ascii"))
    )
    page[pdf_name("/Contents")] = generic.ArrayObject([opening, *_content_refs(page), closing])
    page[pdf_name("/Resources")] = own
    writer.mark_update(page_ref)


def _acroform(writer: BasePdfFileWriter) -> generic.DictionaryObject:
    """The document's AcroForm dictionary, created (or marked for update) as needed."""
    root = writer.root
    raw = root.raw_get("/AcroForm") if "/AcroForm" in root else None
    if raw is None or isinstance(_resolve(raw), generic.NullObject):
        form = generic.DictionaryObject({pdf_name("/Fields"): generic.ArrayObject()})
        root[pdf_name("/AcroForm")] = writer.add_object(form)
        writer.update_root()
        return form
    if isinstance(raw, generic.IndirectObject):
        writer.mark_update(raw)
        form = raw.get_object()
    else:
        writer.update_root()
        form = raw
    assert isinstance(form, generic.DictionaryObject)
    fields = _get(form, "/Fields")
    if not isinstance(fields, generic.ArrayObject):
        form[pdf_name("/Fields")] = generic.ArrayObject()
    elif isinstance(form.raw_get("/Fields"), generic.IndirectObject):
        writer.mark_update(form.raw_get("/Fields"))
    return form


def _existing_field_names(form: generic.DictionaryObject) -> set[str]:
    names: set[str] = set()
    for field_ref in _get(form, "/Fields", ()):
        field = field_ref.get_object()
        if isinstance(field, generic.DictionaryObject) and "/T" in field:
            names.add(str(field["/T"]))
    return names


def _form_xobject(
    width: float,
    height: float,
    *,
    content: bytes = b"",
    resources: generic.DictionaryObject | None = None,
    rotation: int = 0,
) -> generic.StreamObject:
    """A form XObject of ``width`` x ``height`` points: a field's appearance stream, turned
    counter-clockwise by ``rotation`` (a widget's /MK /R) so that it reads upright on a page
    displayed turned clockwise by the same angle."""
    entries: dict[generic.NameObject, generic.PdfObject] = {
        pdf_name("/Type"): pdf_name("/XObject"),
        pdf_name("/Subtype"): pdf_name("/Form"),
        pdf_name("/BBox"): generic.ArrayObject(
            [
                generic.FloatObject(0),
                generic.FloatObject(0),
                generic.FloatObject(width),
                generic.FloatObject(height),
            ]
        ),
    }
    if resources is not None:
        entries[pdf_name("/Resources")] = resources
    if rotation:
        a, b, c, d = {90: (0, 1, -1, 0), 180: (-1, 0, 0, -1), 270: (0, -1, 1, 0)}[rotation]
        entries[pdf_name("/Matrix")] = generic.ArrayObject(
            generic.NumberObject(v) for v in (a, b, c, d, 0, 0)
        )
    return generic.StreamObject(entries, stream_data=content)


def _check_fields(fields: Sequence[FieldBox], page_count: int) -> None:
    seen: set[str] = set()
    for box in fields:
        if not _FIELD_NAME.fullmatch(box.name):
            raise SigningError(
                "signing.field_invalid",
                f"Field name {box.name!r} must be 1-64 ASCII letters, digits, '_' or '-'.",
                f"テキストボックス名 {box.name!r} が不正です（半角英数字・_・- の64文字以内）。",
            )
        if box.name in seen:
            raise SigningError(
                "signing.field_invalid",
                f"Field name {box.name!r} is used twice.",
                f"テキストボックス名 {box.name!r} が重複しています。",
            )
        seen.add(box.name)
        if not 1 <= box.page <= page_count:
            raise SigningError(
                "signing.field_invalid",
                f"Field {box.name!r} is on page {box.page}, but the document has {page_count}.",
                f"テキストボックス {box.name!r} のページ {box.page} は存在しません"
                f"（全{page_count}ページ）。",
            )
        x1, y1, x2, y2 = box.rect
        if x2 <= x1 or y2 <= y1:
            raise SigningError(
                "signing.field_invalid",
                f"Field {box.name!r} has an empty rectangle.",
                f"テキストボックス {box.name!r} の大きさが0です。",
            )


def prepare_document(
    data: bytes,
    *,
    certificate_id: str,
    fields: Sequence[FieldBox],
    inspected: InspectedDocument | None = None,
) -> bytes:
    """Stamp the certificate ID on page 1 and create the empty text fields (one revision).

    A file the strict reader refuses is rebuilt by qpdf first (see :mod:`._repair`), and so is
    one that pyHanko's writer cannot update as it is; the result is then the rebuilt file plus
    the one revision. ``inspected`` (from :func:`inspect_upload` of these same bytes) spares
    parsing and checking them again."""
    if not _CERTIFICATE_ID.fullmatch(certificate_id):
        raise SigningError(
            "signing.certificate_id_invalid",
            "The completion-certificate ID must be 32 lower-case hex digits.",
            "締結証明書IDは32桁の16進数（小文字）で指定してください。",
        )
    loaded = (inspected.take(data) if inspected is not None else None) or load_document(data)
    _check_fields(fields, len(loaded.pages))
    try:
        return _prepared(loaded, certificate_id, fields)
    except (DocumentError, SigningError):
        raise
    except Exception as exc:
        if loaded.rebuilt:
            raise _repair.damaged(f"{type(exc).__name__}: {exc}") from exc
        log.info("writing the prepared revision failed (%s); rebuilding with qpdf", exc)
    finally:
        release_reader(loaded.reader)
    try:
        loaded = _checked(_repair.rebuild_tolerantly(data), rebuilt=True)
        return _prepared(loaded, certificate_id, fields)
    except (DocumentError, SigningError):
        raise
    except Exception as exc:
        raise _repair.damaged(f"{type(exc).__name__}: {exc}") from exc
    finally:
        release_reader(loaded.reader)


def release_reader(reader: PdfFileReader) -> None:
    """Drop what ``reader`` holds (the objects it parsed, a document's streams among them, and
    through its stream the file it read) once it is done with. Its objects refer back to it, a
    reference cycle: left alone, all of it waits for the garbage collector's rare full pass,
    and a server keeps several creates' documents at once (about 60 MB more resident for
    each 20 MB create until then)."""
    reader.resolved_objects.clear()
    reader.stream.close()


def _prepared(loaded: LoadedDocument, certificate_id: str, fields: Sequence[FieldBox]) -> bytes:
    writer = IncrementalPdfFileWriter.from_reader(loaded.reader)
    pages = loaded.pages
    first_page, first_ref = pages[0]
    _strip_usage_rights(writer)
    _stamp_certificate_id(writer, first_page, first_ref, certificate_id)
    if fields:
        form = _acroform(writer)
        taken = _existing_field_names(form)
        clash = sorted(taken & {f.name for f in fields})
        if clash:
            raise SigningError(
                "signing.field_invalid",
                f"The document already has form fields named {clash}.",
                f"同名のフォームフィールドがすでに存在します: {clash}",
            )
        # copies, so that an indirect /DR or /Font shared elsewhere is never changed in place
        dr = generic.DictionaryObject()
        old_dr = _get(form, "/DR")
        if isinstance(old_dr, generic.DictionaryObject):
            for key in old_dr:
                dr[key] = old_dr.raw_get(key)
        fonts = generic.DictionaryObject()
        old_fonts = _get(dr, "/Font")
        if isinstance(old_fonts, generic.DictionaryObject):
            for key in old_fonts:
                fonts[key] = old_fonts.raw_get(key)
        fonts[pdf_name(_FIELD_FONT)] = writer.add_object(_helvetica())
        dr[pdf_name("/Font")] = fonts
        form[pdf_name("/DR")] = dr
        form[pdf_name("/DA")] = generic.pdf_string(f"{_FIELD_FONT} 0 Tf 0 g")
        for box in fields:
            page, page_ref = pages[box.page - 1]
            x1, y1, x2, y2 = box.rect
            rotation = _rotation(page)
            width, height = (y2 - y1, x2 - x1) if rotation in (90, 270) else (x2 - x1, y2 - y1)
            widget = generic.DictionaryObject(
                {
                    pdf_name("/Type"): pdf_name("/Annot"),
                    pdf_name("/Subtype"): pdf_name("/Widget"),
                    pdf_name("/FT"): pdf_name("/Tx"),
                    pdf_name("/T"): generic.pdf_string(box.name),
                    pdf_name("/V"): generic.pdf_string(""),
                    pdf_name("/Ff"): generic.NumberObject(0),
                    pdf_name("/F"): generic.NumberObject(_PRINT),
                    pdf_name("/Rect"): generic.ArrayObject(
                        generic.FloatObject(v) for v in box.rect
                    ),
                    pdf_name("/P"): page_ref,
                    pdf_name("/DA"): generic.pdf_string(f"{_FIELD_FONT} 10 Tf 0 g"),
                    pdf_name("/AP"): generic.DictionaryObject(
                        {
                            pdf_name("/N"): writer.add_object(
                                _form_xobject(width, height, rotation=rotation)
                            )
                        }
                    ),
                }
            )
            if rotation:
                # the box turns with the page, so its text reads upright as displayed
                widget[pdf_name("/MK")] = generic.DictionaryObject(
                    {pdf_name("/R"): generic.NumberObject(rotation)}
                )
            widget_ref = writer.add_object(widget)
            form["/Fields"].append(widget_ref)
            _add_annotation(writer, page, page_ref, widget_ref)
    out = BytesIO()
    writer.write(out)
    written = out.getvalue()
    # every later step reads this revision with the strict reader (signing, sealing, verify):
    # one it cannot read (pyHanko writes some names it then refuses, e.g. qpdf's
    # weird-tokens.pdf) is a failure of this write, not of those steps. The objects of the
    # accepted file were all read when it was loaded, from these same bytes: only what this
    # write added is read again (a third of a 1 MB create's parsing, the whole file again).
    reader = PdfFileReader(BytesIO(written), strict=True)
    try:
        appended = written.startswith(loaded.data) and reader.xrefs.total_revisions > 1
        _read_everything(reader, newer_than=reader.xrefs.total_revisions - 2 if appended else None)
    finally:
        release_reader(reader)  # nor does the output wait for this reader's cycle
    return written


def _strip_usage_rights(writer: IncrementalPdfFileWriter) -> None:
    """Drop Adobe Reader usage rights (/Perms /UR3, /UR): their signature covers the whole
    file, so the ID stamp breaks it anyway and Reader would then show the document as changed.
    The rights only unlock Reader features; the content stays as it is."""
    perms = _get(writer.root, "/Perms")
    if not isinstance(perms, generic.DictionaryObject):
        return
    if not ({"/UR3", "/UR"} & set(perms.keys())):
        return
    log.info("removing usage-rights signatures %s before the first signature", list(perms))
    del writer.root["/Perms"]
    writer.update_root()


def _add_annotation(
    writer: IncrementalPdfFileWriter,
    page: generic.DictionaryObject,
    page_ref: generic.IndirectObject,
    annotation: generic.IndirectObject,
) -> None:
    """Append ``annotation`` to the page's /Annots: a direct or indirect array, null or none."""
    raw = page.raw_get("/Annots") if "/Annots" in page else None
    annots = _resolve(raw)
    if isinstance(annots, generic.ArrayObject):
        annots.append(annotation)
        if isinstance(raw, generic.IndirectObject):
            writer.mark_update(raw)
            return
    else:
        page[pdf_name("/Annots")] = generic.ArrayObject([annotation])
    writer.mark_update(page_ref)


def fill_text_fields(
    writer: IncrementalPdfFileWriter, values: Mapping[str, str], *, font: CjkFont | None
) -> None:
    """Set value, appearance and ReadOnly on the named text fields, in the writer's new revision."""
    if not values:
        return
    if font is None:
        raise SigningError(
            "signing.font_missing",
            "Filling text fields needs a CJK font (font_path).",
            "テキストボックスの記入に必要な日本語フォントが設定されていません。",
        )
    try:
        field_refs = writer.root["/AcroForm"]["/Fields"]
    except KeyError:
        field_refs = generic.ArrayObject()
    by_name: dict[str, generic.IndirectObject] = {}
    for ref in field_refs:
        field = ref.get_object()
        if isinstance(field, generic.DictionaryObject) and "/T" in field:
            by_name[str(field["/T"])] = ref
    missing = sorted(set(values) - set(by_name))
    if missing:
        raise SigningError(
            "signing.unknown_field",
            f"The document has no text fields named {missing}.",
            f"指定されたテキストボックスが文書にありません: {missing}",
        )
    shaped = {name: font.shape(value) for name, value in values.items()}
    font_ref = font.embed(writer, shaped.values())
    for name, text in shaped.items():
        ref = by_name[name]
        field = ref.get_object()
        if _get(field, "/FT") != "/Tx":
            raise SigningError(
                "signing.unknown_field",
                f"Form field {name!r} is not a text field.",
                f"フォームフィールド {name!r} はテキストボックスではありません。",
            )
        flags = int(_get(field, "/Ff", 0))
        if flags & _READ_ONLY:
            raise SigningError(
                "signing.field_locked",
                f"Text field {name!r} was already filled and is read-only.",
                f"テキストボックス {name!r} はすでに記入済みのため変更できません。",
            )
        x1, y1, x2, y2 = (float(_resolve(v)) for v in field["/Rect"])  # type: ignore[arg-type]
        field[pdf_name("/V")] = generic.TextStringObject(text.text)
        field[pdf_name("/Ff")] = generic.NumberObject(flags | _READ_ONLY)
        mk = _get(field, "/MK")
        rotation = int(_get(mk, "/R", 0)) % 360 if isinstance(mk, generic.DictionaryObject) else 0
        rotation = rotation if rotation in (90, 180, 270) else 0
        width, height = abs(x2 - x1), abs(y2 - y1)
        if rotation in (90, 270):
            width, height = height, width
        appearance = _text_appearance(
            text, width=width, height=height, font_ref=font_ref, rotation=rotation
        )
        field[pdf_name("/AP")] = generic.DictionaryObject(
            {pdf_name("/N"): writer.add_object(appearance)}
        )
        writer.mark_update(ref)


_FIELD_PADDING = 2.0  # points between a box's edge and its text
_FIELD_MAX_SIZE = 10.0  # points: a value is never drawn larger
MIN_FIELD_FONT_SIZE = 5.0  # points: a value needing less does not fit (it would be clipped)


def field_font_size(advance: int, *, width: float, height: float) -> float:
    """The font size a value of ``advance`` (1/1000 em) is drawn at in a box of ``width`` by
    ``height`` points: as large as the box's height allows (10 pt at most), shrunk so that the
    whole value fits the width rather than being clipped."""
    size = min(_FIELD_MAX_SIZE, max(height - 2 * _FIELD_PADDING, 4.0))
    if advance:
        size = min(size, (width - 2 * _FIELD_PADDING) * 1000 / advance)
    return size


def field_fits(advance: int, *, width: float, height: float) -> bool:
    """Whether a value fits the box whole and legible: the width shrinks it no further than
    :data:`MIN_FIELD_FONT_SIZE` (nor below what the box's height allows)."""
    height_size = min(_FIELD_MAX_SIZE, max(height - 2 * _FIELD_PADDING, 4.0))
    return field_font_size(advance, width=width, height=height) >= min(
        height_size, MIN_FIELD_FONT_SIZE
    )


def _text_appearance(
    text: ShapedText,
    *,
    width: float,
    height: float,
    font_ref: generic.IndirectObject,
    rotation: int = 0,
) -> generic.StreamObject:
    padding = _FIELD_PADDING
    # Values are checked to fit when entered (core.text_boxes.check_values_fit); the floor
    # only guards fields filled before that check existed.
    size = max(field_font_size(text.advance, width=width, height=height), 4.0)
    baseline = max((height - size) / 2 + 0.12 * size, 0.5)
    ops = (
        f"/Tx BMC q {padding - 1:g} {0:g} {width - 2 * padding + 2:g} {height:g} re W n "
        f"BT {_FIELD_FONT} {size:.2f} Tf 0 g {padding:g} {baseline:.2f} Td "
    ).encode("ascii")
    ops += text.show_operator() + b" ET Q EMC"
    fonts = generic.DictionaryObject({pdf_name(_FIELD_FONT): font_ref})
    return _form_xobject(
        width,
        height,
        content=ops,
        resources=generic.DictionaryObject({pdf_name("/Font"): fonts}),
        rotation=rotation,
    )
