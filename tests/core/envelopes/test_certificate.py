"""The completion certificate PDF: extractable text, JST times, many pages, both fonts."""

from __future__ import annotations

import io
import re
import shutil
import subprocess
from dataclasses import replace
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
from pypdf import PdfReader

import core.envelopes.certificate as certificate
from core.envelopes.certificate import (
    CertificateData,
    CertificateOperation,
    find_cjk_font,
    render_certificate,
)
from core.errors import ConfigError

pytestmark = pytest.mark.skipif(
    shutil.which("pdftotext") is None, reason="needs poppler-utils (pdftotext)"
)

CERT_ID = "7dfd11d5126db4c1699470984eec8b02"
LABELS = (
    "電子契約締結証明書",
    "文書名",
    "件名",
    "管理番号",
    "文書作成者",
    "文書作成者メールアドレス",
    "締結証明書ID",
    "操作日時",
    "IPアドレス",
    "操作",
    "署名方法",
    "署名者情報",
    "発行日時",
    "契約書の1ページ目左下に表示されたIDと一致します",
)


def _op(i: int = 0, **changes: object) -> CertificateOperation:
    op = CertificateOperation(
        at=datetime(2025, 10, 1, 0, 25, 23, tzinfo=UTC) + timedelta(minutes=i),
        ip=f"203.0.113.{i % 250}",
        method="メール認証＋アクセスコード",
        action="署名",
        name=f"山田 太郎{i:02d}",
        company="株式会社山田建設",
        email=f"yamada{i:02d}@yamada-kensetsu.co.jp",
    )
    return replace(op, **changes)  # type: ignore[arg-type]


def _data(**changes: object) -> CertificateData:
    data = CertificateData(
        certificate_id=CERT_ID,
        title="令和7年度 ○○地区道路改良工事（その2）",
        document_names=["工事請負契約書.pdf", "請書.pdf"],
        management_number="R7-0042",
        creator="建設部 契約課 佐藤 花子",
        creator_email="keiyaku@city.example.lg.jp",
        buyer_name="○○市",
        status_line="署名済みであり、すべての署名が有効です。",
        operations=[
            _op(0, action="承認", method="職員ログイン", name="契約課 鈴木 一郎", company=None),
            _op(1),
            _op(2, action="署名", method="職員ログイン", name="○○市長 田中 次郎", ip=None),
        ],
        issued_at=datetime(2025, 10, 2, 3, 4, 5, tzinfo=UTC),
    )
    return replace(data, **changes)  # type: ignore[arg-type]


def _text(pdf: bytes, tmp_path: Path, *args: str) -> str:
    path = tmp_path / "certificate.pdf"
    path.write_bytes(pdf)
    done = subprocess.run(
        ["pdftotext", "-enc", "UTF-8", *args, str(path), "-"],
        check=True,
        capture_output=True,
    )
    return done.stdout.decode("utf-8")


def _font_names(pdf: bytes, tmp_path: Path) -> list[str]:
    path = tmp_path / "fonts.pdf"
    path.write_bytes(pdf)
    reader = PdfReader(path)
    names: set[str] = set()
    for page in reader.pages:
        resources: Any = page["/Resources"]
        for ref in resources["/Font"].values():
            names.add(str(ref.get_object()["/BaseFont"]).lstrip("/"))
    return sorted(names)


def _squash(text: str) -> str:
    """The text without whitespace: a phrase may wrap onto a new line inside its table cell."""
    return "".join(text.split())


