"""The tolerant second reading of an upload: qpdf (through pikepdf) rebuilds what pyHanko's strict
reader refuses but real viewers read (a ``0000000000 65536 f`` xref entry, orphaned generations,
hybrid-reference files, damaged xref tables, direct page objects in the page tree).

The rebuilt file is written once, before any signature exists, so that every later revision is a
plain increment of it; the upload itself stays in the record as revision 1. Stream data is copied
as it is (never decoded): a Flate bomb costs no more to rebuild than its compressed size.
"""

from __future__ import annotations

import logging
import re
import zlib
from collections.abc import Iterable, Iterator, Sequence
from io import BytesIO

import pikepdf

from core.errors import DocumentError
from core.qpdf import open_pdf

__all__ = ["qpdf_repairs", "rebuild", "rebuild_tolerantly"]

log = logging.getLogger(__name__)

DAMAGED_EN = "The PDF is damaged and cannot be read."
DAMAGED_JA = "PDFファイルが破損しているため読み込めません。元のファイルを確認してください。"
ENCRYPTED_EN = (
    "The PDF is encrypted or password-protected; remove the protection and upload it again."
)
ENCRYPTED_JA = "PDFが暗号化（パスワード保護）されています。保護を解除してから再度登録してください。"


def damaged(reason: str) -> DocumentError:
    """``document.damaged`` with the library's reason (shortened) in the details."""
    return DocumentError(
        "document.damaged", DAMAGED_EN, DAMAGED_JA, details={"reason": reason[:200]}
    )


def encrypted() -> DocumentError:
    """``document.encrypted``: opening the file needs a password."""
    return DocumentError("document.encrypted", ENCRYPTED_EN, ENCRYPTED_JA)


def restricted(denied: list[str] | None = None) -> DocumentError:
    """``document.restricted``: opens without a password but its owner password restricts it
    (``denied`` names what is forbidden: modify, print, copy, ...)."""
    return DocumentError(
        "document.restricted",
        "The PDF opens without a password but its owner password restricts it "
        f"({', '.join(denied or ['restrictions'])} not allowed). A signed copy can keep neither "
        "the restriction nor the document unchanged, and the gateway does not lift an author's "
        "restriction on its own: upload a copy saved without the permission password.",
        "PDFに権限パスワード（印刷・変更・コピー等の制限）が設定されています。署名には証明書IDの"
        "付記と署名の追加（文書への書き込み）が必要ですが、作成者が設定した制限を本システムが"
        "無断で解除することはできないため受け付けられません。"
        "パスワード保護（権限制限）を解除したPDFをアップロードしてください。",
        details={"denied": denied} if denied else None,
    )


# Owner-password-only files (no password to open, "permissions" set by an owner password).
#
# pyHanko can sign them as they are, but only by writing every later revision (the ID stamp, the
# filled fields, each signature, DSS, every document timestamp and archive renewal) encrypted with
# the file's own, often RC4, security handler; every stage of the product (page images, filling,
# signing, DSS, timestamps, verify, renewals years later) would then need the file key, and an
# encrypted file is no archival (PDF/A) format. Removing the encryption instead is what qpdf's
# rebuild does. Whether that weakens anything depends on the permissions:
#
# * all operations allowed (P grants print, modify, copy, annotate, fill, assemble, accessibility,
#   high-quality print): the encryption protects nothing. The empty user password lets anyone
#   derive the key, so there is no confidentiality, and no restriction is lost. Such files are
#   accepted: decrypted once in the rebuild before the first signature (the upload itself is kept
#   unchanged as the envelope's original revision), and signed unencrypted.
# * anything denied: the signed copy would either be written against the author's ban on
#   modification, or lose the print/copy restrictions the author set. That is the author's call,
#   not the gateway's, so the upload is refused with document.restricted saying what to do.
_PERMISSIONS = {
    "modify_other": "modify",
    "modify_annotation": "annotate",
    "modify_form": "fill-in",
    "modify_assembly": "assemble",
    "print_lowres": "print",
    "print_highres": "high-quality print",
    "extract": "copy",
    "accessibility": "accessibility",
}


def _denied(pdf: pikepdf.Pdf) -> list[str]:
    """What the owner password of an encrypted ``pdf`` forbids (empty: nothing)."""
    allow = pdf.allow
    return [label for name, label in _PERMISSIONS.items() if not getattr(allow, name)]


