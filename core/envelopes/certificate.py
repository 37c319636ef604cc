"""The completion certificate (電子契約締結証明書): a PDF of who did what to an envelope, and when.

The certificate's 32-hex ID is the one printed bottom-left on page 1 of every signed document, so a
printed contract and its printed certificate can be matched without opening any PDF. All text is
real text (an embedded TrueType subset with a ToUnicode map, or a standard Japanese CID font), so
the certificate can be searched and read by ``pdftotext`` and screen readers.

Rendering is deterministic: the same :class:`CertificateData` and font give the same bytes (the PDF
dates are the issue time, not the wall clock). The gateway then signs the rendered certificate
once, with its own key and an RFC 3161 timestamp (``SigningEngine.sign_certificate``), and stores
that signed file: it is what every later download and push-back hands out.
"""

from __future__ import annotations

import hashlib
import io
import logging
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any
from xml.sax.saxutils import escape

from reportlab.lib import colors
from reportlab.lib.enums import TA_CENTER, TA_RIGHT
from reportlab.lib.pagesizes import A4
from reportlab.lib.styles import ParagraphStyle
from reportlab.lib.units import mm
from reportlab.pdfbase import pdfmetrics
from reportlab.pdfbase.cidfonts import UnicodeCIDFont
from reportlab.pdfbase.ttfonts import TTFError, TTFont, TTFontFace
from reportlab.pdfgen.canvas import Canvas
from reportlab.platypus import Paragraph, SimpleDocTemplate, Spacer, Table, TableStyle
from reportlab.platypus.doctemplate import LayoutError

from core.errors import ConfigError
from core.timezone import JST

__all__ = [
    "CertificateConsent",
    "CertificateData",
    "CertificateDocument",
    "CertificateForward",
    "CertificateOperation",
    "find_cjk_font",
    "render_certificate",
]

_log = logging.getLogger(__name__)

# Japan has no daylight saving time, so a fixed offset is exact and needs no tz database.

_CERTIFICATE_ID = re.compile(r"^[0-9a-f]{32}$")
_CID_FALLBACK = "HeiseiKakuGo-W5"

# Well-known places of Japanese fonts with TrueType outlines, best first. Candidates that turn out
# to hold PostScript (CFF) outlines or to be variable fonts (e.g. Noto Sans CJK's .ttc/.otf, the
# macOS Hiragino fonts) are skipped by :func:`_has_truetype_outlines`: reportlab cannot embed those.
_FONT_CANDIDATES: tuple[str, ...] = (
    # Debian / Ubuntu
    "/usr/share/fonts/opentype/ipaexfont-gothic/ipaexg.ttf",
    "/usr/share/fonts/truetype/ipaexfont-gothic/ipaexg.ttf",
    "/usr/share/fonts/opentype/ipafont-gothic/ipag.ttf",
    "/usr/share/fonts/truetype/ipafont-gothic/ipag.ttf",
    "/usr/share/fonts/truetype/fonts-japanese-gothic.ttf",
    "/usr/share/fonts/truetype/takao-gothic/TakaoPGothic.ttf",
    "/usr/share/fonts/truetype/takao-gothic/TakaoGothic.ttf",
    "/usr/share/fonts/truetype/vlgothic/VL-PGothic-Regular.ttf",
    "/usr/share/fonts/truetype/vlgothic/VL-Gothic-Regular.ttf",
    # Fedora / RHEL, Arch
    "/usr/share/fonts/ipa-ex-gothic/ipaexg.ttf",
    "/usr/share/fonts/ipa-gothic/ipag.ttf",
    "/usr/share/fonts/vlgothic/VL-PGothic-Regular.ttf",
    "/usr/share/fonts/OTF/ipaexg.ttf",
    "/usr/share/fonts/TTF/ipaexg.ttf",
    "/usr/share/fonts/TTF/ipag.ttf",
    # Noto: only the static TrueType builds qualify (Google Fonts' Noto Sans JP)
    "/usr/share/fonts/truetype/noto/NotoSansJP-Regular.ttf",
    "/usr/share/fonts/opentype/noto/NotoSansCJK-Regular.ttc",
    "/usr/share/fonts/noto-cjk/NotoSansCJK-Regular.ttc",
    "/usr/share/fonts/google-noto-cjk/NotoSansCJK-Regular.ttc",
    # Windows, macOS
    "C:/Windows/Fonts/YuGothM.ttc",
    "C:/Windows/Fonts/meiryo.ttc",
    "C:/Windows/Fonts/msgothic.ttc",
    "/System/Library/Fonts/Supplemental/Arial Unicode.ttf",
    "/Library/Fonts/Arial Unicode.ttf",
)

