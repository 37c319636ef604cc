# mypy: disable-error-code="no-untyped-call"
# (pyHanko's PDF object constructors and writer methods are unannotated; every call would need
# its own ignore otherwise)
"""PDF-level work of the signing engine: refusing bad input, stamping the ID, text fields.

Everything here is synchronous, pure CPU work on pyHanko's reader and writers; no signatures.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from io import BytesIO

from pyhanko.pdf_utils import generic
from pyhanko.pdf_utils.generic import pdf_name
from pyhanko.pdf_utils.incremental_writer import IncrementalPdfFileWriter
from pyhanko.pdf_utils.misc import PdfError
from pyhanko.pdf_utils.reader import PdfFileReader
from pyhanko.pdf_utils.writer import BasePdfFileWriter, copy_into_new_writer
from pyhanko.sign.fields import enumerate_sig_fields

from core.errors import DocumentError, SigningError

from ._cjkfont import CjkFont, ShapedText

__all__ = [
    "FieldBox",
    "PdfInfo",
    "fill_text_fields",
    "inspect_document",
    "open_document",
    "prepare_document",
]

_CERTIFICATE_ID = re.compile(r"[0-9a-f]{32}")
_FIELD_NAME = re.compile(r"[A-Za-z0-9_\-]{1,64}")
# how far the certificate ID sits from the visible page's bottom-left corner, and its size
_ID_OFFSET_X = 12.0
_ID_OFFSET_Y = 10.0
_ID_FONT_SIZE = 7
_ID_FONT = "/KgIdHelv"
_FIELD_FONT = "/KgFieldFont"
_READ_ONLY = 1  # /Ff bit 1
_PRINT = 4  # annotation /F bit 3


@dataclass(frozen=True)
class FieldBox:
    """A text box to create in the PDF (``rect`` is x1, y1, x2, y2 in points, origin bottom-left)."""

    name: str
    page: int
    rect: tuple[float, float, float, float]


@dataclass(frozen=True)
class PdfInfo:
    """What the engine learnt about an accepted input document."""

    page_count: int
    size: int


def _refuse(code: str, message_en: str, message_ja: str, **details: object) -> DocumentError:
    return DocumentError(code, message_en, message_ja, details=dict(details) or None)


def open_document(data: bytes) -> PdfFileReader:
    """Parse ``data`` and refuse what the engine cannot sign; see :func:`inspect_document`."""
    head = data[:1024]
    if b"%PDF-" not in head:
        raise _refuse(
            "document.not_pdf",
            "The file is not a PDF document.",
            "PDFファイルではありません。PDF形式のファイルを指定してください。",
        )
    try:
        reader = PdfFileReader(BytesIO(data), strict=True)
        encrypted = reader.encrypted
    except (PdfError, ValueError, KeyError, IndexError, TypeError, AttributeError) as exc:
        raise _refuse(
            "document.damaged",
            "The PDF is damaged and cannot be read.",
            "PDFファイルが破損しているため読み込めません。元のファイルを確認してください。",
            reason=str(exc)[:200],
        ) from exc
    if encrypted:
        raise _refuse(
            "document.encrypted",
            "The PDF is encrypted or password-protected; remove the protection and upload it again.",
            "PDFが暗号化（パスワード保護）されています。保護を解除してから再度登録してください。",
        )
    try:
        page_count = _count_pages(reader)
        signed = any(True for _ in enumerate_sig_fields(reader, filled_status=True))
    except (PdfError, ValueError, KeyError, IndexError, TypeError, AttributeError) as exc:
        raise _refuse(
            "document.damaged",
            "The PDF is damaged and cannot be read.",
            "PDFファイルが破損しているため読み込めません。元のファイルを確認してください。",
            reason=str(exc)[:200],
        ) from exc
    if page_count == 0:
        raise _refuse(
            "document.empty",
            "The PDF has no pages.",
            "PDFにページがありません。",
        )
    if signed:
        # the certificate ID is stamped on page 1 before signing, which would invalidate an
        # existing signature: refuse instead of silently breaking it
        raise _refuse(
            "document.already_signed",
            "The PDF already carries a digital signature; adding the certificate ID would "
            "invalidate it. Upload the unsigned original.",
            "このPDFにはすでに電子署名が付いています。締結証明書IDの付記により既存の署名が無効になる"
            "ため受け付けられません。署名前の原本を登録してください。",
        )
    return reader


def _count_pages(reader: PdfFileReader) -> int:
    """Walk the page tree, resolving every page and its content references (catches damage)."""
    count = 0
    for page, _ref in _iter_pages(reader):
        contents = page.get("/Contents")
        if isinstance(contents, generic.ArrayObject):
            for item in contents:
                if isinstance(item, generic.IndirectObject):
                    item.get_object()
        count += 1
    return count


def _iter_pages(
    reader: PdfFileReader,
) -> list[tuple[generic.DictionaryObject, generic.IndirectObject]]:
    pages: list[tuple[generic.DictionaryObject, generic.IndirectObject]] = []
    seen: set[tuple[int, int]] = set()

    def walk(node_ref: generic.IndirectObject) -> None:
        key = (node_ref.idnum, node_ref.generation)
        if key in seen:
            raise PdfError("circular page tree")
        seen.add(key)
        node = node_ref.get_object()
        if not isinstance(node, generic.DictionaryObject):
            raise PdfError("page tree node is not a dictionary")
        if node.get("/Type") == "/Pages" or "/Kids" in node:
            for kid in node["/Kids"]:
                walk(kid)
        else:
            pages.append((node, node_ref))

    walk(reader.root.raw_get("/Pages"))
    return pages


def inspect_document(data: bytes) -> PdfInfo:
    """Accept or refuse an input PDF (see :meth:`SigningEngine.inspect`)."""
    reader = open_document(data)
    return PdfInfo(page_count=_count_pages(reader), size=len(data))


def _visible_box(page: generic.DictionaryObject) -> tuple[float, float, float, float]:
    box = page.get("/CropBox") or page.get("/MediaBox")
    if box is None:
        raise SigningError(
            "signing.page_box_missing",
            "Page 1 has no MediaBox.",
            "1ページ目の用紙サイズ（MediaBox）が見つかりません。",
        )
    x1, y1, x2, y2 = (float(v) for v in box)
    return min(x1, x2), min(y1, y2), max(x1, x2), max(y1, y2)


def _id_matrix(page: generic.DictionaryObject) -> tuple[float, ...]:
    """Text matrix putting the ID upright at the *displayed* bottom-left, whatever /Rotate says."""
    llx, lly, urx, ury = _visible_box(page)
    rotate = int(page.get("/Rotate", 0)) % 360
    dx, dy = _ID_OFFSET_X, _ID_OFFSET_Y
    if rotate == 90:
        return (0, 1, -1, 0, urx - dy, lly + dx)
    if rotate == 180:
        return (-1, 0, 0, -1, urx - dx, ury - dy)
    if rotate == 270:
        return (0, -1, 1, 0, llx + dy, ury - dx)
    return (1, 0, 0, 1, llx + dx, lly + dy)


def _helvetica() -> generic.DictionaryObject:
    return generic.DictionaryObject(
        {
            pdf_name("/Type"): pdf_name("/Font"),
            pdf_name("/Subtype"): pdf_name("/Type1"),
            pdf_name("/BaseFont"): pdf_name("/Helvetica"),
            pdf_name("/Encoding"): pdf_name("/WinAnsiEncoding"),
        }
    )


def _stamp_certificate_id(writer: BasePdfFileWriter, certificate_id: str) -> None:
    first_page = _first_page(writer)
    matrix = " ".join(f"{v:g}" for v in _id_matrix(first_page))
    # isolate the original content's graphics state so that a stray cm or colour cannot move or
    # hide the ID
    opening = writer.add_object(generic.StreamObject(stream_data=b"q\n"))
    text = (
        f"Q\nq {matrix} cm BT {_ID_FONT} {_ID_FONT_SIZE} Tf 0 g 0 0 Td (ID: {certificate_id}) Tj "
        f"ET Q\n"
    ).encode("ascii")
    closing = writer.add_object(generic.StreamObject(stream_data=text))
    writer.add_stream_to_page(0, opening, prepend=True)
    resources = generic.DictionaryObject(
        {
            pdf_name("/Font"): generic.DictionaryObject(
                {pdf_name(_ID_FONT): writer.add_object(_helvetica())}
            )
        }
    )
    writer.add_stream_to_page(0, closing, resources=resources)


def _first_page(writer: BasePdfFileWriter) -> generic.DictionaryObject:
    page_ref, _res = writer.find_page_for_modification(0)
    page = page_ref.get_object()
    assert isinstance(page, generic.DictionaryObject)
    return page


def _acroform(writer: BasePdfFileWriter) -> generic.DictionaryObject:
    """The document's AcroForm dictionary, created (or marked for update) as needed."""
    root = writer.root
    try:
        raw = root.raw_get("/AcroForm")
    except KeyError:
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
    fields = form.get("/Fields")
    if fields is None:
        form[pdf_name("/Fields")] = generic.ArrayObject()
    elif isinstance(form.raw_get("/Fields"), generic.IndirectObject):
        writer.mark_update(form.raw_get("/Fields"))
    return form