# a classic xref entry and what follows it: the specification wants exactly two end-of-line bytes.
# The pattern starts at the space after the 10-digit offset (checked by :func:`_entry_seps`): a
# pattern starting with a digit class, or behind a look-behind, makes Python's regex engine try
# every byte of the file (75 ms a MB, twice per upload); a leading literal is searched for fast.
_XREF_ENTRY = re.compile(rb" [0-9]{5} [fn]([ \r\n]*)")
_DIGITS = frozenset(b"0123456789")


def _entry_seps(data: bytes) -> Iterator[bytes]:
    """What follows each classic xref entry of ``data`` (10 digits not preceded by a digit, a
    space, 5 digits, a space, f or n): the bytes the old whole-pattern search found."""
    for match in _XREF_ENTRY.finditer(data):
        start = match.start()
        if (
            start >= 10
            and all(byte in _DIGITS for byte in data[start - 10 : start])
            and (start == 10 or data[start - 11] not in _DIGITS)
        ):
            yield match.group(1)


def qpdf_repairs(data: bytes) -> list[str]:
    """What qpdf had to repair to read ``data`` (empty for a sound file): its warnings while
    reading every object (streams are not decoded), and classic xref entries not 20 bytes long
    (pyHanko and qpdf read them, MuPDF calls them broken). Such a file is rebuilt before the
    first signature, or every signed copy would carry the damage."""
    problems = [
        f"xref entry followed by {sep!r}"
        for sep in _entry_seps(data)
        if sep not in (b" \r", b" \n", b"\r\n")
    ][:1]
    try:
        with open_pdf(data) as pdf:
            largest = 0
            for obj in pdf.objects:
                if isinstance(obj, pikepdf.Stream) and obj.get("/Type") == "/ObjStm":
                    largest = max(largest, _object_count(obj))
                if isinstance(obj, pikepdf.Stream) and isinstance(
                    obj.get("/Filter"), pikepdf.String
                ):
                    problems.append("a stream /Filter written as a string")
            problems.extend(str(w) for w in pdf.get_warnings()[:5])
            if _undecodable_contents(pdf):
                problems.append("a page content stream or an image cannot be decoded")
            if largest > MAX_OBJECT_STREAM:
                problems.append(f"an object stream of {largest} objects")
    except Exception as exc:  # the strict reader read it; let the rebuild report the damage
        problems.append(f"{type(exc).__name__}: {exc}")
    return problems


_MAX_XMP = 4 * 1024 * 1024
# pyHanko's reader scans an object stream's header from the start for every object it takes
# from it: reading all N objects costs N^2/2 header entries (65,542 objects in one stream, as in
# pdf.js's bug1978317.pdf, took longer than any time-out; verify reads every object for each
# signature). Larger object streams are written out as plain objects in the rebuild.
MAX_OBJECT_STREAM = 1000


def _object_count(stream: pikepdf.Stream) -> int:
    try:
        return int(stream.get("/N", 0))
    except (TypeError, ValueError):
        return 0


def _large_object_streams(pdf: pikepdf.Pdf) -> bool:
    return any(
        isinstance(obj, pikepdf.Stream)
        and obj.get("/Type") == "/ObjStm"
        and _object_count(obj) > MAX_OBJECT_STREAM
        for obj in pdf.objects
    )


def bounded_flate(raw: bytes, filters: Sequence[str], limit: int) -> bytes | None:
    """``raw`` decoded through ``filters`` (Flate only, applied in order), never producing more
    than ``limit + 1`` bytes at any stage; None when the result would be over ``limit``, a
    filter is not Flate or the data is corrupt. The XMP packet is decoded whole by pyHanko on
    every write: a few kilobytes of nested Flate can inflate to gigabytes."""
    data = raw
    for name in filters:
        if name != "/FlateDecode":
            return None
        try:
            data = zlib.decompressobj().decompress(data, limit + 1)
        except zlib.error:
            return None
        if len(data) > limit:
            return None
    return data if len(data) <= limit else None


def filter_names(value: object) -> list[str] | None:
    """The names of a stream's /Filter entry (a name or an array of names), None when absent;
    anything else gives a name no decoder has."""
    if value is None:
        return []
    try:
        if isinstance(value, str | pikepdf.Name):
            return [str(value)]
        return [str(item) for item in value]  # type: ignore[attr-defined]
    except (TypeError, UnicodeDecodeError):  # not names, or a name of bytes that are not UTF-8
        return ["?"]