_PAGE_WIDTH, _PAGE_HEIGHT = A4
_MARGIN_X = 18 * mm
_MARGIN_TOP = 18 * mm
_MARGIN_BOTTOM = 22 * mm  # room for the footer
_BODY_WIDTH = _PAGE_WIDTH - 2 * _MARGIN_X
_HEADER_FILL = colors.HexColor("#E8ECF2")
_RULE = colors.HexColor("#7F8C9D")


@dataclass(frozen=True)
class CertificateOperation:
    """One line of the operation log: who did what, how they were authenticated, and when."""

    at: datetime
    ip: str | None
    method: str
    action: str
    name: str
    company: str | None
    email: str | None
    # more about the operation, e.g. a forward's new addressee and reason
    note: str | None = None

    def __post_init__(self) -> None:
        _require_aware(self.at, "CertificateOperation.at")


@dataclass(frozen=True)
class CertificateDocument:
    """One signed document as concluded: its name, SHA-256 and number of approval signatures."""

    name: str
    sha256: str
    signatures: int


@dataclass(frozen=True)
class CertificateForward:
    """One forward (転送): the original addressee handed the request to another person."""

    at: datetime
    from_name: str
    from_email: str
    to_name: str
    to_email: str
    reason: str
    from_company: str | None = None

    def __post_init__(self) -> None:
        _require_aware(self.at, "CertificateForward.at")


@dataclass(frozen=True)
class CertificateConsent:
    """The contractor's prior consent to electronic conclusion (建設業法19条3項)."""

    consented_on: date
    measures: str


@dataclass(frozen=True)
class CertificateData:
    """Everything a completion certificate shows; the caller gathers it from the envelope."""

    certificate_id: str
    title: str
    document_names: Sequence[str]
    management_number: str
    creator: str
    creator_email: str | None
    buyer_name: str
    status_line: str
    operations: Sequence[CertificateOperation]
    issued_at: datetime
    amends: str | None = None
    # Amendments (変更契約) concluded later that change this contract, one line each.
    amended_by: Sequence[str] = ()
    font_path: Path | None = None
    # 契約種別 as people read it (建設工事 / 建設工事以外); None: not shown
    contract_type: str | None = None
    # the consent a construction contract was concluded under; None with ``consent_required``
    # says that none is recorded
    consent: CertificateConsent | None = None
    consent_required: bool = False
    documents: Sequence[CertificateDocument] = ()
    forwards: Sequence[CertificateForward] = ()

    def __post_init__(self) -> None:
        if not _CERTIFICATE_ID.match(self.certificate_id):
            raise ValueError(
                f"certificate_id must be 32 lowercase hex digits, got {self.certificate_id!r}"
            )
        _require_aware(self.issued_at, "CertificateData.issued_at")


def _require_aware(value: datetime, what: str) -> None:
    if value.tzinfo is None or value.utcoffset() is None:
        raise ValueError(f"{what} must be timezone-aware, got naive {value.isoformat()}")


def find_cjk_font() -> Path | None:
    """Return an installed Japanese TrueType-outline font that reportlab can embed, or None."""
    for candidate in _FONT_CANDIDATES:
        path = Path(candidate)
        if path.is_file() and _has_truetype_outlines(path):
            return path
    return None