def _assert_content(text: str) -> None:
    for label in LABELS:
        assert label in text, label
    for exact in ("2025/10/01 09:25:23 (JST)", "2025/10/02 12:04:05 (JST)"):
        assert exact in text, exact
    assert re.search(r"\b1\s*/\s*1\b", text)
    for expected in (
        CERT_ID,
        "令和7年度 ○○地区道路改良工事（その2）",
        "工事請負契約書.pdf",
        "請書.pdf",
        "R7-0042",
        "建設部 契約課 佐藤 花子",
        "keiyaku@city.example.lg.jp",
        "○○市",
        "署名済みであり、すべての署名が有効です。",
        "契約課 鈴木 一郎",
        "山田 太郎01",
        "株式会社山田建設",
        "yamada01@yamada-kensetsu.co.jp",
        "203.0.113.1",
        "メール認証＋アクセスコード",
        "職員ログイン",
        "承認",
        "2025/10/01 09:26:23 (JST)",
    ):
        assert _squash(expected) in _squash(text), expected


def test_embedded_font_text_is_extractable(tmp_path: Path) -> None:
    if find_cjk_font() is None:
        pytest.skip("no Japanese TrueType font installed (fonts-ipaexfont-gothic)")
    pdf = render_certificate(_data())

    assert pdf.startswith(b"%PDF-")
    _assert_content(_text(pdf, tmp_path))
    fonts = _font_names(pdf, tmp_path)
    assert fonts and all(re.fullmatch(r"[A-Z]{6}\+.+", name) for name in fonts), fonts
    assert len(PdfReader(tmp_path / "fonts.pdf").pages) == 1


def test_cid_fallback_when_no_font_is_installed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(certificate, "find_cjk_font", lambda: None)
    pdf = render_certificate(_data())

    _assert_content(_text(pdf, tmp_path))
    assert _font_names(pdf, tmp_path) == ["HeiseiKakuGo-W5"]