def _existing_field_names(form: generic.DictionaryObject) -> set[str]:
    names: set[str] = set()
    for field_ref in form.get("/Fields", ()):
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
) -> generic.StreamObject:
    """A form XObject of ``width`` x ``height`` points: a field's appearance stream."""
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


def prepare_document(data: bytes, *, certificate_id: str, fields: Sequence[FieldBox]) -> bytes:
    """Stamp the certificate ID on page 1 and create the empty text fields (one revision)."""
    if not _CERTIFICATE_ID.fullmatch(certificate_id):
        raise SigningError(
            "signing.certificate_id_invalid",
            "The completion-certificate ID must be 32 lower-case hex digits.",
            "締結証明書IDは32桁の16進数（小文字）で指定してください。",
        )
    reader = open_document(data)
    pages = _iter_pages(reader)
    _check_fields(fields, len(pages))
    if reader.xrefs.hybrid_xrefs_present:
        # pyHanko refuses to sign hybrid-xref files in strict mode (Word writes them): rewrite once
        # now, before any signature exists, so that every later revision is a plain increment
        buf = BytesIO()
        copy_into_new_writer(reader).write(buf)
        data = buf.getvalue()
        reader = PdfFileReader(BytesIO(data), strict=True)
        pages = _iter_pages(reader)
    writer = IncrementalPdfFileWriter.from_reader(reader)
    _stamp_certificate_id(writer, certificate_id)
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
        dr = form.get("/DR")
        if not isinstance(dr, generic.DictionaryObject):
            dr = generic.DictionaryObject()
            form[pdf_name("/DR")] = dr
        fonts = dr.get("/Font")
        if not isinstance(fonts, generic.DictionaryObject):
            fonts = generic.DictionaryObject()
            dr[pdf_name("/Font")] = fonts
        fonts[pdf_name(_FIELD_FONT)] = writer.add_object(_helvetica())
        form[pdf_name("/DA")] = generic.pdf_string(f"{_FIELD_FONT} 0 Tf 0 g")
        for box in fields:
            _page, page_ref = pages[box.page - 1]
            x1, y1, x2, y2 = box.rect
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
                        {pdf_name("/N"): writer.add_object(_form_xobject(x2 - x1, y2 - y1))}
                    ),
                }
            )
            widget_ref = writer.add_object(widget)
            form["/Fields"].append(widget_ref)
            writer.register_annotation(page_ref, widget_ref)
    out = BytesIO()
    writer.write(out)
    return out.getvalue()


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
        if field.get("/FT") != "/Tx":
            raise SigningError(
                "signing.unknown_field",
                f"Form field {name!r} is not a text field.",
                f"フォームフィールド {name!r} はテキストボックスではありません。",
            )
        flags = int(field.get("/Ff", 0))
        if flags & _READ_ONLY:
            raise SigningError(
                "signing.field_locked",
                f"Text field {name!r} was already filled and is read-only.",
                f"テキストボックス {name!r} はすでに記入済みのため変更できません。",
            )
        x1, y1, x2, y2 = (float(v) for v in field["/Rect"])
        field[pdf_name("/V")] = generic.TextStringObject(text.text)
        field[pdf_name("/Ff")] = generic.NumberObject(flags | _READ_ONLY)
        appearance = _text_appearance(
            text, width=abs(x2 - x1), height=abs(y2 - y1), font_ref=font_ref
        )
        field[pdf_name("/AP")] = generic.DictionaryObject(
            {pdf_name("/N"): writer.add_object(appearance)}
        )
        writer.mark_update(ref)


def _text_appearance(
    text: ShapedText, *, width: float, height: float, font_ref: generic.IndirectObject
) -> generic.StreamObject:
    padding = 2.0
    size = min(10.0, max(height - 2 * padding, 4.0))
    if text.advance:
        # shrink long values to fit the box rather than clipping them
        size = min(size, (width - 2 * padding) * 1000 / text.advance)
    size = max(size, 4.0)
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
    )