def _has_truetype_outlines(path: Path) -> bool:
    """True for a static TrueType-outline font (or a collection whose first font is one)."""
    try:
        with path.open("rb") as f:
            head = f.read(12)
            offset = 0
            if head[:4] == b"ttcf":
                f.seek(12)
                offset = int.from_bytes(f.read(4), "big")
                f.seek(offset)
                head = f.read(12)
            if head[:4] not in (b"\x00\x01\x00\x00", b"true"):
                return False  # "OTTO": PostScript outlines
            num_tables = int.from_bytes(head[4:6], "big")
            f.seek(offset + 12)
            directory = f.read(16 * num_tables)
    except OSError:
        return False
    tags = {directory[i : i + 4] for i in range(0, len(directory), 16)}
    return b"glyf" in tags and b"fvar" not in tags


class _GlyphTable:
    """A font's ``glyf`` table read in place: slicing gives the bytes of that slice only."""

    __slots__ = ("_view",)

    def __init__(self, view: memoryview) -> None:
        self._view = view

    def __len__(self) -> int:
        return len(self._view)

    def __getitem__(self, key: slice) -> bytes:
        return self._view[key].tobytes()


class _SubsettingFace(TTFontFace):
    """reportlab's face of a TrueType font, minus one copy per subset.

    reportlab keeps the whole font file in memory once per process, but every subset it embeds
    starts with ``get_table("glyf")``, a slice of that file: a full copy of the glyph table (5.3 MB
    of the 6.1 MB IPAex font) for each certificate, of which it then keeps only the few hundred
    glyphs it uses. Handing out the table as a view makes the same subset from the same bytes.
    """

    def get_table(self, tag: str) -> Any:
        if tag != "glyf":
            return super().get_table(tag)  # type: ignore[no-untyped-call]
        pos, length = self.get_table_pos(tag)
        font_file: bytes = self._ttf_data  # type: ignore[attr-defined]  # the whole file, as read
        return _GlyphTable(memoryview(font_file)[pos : pos + length])


def _subset_in_place(font: Any) -> None:
    """Make ``font``'s face one that subsets in place (the same bytes, without the copy).

    ``font`` is what reportlab registered under the certificate's name, which need not be the
    :class:`TTFont` just made: reportlab keeps one font per face name and hands out any earlier
    one of the same face (one that other code, the demo or a test, registered from the same file).
    """
    face = getattr(font, "face", None)
    if type(face) is TTFontFace:  # only a face whose layout we know
        face.__class__ = _SubsettingFace


def _register_font(data: CertificateData) -> str:
    """Register the certificate's font with reportlab once per process; return its name."""
    explicit = data.font_path is not None
    path = data.font_path if data.font_path is not None else find_cjk_font()
    if path is not None:
        digest = hashlib.sha256(str(Path(path).resolve()).encode()).hexdigest()[:10]
        name = f"KeiyakuCJK-{digest}"
        if name in pdfmetrics.getRegisteredFontNames():
            return name
        try:
            pdfmetrics.registerFont(TTFont(name, str(path), subfontIndex=0))
            _subset_in_place(pdfmetrics.getFont(name))
            return name
        except (TTFError, OSError) as exc:
            if explicit:
                raise ConfigError(
                    "config.certificate_font",
                    f"cannot embed the certificate font {path}: {exc}",
                    f"締結証明書のフォント {path} を埋め込めません。"
                    "TrueTypeアウトラインのフォントを指定してください。",
                ) from exc
            _log.warning("cannot embed %s (%s); using the CID font %s", path, exc, _CID_FALLBACK)
    if _CID_FALLBACK not in pdfmetrics.getRegisteredFontNames():
        pdfmetrics.registerFont(UnicodeCIDFont(_CID_FALLBACK))
    return _CID_FALLBACK


def _jst(value: datetime) -> str:
    return value.astimezone(JST).strftime("%Y/%m/%d %H:%M:%S") + " (JST)"


def _markup(*lines: str | None) -> str:
    """Paragraph markup for plain text lines: escaped, empty ones dropped, one per line."""
    parts = [escape(line).replace("\n", "<br/>") for line in lines if line]
    return "<br/>".join(parts) if parts else "-"


@dataclass(frozen=True)
class _Styles:
    heading: ParagraphStyle
    issuer: ParagraphStyle
    status: ParagraphStyle
    label: ParagraphStyle
    value: ParagraphStyle
    note: ParagraphStyle
    section: ParagraphStyle
    head_cell: ParagraphStyle
    cell: ParagraphStyle
    hash_cell: ParagraphStyle