def xmp_readable(stream: bytes) -> bool:
    """Whether an XMP packet is what pyHanko can update on every later write (UTF-8 XML)."""
    try:
        stream.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


def _drop_unreadable_xmp(pdf: pikepdf.Pdf) -> None:
    """Remove a document XMP packet that is not UTF-8 (or is huge): every signature rewrites
    the packet, and the document information dictionary keeps title, author and dates."""
    metadata = pdf.Root.get("/Metadata")
    if not isinstance(metadata, pikepdf.Stream):
        return
    try:
        filters = filter_names(metadata.get("/Filter"))
        packet = None
        if "/DecodeParms" not in metadata and filters is not None:
            packet = bounded_flate(metadata.read_raw_bytes(), filters, _MAX_XMP)
        readable = packet is not None and xmp_readable(packet)
    except Exception:  # an undecodable packet is as unreadable as a non-UTF-8 one
        readable = False
    if not readable:
        log.info("dropping an XMP packet that is not UTF-8")
        del pdf.Root["/Metadata"]


def _indirect_annotations(pdf: pikepdf.Pdf) -> None:
    """Make direct annotation dictionaries in /Annots indirect objects (FPDF writes them
    direct): pyHanko's check of later revisions treats a changed /Annots array that holds
    direct objects as a suspicious modification, so every signature after the first fails."""
    for page in pdf.pages:
        annots = page.obj.get("/Annots")
        if not isinstance(annots, pikepdf.Array):
            continue
        for index, annot in enumerate(list(annots)):
            if isinstance(annot, pikepdf.Dictionary) and not annot.is_indirect:
                annots[index] = pdf.make_indirect(annot)


# an /Encrypt entry in a trailer or cross-reference stream dictionary: a reference or a dictionary
_ENCRYPT_ENTRY = re.compile(rb"/Encrypt\s*(?:<<|[0-9]+\s+[0-9]+\s+R)")


def _has_encryption(data: bytes, exc: Exception) -> bool:
    """Whether qpdf's failure on ``data`` is about its encryption rather than damage."""
    return "encrypt" in str(exc).lower() or bool(_ENCRYPT_ENTRY.search(data))


def _name_string_filters(pdf: pikepdf.Pdf) -> None:
    """``/Filter (FlateDecode)``, a string where the specification wants a name: viewers decode
    it anyway, qpdf warns on every signed copy. Written as the name it means."""
    for obj in pdf.objects:
        if isinstance(obj, pikepdf.Stream) and isinstance(obj.get("/Filter"), pikepdf.String):
            obj["/Filter"] = pikepdf.Name("/" + str(obj["/Filter"]).lstrip("/"))


# The standard filters (ISO 32000-1, 7.4) a page content stream can be decoded through
_CONTENT_FILTERS = frozenset(
    {
        "/ASCIIHexDecode",
        "/ASCII85Decode",
        "/LZWDecode",
        "/FlateDecode",
        "/RunLengthDecode",
        "/Crypt",
    }
)


def _undecodable_contents(pdf: pikepdf.Pdf) -> str | None:
    """Why no viewer can draw the document as it is (None: nothing found): a page content
    stream through a filter that does not exist, whose Flate data does not even start to
    inflate (only the first 64 KiB of output are produced, so a bomb costs nothing) or that
    does not tokenise (:func:`_unparsable_contents`), an LZW stream qpdf cannot decode, or
    image data that is not the JPEG it says it is. Viewers show such a page blank or partly,
    each differently, and every signed copy would fail ``qpdf --check`` with the damage it
    inherited."""
    budget = _MAX_CONTENT_CHECK_TOTAL  # content left to tokenise in this document
    for number, page in enumerate(pdf.pages, start=1):
        contents = page.obj.get("/Contents")
        streams = contents if isinstance(contents, pikepdf.Array) else [contents]
        for stream in streams:
            if not isinstance(stream, pikepdf.Stream):
                continue
            unknown = set(filter_names(stream.get("/Filter")) or []) - _CONTENT_FILTERS
            if unknown:
                return f"page {number}: content stream filter no viewer has ({sorted(unknown)[0]})"
            if stream.get("/Filter") != "/FlateDecode":
                continue
            raw = stream.read_raw_bytes()
            if not raw:
                continue
            try:
                zlib.decompressobj().decompress(raw, 64 * 1024)
            except zlib.error as exc:
                if "incorrect data check" in str(exc):
                    continue  # only the Adler-32 checksum is wrong: qpdf and viewers read it
                return f"page {number}: content stream cannot be decoded ({exc})"
        unparsable, tokenised = _unparsable_contents(
            pdf, page, streams, min(_MAX_CONTENT_CHECK, budget)
        )
        if unparsable:
            return f"page {number}: {unparsable}"
        budget -= tokenised
    return _undecodable_streams(pdf)