def test_explicit_font_path_is_used(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    font = find_cjk_font()
    if font is None:
        pytest.skip("no Japanese TrueType font installed (fonts-ipaexfont-gothic)")

    def must_not_search() -> Path | None:
        raise AssertionError("find_cjk_font called although font_path was given")

    monkeypatch.setattr(certificate, "find_cjk_font", must_not_search)
    pdf = render_certificate(_data(font_path=font))

    _assert_content(_text(pdf, tmp_path))
    assert all("+" in name for name in _font_names(pdf, tmp_path))


def test_explicit_font_that_cannot_be_embedded_is_a_config_error(tmp_path: Path) -> None:
    not_a_font = tmp_path / "broken.ttf"
    not_a_font.write_bytes(b"this is not a font")

    with pytest.raises(ConfigError) as caught:
        render_certificate(_data(font_path=not_a_font))
    assert caught.value.code == "config.certificate_font"


def test_find_cjk_font_skips_postscript_outlines(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cff = tmp_path / "NotoSansCJK-Regular.otf"
    cff.write_bytes(b"OTTO" + b"\x00" * 60)
    collection = tmp_path / "NotoSansCJK-Regular.ttc"
    collection.write_bytes(
        b"ttcf\x00\x01\x00\x00\x00\x00\x00\x01\x00\x00\x00\x10OTTO" + b"\x00" * 40
    )
    missing = tmp_path / "missing.ttf"
    monkeypatch.setattr(certificate, "_FONT_CANDIDATES", (str(missing), str(cff), str(collection)))
    assert find_cjk_font() is None


def test_found_font_has_truetype_outlines() -> None:
    font = find_cjk_font()
    if font is None:
        pytest.skip("no Japanese TrueType font installed (fonts-ipaexfont-gothic)")
    head = font.read_bytes()[:4]
    assert head in (b"\x00\x01\x00\x00", b"true", b"ttcf")


def test_markup_characters_are_printed_literally(tmp_path: Path) -> None:
    data = _data(
        title="A&B <工事> 5 > 3",
        operations=[_op(0, name="<b>山田</b> & 太郎", company="田中&佐藤<JV>", email="a&b@x.jp")],
        creator="<script>契約課</script>",
    )
    text = _text(render_certificate(data), tmp_path)

    for expected in ("A&B <工事> 5 > 3", "<b>山田</b> & 太郎", "田中&佐藤<JV>", "a&b@x.jp"):
        assert expected in text, expected
    assert "<script>契約課</script>" in text


def test_times_are_shown_in_jst(tmp_path: Path) -> None:
    eastern = timezone(timedelta(hours=-5))
    data = _data(
        operations=[
            _op(0, at=datetime(2025, 9, 30, 15, 30, 0, tzinfo=UTC)),  # next day in Japan
            _op(1, at=datetime(2025, 9, 30, 11, 0, 0, tzinfo=eastern)),  # 16:00Z
        ],
        issued_at=datetime(2025, 12, 31, 23, 59, 59, tzinfo=UTC),
    )
    text = _text(render_certificate(data), tmp_path)

    assert "2025/10/01 00:30:00 (JST)" in text
    assert "2025/10/01 01:00:00 (JST)" in text
    assert "2026/01/01 08:59:59 (JST)" in text
    assert "2025/09/30" not in text


def test_naive_datetimes_and_bad_ids_are_refused() -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        _op(0, at=datetime(2025, 10, 1, 9, 0))  # noqa: DTZ001 (naive on purpose)
    with pytest.raises(ValueError, match="timezone-aware"):
        _data(issued_at=datetime(2025, 10, 1, 9, 0))  # noqa: DTZ001 (naive on purpose)
    with pytest.raises(ValueError, match="32 lowercase hex"):
        _data(certificate_id="R7-0042")


def test_amends_is_printed_only_when_set(tmp_path: Path) -> None:
    original = "0123456789abcdef0123456789abcdef"
    plain = _text(render_certificate(_data()), tmp_path)
    amended = _text(render_certificate(_data(amends=original)), tmp_path)

    assert "原契約" not in plain
    assert "原契約" in amended
    assert original in amended


def test_many_operations_flow_onto_pages_with_repeated_header(tmp_path: Path) -> None:
    operations = [_op(i) for i in range(25)]
    pdf = render_certificate(_data(operations=operations))
    pages = _text(pdf, tmp_path).split("\f")
    pages = [page for page in pages if page.strip()]

    total = len(pages)
    assert total >= 2
    everything = "\n".join(pages)
    for op in operations:
        assert op.name in everything
        assert op.email is not None and op.email in everything
        stamp = op.at.astimezone(timezone(timedelta(hours=9))).strftime("%Y/%m/%d %H:%M:%S")
        assert f"{stamp} (JST)" in everything
    for number, page in enumerate(pages, start=1):
        assert re.search(rf"\b{number}\s*/\s*{total}\b", page), number
        assert CERT_ID in page
        assert "発行日時 2025/10/02 12:04:05 (JST)" in page
        for column in ("操作日時", "IPアドレス", "署名方法", "署名者情報"):
            assert column in page, (number, column)


def test_long_cells_wrap_inside_the_page(tmp_path: Path) -> None:
    email = "very.long.mailbox.name.for.the.wrapping.test@example-construction-company.co.jp"
    company = "特定建設工事共同企業体（" + "株式会社山田建設・" * 8 + "田中工業株式会社）"
    ipv6 = "2001:0db8:85a3:0000:0000:8a2e:0370:7334"
    data = _data(
        operations=[_op(i, email=email, company=company, ip=ipv6) for i in range(3)],
        document_names=[f"添付資料{i:02d}_" + "仕様書" * 12 + ".pdf" for i in range(6)],
    )
    pdf = render_certificate(data)

    squashed = "".join(_text(pdf, tmp_path).split())
    assert email in squashed
    assert company in squashed
    assert ipv6 in squashed
    # every word lies within the page's side margins (18 mm = 51 pt on A4's 595 pt width)
    bbox = _text(pdf, tmp_path, "-bbox")
    xs = [float(x) for x in re.findall(r'x(?:Min|Max)="([0-9.]+)"', bbox)]
    assert xs
    assert min(xs) >= 50 and max(xs) <= 595 - 50


def test_a_row_taller_than_a_page_breaks_across_pages(tmp_path: Path) -> None:
    huge = "特定建設工事共同企業体" * 300
    data = _data(
        operations=[_op(0, company=huge), _op(1)],
        document_names=[f"文書{i:03d}.pdf" for i in range(120)],
    )
    pdf = render_certificate(data)

    text = _text(pdf, tmp_path)
    pages = len(PdfReader(io.BytesIO(pdf)).pages)
    assert pages >= 3
    # a page break may cut one repetition of the name in two at each page boundary
    assert _squash(text).count("特定建設工事共同企業体") >= 300 - pages
    assert all(f"文書{i:03d}.pdf" in text for i in range(120))
    assert "山田 太郎01" in text


def test_no_operations_still_renders(tmp_path: Path) -> None:
    text = _text(render_certificate(_data(operations=[])), tmp_path)
    assert "操作の記録はありません。" in text


def test_rendering_is_deterministic() -> None:
    data = _data(operations=[_op(i) for i in range(5)])
    assert render_certificate(data) == render_certificate(data)


@pytest.mark.skipif(shutil.which("pdftoppm") is None, reason="needs poppler-utils (pdftoppm)")
def test_first_page_rasterises(tmp_path: Path) -> None:
    (tmp_path / "c.pdf").write_bytes(
        render_certificate(_data(operations=[_op(i) for i in range(25)]))
    )
    subprocess.run(
        ["pdftoppm", "-png", "-r", "60", "-f", "1", "-l", "1", str(tmp_path / "c.pdf"), "page"],
        cwd=tmp_path,
        check=True,
        capture_output=True,
    )
    (png,) = tmp_path.glob("page*.png")
    assert png.read_bytes().startswith(b"\x89PNG")


def _many_glyphs() -> CertificateData:
    # more than 256 distinct characters (several font subsets) over three pages
    kanji = "".join(chr(c) for c in range(0x4E00, 0x4E00 + 600))
    return _data(operations=[_op(i, name="山田" + kanji[i * 20 : (i + 1) * 20]) for i in range(30)])


@pytest.mark.parametrize("data", [_data(), _many_glyphs()], ids=["one_page", "many_glyphs"])
def test_subsetting_in_place_embeds_what_reportlab_embeds(
    data: CertificateData, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The certificate's font face reads the glyph table in place; the PDF must be the one
    # reportlab's own face makes, byte for byte.
    from reportlab.pdfbase import pdfmetrics
    from reportlab.pdfbase.ttfonts import TTFontFace

    font = find_cjk_font()
    if font is None:
        pytest.skip("no Japanese TrueType font installed (fonts-ipaexfont-gothic)")
    data = replace(data, font_path=font)
    ours = render_certificate(data)
    face = getattr(pdfmetrics.getFont(certificate._register_font(data)), "face", None)
    assert isinstance(face, certificate._SubsettingFace)
    monkeypatch.setattr(face, "__class__", TTFontFace)
    assert render_certificate(data) == ours


def test_rendering_does_not_copy_the_font(tmp_path: Path) -> None:
    # reportlab began every subset with a full copy of the font's glyph table: 5.3 MB of IPAex's
    # 6.1 MB on each certificate (a 6.2 MB peak for a 45 KB PDF).
    import tracemalloc

    font = find_cjk_font()
    if font is None:
        pytest.skip("no Japanese TrueType font installed (fonts-ipaexfont-gothic)")
    from reportlab.pdfbase import pdfmetrics
    from reportlab.pdfbase.ttfonts import TTFont

    # Other code may have registered the same face first (the demo, a test's PDFs): reportlab
    # then hands out that font under the certificate's name too.
    pdfmetrics.registerFont(TTFont("TestFirstIPAex", str(font)))
    copy = tmp_path / font.name  # a path of its own: registered afresh, within this test
    shutil.copyfile(font, copy)
    data = _data(font_path=copy)
    render_certificate(data)  # registers the font: read once per process
    tracemalloc.start()
    try:
        render_certificate(data)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 2 * 2**20, f"rendering a certificate peaked at {peak / 2**20:.1f} MB"