def _styles(font: str) -> _Styles:
    # wordWrap="CJK" lets lines break between any two characters: Japanese has no spaces, and
    # neither have long e-mail or IPv6 addresses.
    base = ParagraphStyle("base", fontName=font, fontSize=9.5, leading=13, wordWrap="CJK")
    return _Styles(
        heading=ParagraphStyle(
            "heading", parent=base, fontSize=18, leading=24, alignment=TA_CENTER, spaceAfter=2 * mm
        ),
        issuer=ParagraphStyle("issuer", parent=base, alignment=TA_RIGHT, spaceAfter=3 * mm),
        status=ParagraphStyle("status", parent=base, fontSize=10.5, leading=15),
        label=ParagraphStyle("label", parent=base),
        value=ParagraphStyle("value", parent=base),
        note=ParagraphStyle("note", parent=base, fontSize=8.5, leading=12, spaceBefore=2 * mm),
        section=ParagraphStyle(
            "section", parent=base, fontSize=11, leading=15, spaceBefore=6 * mm, spaceAfter=2 * mm
        ),
        head_cell=ParagraphStyle("head_cell", parent=base, fontSize=8, leading=10.5),
        cell=ParagraphStyle("cell", parent=base, fontSize=8, leading=10.5),
        hash_cell=ParagraphStyle("hash_cell", parent=base, fontSize=7.5, leading=10),
    )


def _grid(font: str, header_rows: int) -> list[tuple[Any, ...]]:
    commands: list[tuple[Any, ...]] = [
        # Tables set their cell font even around Paragraphs; the default would pull in Helvetica.
        ("FONTNAME", (0, 0), (-1, -1), font),
        ("GRID", (0, 0), (-1, -1), 0.5, _RULE),
        ("VALIGN", (0, 0), (-1, -1), "TOP"),
        ("TOPPADDING", (0, 0), (-1, -1), 3),
        ("BOTTOMPADDING", (0, 0), (-1, -1), 4),
        ("LEFTPADDING", (0, 0), (-1, -1), 4),
        ("RIGHTPADDING", (0, 0), (-1, -1), 4),
    ]
    if header_rows:
        commands.append(("BACKGROUND", (0, 0), (-1, header_rows - 1), _HEADER_FILL))
    return commands