# Page content decoded whole for the token check, at most this much a page and a document
# (qpdf tokenises about 10 MB a second here: a set of heavy vector drawings costs at most about
# two seconds; content beyond is left to the viewers, as before this check)
_MAX_CONTENT_CHECK = 8 * 1024 * 1024
_MAX_CONTENT_CHECK_TOTAL = 24 * 1024 * 1024


def _unparsable_contents(
    pdf: pikepdf.Pdf, page: pikepdf.Page, streams: Iterable[object], limit: int
) -> tuple[str | None, int]:
    """What qpdf says when it cannot tokenise ``page``'s content (an operand cut off, a NUL in
    a name, an inline image without its end), or None; and how many bytes were tokenised.
    Viewers draw such a page partly, each differently, and ``qpdf --check`` reports it on every
    signed copy. A page whose content would inflate past ``limit`` is not tokenised."""
    total = 0
    for stream in streams:
        if not isinstance(stream, pikepdf.Stream):
            return None, 0  # no content, or not a stream: nothing to tokenise (a blank page)
        names = filter_names(stream.get("/Filter"))
        raw = stream.read_raw_bytes()
        if names:
            decoded = bounded_flate(raw, names, max(0, limit - total))
            if decoded is None:
                return None, 0  # not Flate, too large or corrupt: judged elsewhere or not at all
            total += len(decoded)
        else:
            total += len(raw)
        if total > limit:
            return None, 0
    pdf.get_warnings()  # what reading the file raised is not this page's
    try:
        pikepdf.parse_content_stream(page)
    except pikepdf.PdfError as exc:
        return f"content stream cannot be parsed ({exc})"[:200], total
    warnings = pdf.get_warnings()
    return (f"content stream cannot be parsed ({warnings[0]})"[:200] if warnings else None), total


# LZW output can be thousands of times its input: a stream is decoded by qpdf only when
# :func:`lzw_decoded_size` says what it decodes to fits here. Streams whose LZW data is larger
# than _MAX_LZW_WALK are not walked (about a second of Python per 2 MB).
_MAX_LZW_OUTPUT = 64 * 1024 * 1024
_MAX_LZW_WALK = 2 * 1024 * 1024


def lzw_decoded_size(raw: bytes, *, early_change: bool = True) -> tuple[int, bool]:
    """How many bytes qpdf's LZW decoder would write for ``raw``, and whether it would stop on a
    code it cannot follow, computed from the codes alone (entry lengths, no data): the walk of
    ``Pl_LZWDecoder::handleCode``, so that a stream is decoded only when that is affordable."""
    lengths: list[int] = []  # the length of each table entry after the 258 fixed codes
    size, width, last, out = 9, 0, 256, 0
    bits = 0
    for byte in raw:
        bits = (bits << 8) | byte
        width += 8
        if width < size:
            continue
        width -= size
        code = bits >> width
        bits &= (1 << width) - 1
        if code == 256:
            lengths.clear()
            size = 9
        elif code == 257:
            return out, False
        else:
            if last != 256:
                index = code - 258
                if (code > 257 and index > len(lengths)) or 258 + len(lengths) == 4096:
                    return out, True  # "bad code received" / "table full"
                lengths.append((1 if last < 256 else lengths[last - 258]) + 1)
                if 258 + len(lengths) - 1 + early_change in (511, 1023, 2047):
                    size += 1
            if code < 256:
                out += 1
            elif code - 258 >= len(lengths):
                return out, True  # "table overflow"
            else:
                out += lengths[code - 258]
        last = code
    return out, False


