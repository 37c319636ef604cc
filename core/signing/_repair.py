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
from collections.abc import Sequence
from io import BytesIO

import pikepdf

from core.errors import DocumentError

__all__ = ["qpdf_repairs", "rebuild"]

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


def restricted() -> DocumentError:
    """``document.restricted``: opens without a password but carries owner restrictions."""
    return DocumentError(
        "document.restricted",
        "The PDF is protected with permission restrictions (an owner password). Signing "
        "would have to change a document its author restricted; upload a copy saved without "
        "the protection.",
        "PDFに権限パスワード（編集・変更の制限）が設定されています。制限された文書に署名を"
        "追加することはできません。保護を解除して保存したPDFを登録してください。",
    )


# a classic xref entry and what follows it: the specification wants exactly two end-of-line bytes
_XREF_ENTRY = re.compile(rb"(?<![0-9])[0-9]{10} [0-9]{5} [fn]([ \r\n]*)")


def qpdf_repairs(data: bytes) -> list[str]:
    """What qpdf had to repair to read ``data`` (empty for a sound file): its warnings while
    reading every object (streams are not decoded), and classic xref entries not 20 bytes long
    (pyHanko and qpdf read them, MuPDF calls them broken). Such a file is rebuilt before the
    first signature, or every signed copy would carry the damage."""
    problems = [
        f"xref entry followed by {sep!r}"
        for sep in (m.group(1) for m in _XREF_ENTRY.finditer(data))
        if sep not in (b" \r", b" \n", b"\r\n")
    ][:1]
    try:
        with pikepdf.open(BytesIO(data)) as pdf:
            for _obj in pdf.objects:
                pass
            problems.extend(str(w) for w in pdf.get_warnings()[:5])
    except Exception as exc:  # the strict reader read it; let the rebuild report the damage
        problems.append(f"{type(exc).__name__}: {exc}")
    return problems


_MAX_XMP = 4 * 1024 * 1024


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
    if isinstance(value, str | pikepdf.Name):
        return [str(value)]
    try:
        return [str(item) for item in value]  # type: ignore[attr-defined]
    except TypeError:
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


def rebuild(data: bytes) -> bytes:
    """``data`` read by qpdf (which repairs what it can) and written out again, unencrypted
    files only; raises ``document.encrypted``, ``document.restricted`` or ``document.damaged``."""
    try:
        with pikepdf.open(BytesIO(data)) as pdf:
            if pdf.is_encrypted:
                raise restricted()
            # walking the page tree makes qpdf repair it (direct page objects become indirect,
            # loops and wrong /Type entries are reported)
            if len(pdf.pages) == 0:
                raise DocumentError(
                    "document.empty", "The PDF has no pages.", "PDFにページがありません。"
                )
            _drop_unreadable_xmp(pdf)
            _indirect_annotations(pdf)
            out = BytesIO()
            pdf.save(
                out,
                stream_decode_level=pikepdf.StreamDecodeLevel.none,
                object_stream_mode=pikepdf.ObjectStreamMode.preserve,
                fix_metadata_version=False,
            )
    except DocumentError:
        raise
    except pikepdf.PasswordError as exc:
        raise encrypted() from exc
    except Exception as exc:  # qpdf's own failures and anything it raises on a hostile file
        raise damaged(f"{type(exc).__name__}: {exc}") from exc
    log.info("rebuilt an upload with qpdf (%d -> %d bytes)", len(data), len(out.getvalue()))
    return out.getvalue()