def _story(data: CertificateData, font: str, *, split_rows: bool) -> list[Any]:
    """The certificate's flowables (built afresh for each layout pass: reportlab consumes them).

    With ``split_rows`` a table row taller than the space left may break across pages (pieces of at
    least two lines); otherwise a row moves whole to the next page, which reads better.
    """
    s = _styles(font)
    split_in_row = 24 if split_rows else 0
    status = Table(
        [[Paragraph(_markup(data.status_line), s.status)]],
        colWidths=[_BODY_WIDTH],
        style=TableStyle(
            [
                ("FONTNAME", (0, 0), (-1, -1), font),
                ("BOX", (0, 0), (-1, -1), 0.8, _RULE),
                ("BACKGROUND", (0, 0), (-1, -1), colors.HexColor("#F4F7FA")),
                ("TOPPADDING", (0, 0), (-1, -1), 5),
                ("BOTTOMPADDING", (0, 0), (-1, -1), 6),
                ("LEFTPADDING", (0, 0), (-1, -1), 6),
            ]
        ),
    )

    facts: list[tuple[str, str]] = [
        ("文書名", _markup(*data.document_names)),
        ("件名", _markup(data.title)),
        ("管理番号", _markup(data.management_number)),
        ("文書作成者", _markup(data.creator)),
        ("文書作成者メールアドレス", _markup(data.creator_email)),
        ("締結証明書ID", _markup(data.certificate_id)),
    ]
    if data.contract_type:
        facts.append(("契約種別", _markup(data.contract_type)))
    if data.consent is not None:
        facts.append(
            (
                "受注者の事前承諾（建設業法第19条第3項）",
                _markup(
                    f"承諾日: {data.consent.consented_on:%Y年%m月%d日}",
                    f"電磁的措置: {data.consent.measures}",
                ),
            )
        )
    elif data.consent_required:
        facts.append(("受注者の事前承諾（建設業法第19条第3項）", _markup("記録なし")))
    if data.amends:
        facts.append(("原契約（変更契約の場合）", _markup(data.amends)))
    if data.amended_by:
        facts.append(("変更契約", _markup(*data.amended_by)))
    label_width = 48 * mm
    fact_rows = [[Paragraph(label, s.label), Paragraph(value, s.value)] for label, value in facts]
    facts_table = Table(
        fact_rows,
        colWidths=[label_width, _BODY_WIDTH - label_width],
        splitInRow=split_in_row,
        style=TableStyle([*_grid(font, 0), ("BACKGROUND", (0, 0), (0, -1), _HEADER_FILL)]),
    )

    # Column widths (mm) sum to the body width: 174 mm on A4 with 18 mm margins.
    widths = [43.5 * mm, 28 * mm, 15 * mm, 29 * mm]
    widths.append(_BODY_WIDTH - sum(widths))
    header = ["操作日時", "IPアドレス", "操作", "署名方法", "署名者情報"]
    rows: list[list[Any]] = [[Paragraph(h, s.head_cell) for h in header]]
    for op in data.operations:
        rows.append(
            [
                Paragraph(escape(_jst(op.at)), s.cell),
                Paragraph(_markup(op.ip), s.cell),
                Paragraph(_markup(op.action), s.cell),
                Paragraph(_markup(op.method), s.cell),
                Paragraph(_markup(op.name, op.company, op.email, op.note), s.cell),
            ]
        )
    commands = _grid(font, 1)
    if not data.operations:
        rows.append([Paragraph("操作の記録はありません。", s.cell), "", "", "", ""])
        commands.append(("SPAN", (0, 1), (-1, 1)))
    operations_table = Table(
        rows,
        colWidths=widths,
        repeatRows=1,
        splitInRow=split_in_row,
        style=TableStyle(commands),
    )

    story_tail: list[Any] = []
    if data.documents:
        doc_widths = [52 * mm, _BODY_WIDTH - 52 * mm - 14 * mm, 14 * mm]
        doc_rows: list[list[Any]] = [
            [Paragraph(h, s.head_cell) for h in ("文書名", "SHA-256", "署名数")]
        ]
        doc_rows += [
            [
                Paragraph(_markup(d.name), s.cell),
                Paragraph(_markup(d.sha256), s.hash_cell),
                Paragraph(str(d.signatures), s.cell),
            ]
            for d in data.documents
        ]
        story_tail += [
            Paragraph("文書のハッシュ値（締結時）", s.section),
            Table(
                doc_rows,
                colWidths=doc_widths,
                repeatRows=1,
                splitInRow=split_in_row,
                style=TableStyle(_grid(font, 1)),
            ),
        ]
    if data.forwards:
        fwd_widths = [36 * mm, 44 * mm, 44 * mm]
        fwd_widths.append(_BODY_WIDTH - sum(fwd_widths))
        fwd_rows: list[list[Any]] = [
            [
                Paragraph(h, s.head_cell)
                for h in ("転送日時", "転送元（元の宛先）", "転送先", "理由")
            ]
        ]
        fwd_rows += [
            [
                Paragraph(escape(_jst(f.at)), s.cell),
                Paragraph(_markup(f.from_name, f.from_company, f.from_email), s.cell),
                Paragraph(_markup(f.to_name, f.to_email), s.cell),
                Paragraph(_markup(f.reason), s.cell),
            ]
            for f in data.forwards
        ]
        story_tail += [
            Paragraph("転送の記録", s.section),
            Table(
                fwd_rows,
                colWidths=fwd_widths,
                repeatRows=1,
                splitInRow=split_in_row,
                style=TableStyle(_grid(font, 1)),
            ),
        ]

    return [
        Paragraph("電子契約締結証明書", s.heading),
        Paragraph(f"発行者: {_markup(data.buyer_name)}", s.issuer),
        status,
        Spacer(1, 4 * mm),
        facts_table,
        Paragraph(
            "※ 締結証明書IDは、電子署名された各文書（契約書）の1ページ目左下に"
            "印字されています。<br/>"
            "※ 本証明書の締結証明書IDは、契約書の1ページ目左下に表示されたIDと一致します。",
            s.note,
        ),
        Paragraph("操作履歴", s.section),
        operations_table,
        *story_tail,
    ]