def _early_change(stream: pikepdf.Stream) -> bool:
    params = stream.get("/DecodeParms")
    if isinstance(params, pikepdf.Array):
        params = params[0] if len(params) else None
    if isinstance(params, pikepdf.Dictionary):
        try:
            return int(params.get("/EarlyChange", 1)) != 0
        except (TypeError, ValueError):
            return True
    return True


def _undecodable_streams(pdf: pikepdf.Pdf) -> str | None:
    """The first stream no viewer can decode (None: none), in one pass over the objects:
    LZW data qpdf cannot decode ("LZWDecoder: bad code received") or ``/DCTDecode`` data that
    does not start as a JPEG file does ("Not a JPEG file"). ``qpdf --check`` reports each on
    every signed copy."""
    for obj in pdf.objects:
        if not isinstance(obj, pikepdf.Stream):
            continue
        names = filter_names(obj.get("/Filter")) or []
        if "/LZWDecode" in names:
            problem = _lzw_problem(obj, names)
        elif names == ["/DCTDecode"] and not obj.read_raw_bytes().startswith(b"\xff\xd8"):
            problem = "image data is not JPEG although /DCTDecode says so"
        else:
            continue
        if problem:
            return f"object {obj.objgen[0]}: {problem}"[:200]
    return None


def _lzw_problem(stream: pikepdf.Stream, names: list[str]) -> str | None:
    """Why qpdf cannot decode this LZW stream, or None. Decoded by qpdf when
    :func:`lzw_decoded_size` says it fits :data:`_MAX_LZW_OUTPUT`; a stream with LZW after
    another filter only when its data is small."""
    if names[0] == "/LZWDecode":
        raw = stream.read_raw_bytes()
        if len(raw) > _MAX_LZW_WALK:
            return None
        if lzw_decoded_size(raw, early_change=_early_change(stream))[0] > _MAX_LZW_OUTPUT:
            return None  # a bomb is not decoded here; viewers and pyHanko never decode it either
    elif int(stream.get("/Length", 0)) > 64 * 1024:
        return None
    try:
        stream.read_bytes()
    except pikepdf.DataDecodingError as exc:
        return f"LZW stream cannot be decoded ({exc})"
    return None


def _break_form_cycles(pdf: pikepdf.Pdf) -> None:
    """Drop second references to a form field from the field tree (/Fields and /Kids): a field
    reached twice, through a cycle or two parents, stops pyHanko's reading of the form ("Circular
    reference in form tree") and viewers use only the first anyway. The widgets stay on their
    pages; nothing displayed changes."""
    form = pdf.Root.get("/AcroForm")
    if not isinstance(form, pikepdf.Dictionary):
        return
    seen: set[tuple[int, int]] = set()
    stack = [form.get("/Fields")]
    while stack:
        items = stack.pop()
        if not isinstance(items, pikepdf.Array):
            continue
        repeated = []
        for index, item in enumerate(items):
            if not isinstance(item, pikepdf.Dictionary) or not item.is_indirect:
                continue
            if item.objgen in seen:
                repeated.append(index)
                continue
            seen.add(item.objgen)
            stack.append(item.get("/Kids"))
        for index in reversed(repeated):
            log.info("removing a repeated reference from the form field tree")
            del items[index]


def _break_struct_cycles(pdf: pikepdf.Pdf) -> None:
    """Drop second references to a structure element from the structure tree's /K entries: an
    element reached twice (a cycle, or two parents) stops pyHanko's difference analysis
    ("Circular reference in structure tree"), so every signature of the product would fail its
    own check. Only tagging is affected; nothing displayed changes."""
    root = pdf.Root.get("/StructTreeRoot")
    if not isinstance(root, pikepdf.Dictionary):
        return
    seen: set[tuple[int, int]] = set()
    stack: list[pikepdf.Dictionary] = [root]
    while stack:
        node = stack.pop()
        kids = node.get("/K")
        items = list(kids) if isinstance(kids, pikepdf.Array) else [kids]
        repeated = []
        for index, item in enumerate(items):
            if not isinstance(item, pikepdf.Dictionary):
                continue
            if item.get("/Type", pikepdf.Name.StructElem) != pikepdf.Name.StructElem:
                continue
            if item.is_indirect:
                if item.objgen in seen:
                    repeated.append(index)
                    continue
                seen.add(item.objgen)
            stack.append(item)
        if repeated:
            log.info("removing %d repeated references from the structure tree", len(repeated))
            if isinstance(kids, pikepdf.Array):
                for index in reversed(repeated):
                    del kids[index]
            else:
                del node["/K"]