def _footer(
    data: CertificateData, font: str, total_pages: int | None
) -> Callable[[Any, Any], None]:
    issued = f"発行日時 {_jst(data.issued_at)}"
    certificate = f"締結証明書ID {data.certificate_id}"

    def draw(canvas: Any, doc: Any) -> None:
        page = canvas.getPageNumber()
        y = 12 * mm
        canvas.saveState()
        canvas.setStrokeColor(_RULE)
        canvas.setLineWidth(0.5)
        canvas.line(_MARGIN_X, y + 4.5 * mm, _PAGE_WIDTH - _MARGIN_X, y + 4.5 * mm)
        canvas.setFont(font, 7.5)
        canvas.drawString(_MARGIN_X, y, certificate)
        canvas.drawCentredString(_PAGE_WIDTH / 2 + 14 * mm, y, issued)
        canvas.drawRightString(
            _PAGE_WIDTH - _MARGIN_X, y, f"{page} / {total_pages if total_pages else '?'}"
        )
        canvas.restoreState()

    return draw


def _canvas_maker(data: CertificateData) -> Callable[..., Any]:
    stamp = data.issued_at.astimezone(UTC).strftime("D:%Y%m%d%H%M%S+00'00'")

    def make(*args: Any, **kwargs: Any) -> Any:
        canvas = Canvas(*args, **kwargs)
        # The PDF's CreationDate/ModDate are the issue time, so output does not depend on the clock.
        canvas.setDateFormatter(lambda *_: stamp)
        return canvas

    return make


def _build(
    data: CertificateData, font: str, total_pages: int | None, *, split_rows: bool
) -> tuple[bytes, int]:
    out = io.BytesIO()
    doc = SimpleDocTemplate(
        out,
        pagesize=A4,
        leftMargin=_MARGIN_X,
        rightMargin=_MARGIN_X,
        topMargin=_MARGIN_TOP,
        bottomMargin=_MARGIN_BOTTOM,
        title=f"電子契約締結証明書 {data.title}",
        author=data.buyer_name,
        subject=f"締結証明書ID {data.certificate_id}",
        creator="keiyaku-gateway",
        producer="keiyaku-gateway",
        lang="ja-JP",
        invariant=True,
        initialFontName=font,  # otherwise every page references an unused, unembedded Helvetica
    )
    footer = _footer(data, font, total_pages)
    doc.build(
        _story(data, font, split_rows=split_rows),
        onFirstPage=footer,
        onLaterPages=footer,
        canvasmaker=_canvas_maker(data),
    )
    return out.getvalue(), int(doc.page)


def render_certificate(data: CertificateData) -> bytes:
    """Render the completion certificate as A4 PDF bytes (Japanese, every page footed "n / N").

    Embeds a subset of ``data.font_path`` or of :func:`find_cjk_font`'s font; with neither, uses
    reportlab's standard Japanese CID font (not embedded; viewers substitute a Gothic face).
    Raises :class:`~core.errors.ConfigError` when an explicit ``font_path`` cannot be embedded.
    """
    font = _register_font(data)
    # The footer says "n / N": lay out once guessing N = 1 (most certificates fit one page) and
    # again, with the count now known, only when the guess was wrong. The footer lies outside the
    # frame, so the second pass breaks pages exactly where the first did.
    split_rows = False
    try:
        pdf, pages = _build(data, font, 1, split_rows=split_rows)
    except LayoutError:
        # Some row (a huge joint-venture name, dozens of documents) is taller than a page.
        split_rows = True
        pdf, pages = _build(data, font, 1, split_rows=split_rows)
    if pages != 1:
        pdf, _ = _build(data, font, pages, split_rows=split_rows)
    return pdf