# the entries of a form field (as opposed to its widget annotation); PDF 32000-1 12.7.3
_FIELD_KEYS = (
    "/FT", "/T", "/TU", "/TM", "/Ff", "/V", "/DV", "/AA", "/DA", "/Q", "/DS", "/RV", "/MaxLen",
    "/Opt", "/TI", "/I", "/Lock", "/SV",
)  # fmt: skip


def _merge_same_named_fields(pdf: pikepdf.Pdf) -> None:
    """Sibling fields with the same name are, by the specification, one field: Acrobat shows them
    with one value. pyHanko's difference analysis refuses such a field list ("Duplicate field
    name"), so they are merged as the specification means them, one field whose widgets are
    its kids. Only terminal fields of one type are merged; appearances are untouched."""
    form = pdf.Root.get("/AcroForm")
    if not isinstance(form, pikepdf.Dictionary):
        return
    stack = [(form, "/Fields")]
    while stack:
        owner, key = stack.pop()
        items = owner.get(key)
        if not isinstance(items, pikepdf.Array):
            continue
        by_name: dict[bytes, list[pikepdf.Dictionary]] = {}
        for item in items:
            if not isinstance(item, pikepdf.Dictionary):
                continue
            if "/Kids" in item:
                stack.append((item, "/Kids"))
            name = item.get("/T")
            if isinstance(name, pikepdf.String):
                by_name.setdefault(bytes(name), []).append(item)
        for group in by_name.values():
            if len(group) < 2 or any("/Kids" in f for f in group):
                continue
            if len({str(f.get("/FT", "")) for f in group}) != 1:
                continue
            parent = pdf.make_indirect(pikepdf.Dictionary())
            for field_key in _FIELD_KEYS:
                if field_key in group[0]:
                    parent[field_key] = group[0][field_key]
            if "/Parent" in group[0]:
                parent["/Parent"] = group[0]["/Parent"]
            for widget in group:
                for field_key in _FIELD_KEYS:
                    if field_key in widget:
                        del widget[field_key]
                widget["/Parent"] = parent
            parent["/Kids"] = pikepdf.Array(group)
            keep = [
                item
                for item in items
                if not (isinstance(item, pikepdf.Dictionary) and item.is_indirect)
                or all(item.objgen != w.objgen for w in group)
            ]
            keep.append(parent)
            owner[key] = pikepdf.Array(keep)
            items = owner[key]
            log.info("merged %d same-named form fields into one", len(group))


_TRAILER_KEYS = {"/Root", "/Info", "/ID", "/Encrypt", "/Size", "/Prev"}


def _drop_extra_trailer_entries(pdf: pikepdf.Pdf) -> None:
    """Remove trailer entries the specification does not define (they mean nothing to any
    reader): one that refers to objects gives them a second path from the trailer, and pyHanko's
    check of later revisions refuses every update to such an object (the AcroForm, a page); one
    whose name the strict reader cannot parse (qpdf's bad21.pdf: ``/Som#ething``) would stay in
    every revision's trailer."""
    for key in list(pdf.trailer.keys()):
        if key not in _TRAILER_KEYS:
            log.info("removing trailer entry %r", key)
            del pdf.trailer[key]


def _separate_info(pdf: pikepdf.Pdf) -> None:
    """Give the trailer a document information dictionary of its own when /Info is another
    document object (pypdf's samples point it at /AcroForm or the page tree): every signature
    writes /ModDate into /Info, which would otherwise change that object and fail the check of
    every earlier signature."""
    info = pdf.trailer.get("/Info")
    if not isinstance(info, pikepdf.Dictionary) or not info.is_indirect:
        return
    if not _reachable_from_root(pdf, info.objgen):
        return
    log.info("the document information dictionary is shared with a document object; copying")
    own = pikepdf.Dictionary()
    for key in ("/Title", "/Author", "/Subject", "/Keywords", "/Creator", "/Producer"):
        if isinstance(info.get(key), pikepdf.String):
            own[key] = info[key]
    for key in ("/CreationDate", "/ModDate"):
        if isinstance(info.get(key), pikepdf.String):
            own[key] = info[key]
    pdf.trailer["/Info"] = pdf.make_indirect(own)


def _reachable_from_root(pdf: pikepdf.Pdf, target: tuple[int, int]) -> bool:
    seen: set[tuple[int, int]] = set()
    stack: list[object] = [pdf.Root]
    while stack:
        obj = stack.pop()
        if isinstance(obj, pikepdf.Dictionary | pikepdf.Array | pikepdf.Stream):
            if obj.is_indirect:
                if obj.objgen == target:
                    return True
                if obj.objgen in seen:
                    continue
                seen.add(obj.objgen)
            if isinstance(obj, pikepdf.Array):
                stack.extend(list(obj))
            else:
                stack.extend(obj[key] for key in obj.keys())
    return False


def rebuild(data: bytes) -> bytes:
    """``data`` read by qpdf (which repairs what it can) and written out again, unencrypted
    files only; raises ``document.encrypted``, ``document.restricted`` or ``document.damaged``."""
    try:
        with open_pdf(data) as pdf:
            if pdf.is_encrypted:
                # it opened with the empty user password: owner restrictions only (see above)
                denied = _denied(pdf)
                if denied:
                    raise restricted(denied)
                log.info("removing owner-password encryption that restricts nothing")
            # walking the page tree makes qpdf repair it (direct page objects become indirect,
            # loops and wrong /Type entries are reported)
            if len(pdf.pages) == 0:
                raise DocumentError(
                    "document.empty", "The PDF has no pages.", "PDFにページがありません。"
                )
            _name_string_filters(pdf)
            undecodable = _undecodable_contents(pdf)
            if undecodable:
                raise damaged(undecodable)
            _drop_unreadable_xmp(pdf)
            _break_form_cycles(pdf)
            _merge_same_named_fields(pdf)
            _break_struct_cycles(pdf)
            _drop_extra_trailer_entries(pdf)
            _separate_info(pdf)
            _indirect_annotations(pdf)
            out = BytesIO()
            pdf.save(
                out,
                stream_decode_level=pikepdf.StreamDecodeLevel.none,
                object_stream_mode=(
                    pikepdf.ObjectStreamMode.disable
                    if _large_object_streams(pdf)
                    else pikepdf.ObjectStreamMode.preserve
                ),
                fix_metadata_version=False,
            )
    except DocumentError:
        raise
    except pikepdf.PasswordError as exc:
        raise encrypted() from exc
    except Exception as exc:  # qpdf's own failures and anything it raises on a hostile file
        if _has_encryption(data, exc):
            # a certificate-encrypted file (/Adobe.PubSec), an unknown security handler or a
            # malformed /Encrypt: the file is protected, not damaged, and the fix is the same
            raise encrypted() from exc
        raise damaged(f"{type(exc).__name__}: {exc}") from exc
    log.info("rebuilt an upload with qpdf (%d -> %d bytes)", len(data), len(out.getvalue()))
    return out.getvalue()


def rebuild_tolerantly(data: bytes) -> bytes:
    """:func:`rebuild`, and when qpdf cannot read ``data`` either, the objects pyHanko's
    tolerant (non-strict) reader reaches from the trailer, copied into a new file and rebuilt by
    qpdf. Some files that poppler, MuPDF and pdfium open defeat the qpdf that pikepdf bundles
    (e.g. pdf.js's issue16091.pdf: xref streams whose /Prev chain is broken, "unable to find
    trailer dictionary while recovering damaged file"), while pyHanko's reader follows the newest
    cross-reference section and reads them."""
    try:
        return rebuild(data)
    except DocumentError as exc:
        if exc.code != "document.damaged":
            raise
        failure = exc
    try:
        from pyhanko.pdf_utils.reader import PdfFileReader
        from pyhanko.pdf_utils.writer import copy_into_new_writer

        reader = PdfFileReader(BytesIO(data), strict=False)
        if reader.encrypted:
            raise failure
        out = BytesIO()
        copy_into_new_writer(reader).write(out)  # type: ignore[no-untyped-call]
    except DocumentError:
        raise
    except Exception:  # pyHanko cannot read it either: qpdf's reason is the one to report
        raise failure from None
    log.info("qpdf could not read an upload; rebuilt it from pyHanko's tolerant reading")
    return rebuild(out.getvalue())
