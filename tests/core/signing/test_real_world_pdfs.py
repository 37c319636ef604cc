"""Engine-level checks of the real-world-PDF classes (issue 19): the ID stamp on every page
layout, text boxes on rotated pages, the rebuild of files the strict reader refuses, and
verification in bounded time and memory."""

from __future__ import annotations

import io
import re
import subprocess
from dataclasses import replace
from pathlib import Path

import pikepdf
import pytest
from PIL import Image, ImageChops

from core.envelopes.creation import DocumentInput, check_documents
from core.errors import DocumentError
from core.rendering import RenderBudget, RenderPool
from core.runtime import Runtime
from core.signing import BoundedVerifier, FieldBox, SigningEngine, VerifyBudget, verify_pdf
from core.signing._documents import load_document
from core.signing._repair import lzw_decoded_size
from tests.fixtures.pdfs import make_pdf
from tests.fixtures.pki import LivePki

CORPUS = Path(__file__).resolve().parents[2] / "corpus" / "pdfs"
CERT_ID = "0123456789abcdef0123456789abcdef"


def _id_box(data: bytes, tmp_path: Path) -> tuple[float, float, float, float, float, float]:
    """Where poppler finds the ID on page 1 as displayed: x_min, y_min, x_max, y_max (from the
    top-left) and the displayed page width and height."""
    path = tmp_path / "stamped.pdf"
    path.write_bytes(data)
    html = subprocess.run(
        ["pdftotext", "-f", "1", "-l", "1", "-bbox", str(path), "-"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    page = re.search(r'<page width="([\d.]+)" height="([\d.]+)"', html)
    word = re.search(
        r'<word xMin="([\d.-]+)" yMin="([\d.-]+)" xMax="([\d.-]+)" yMax="([\d.-]+)">ID:', html
    )
    assert page and word, html[:800]
    x1, y1, x2, y2 = (float(v) for v in word.groups())
    return x1, y1, x2, y2, float(page.group(1)), float(page.group(2))


@pytest.mark.parametrize(
    "name",
    [
        "qpdf-inherited-rotate.pdf",  # /Rotate on the page tree
        "qpdf-page-inherit-mediabox.pdf",  # /MediaBox on the page tree
        "pyhanko-scribble-in-arr.pdf",  # /Contents an array
        "qpdf-no-contents.pdf",  # no /Contents at all
        "qpdf-boxes.pdf",  # a CropBox smaller than the MediaBox
        "pdfjs-hello_world_rotated.pdf",
        "pyhanko-no-mediabox.pdf",
    ],
)
def test_the_id_is_legible_at_the_displayed_bottom_left(
    name: str, live_engine: SigningEngine, tmp_path: Path
) -> None:
    original = (CORPUS / name).read_bytes()
    prepared = live_engine.prepare(original, certificate_id=CERT_ID, fields=[])
    before, after = _page_image(original, tmp_path), _page_image(prepared, tmp_path)
    assert before.size == after.size
    changed = ImageChops.difference(before, after).getbbox()
    assert changed is not None, "the ID is not visible"
    left, top, right, bottom = changed
    _width, height = after.size
    # what changed is a small area at the displayed bottom-left corner, and on the page
    assert left <= 20 and height - bottom <= 20, (changed, after.size)
    assert right - left <= 200 and bottom - top <= 20, (changed, after.size)
    assert poppler_text(prepared, tmp_path).count("ID: " + CERT_ID) == 1


def _page_image(data: bytes, tmp_path: Path) -> Image.Image:
    """Page 1 as poppler displays it (72 dpi: one pixel per point)."""
    path = tmp_path / "page.pdf"
    path.write_bytes(data)
    subprocess.run(
        [
            "pdftoppm",
            "-cropbox",
            "-r",
            "72",
            "-f",
            "1",
            "-l",
            "1",
            "-singlefile",
            "-png",
            str(path),
            str(tmp_path / "page"),
        ],
        check=True,
    )
    with Image.open(tmp_path / "page.png") as image:
        return image.convert("RGB")


def poppler_text(data: bytes, tmp_path: Path) -> str:
    """The text poppler extracts from page 1."""
    path = tmp_path / "text.pdf"
    path.write_bytes(data)
    return subprocess.run(
        ["pdftotext", "-f", "1", "-l", "1", str(path), "-"], capture_output=True, text=True
    ).stdout


def test_the_id_shrinks_onto_a_tiny_page(live_engine: SigningEngine, tmp_path: Path) -> None:
    pdf = pikepdf.new()
    pdf.add_blank_page(page_size=(90, 40))
    buf = io.BytesIO()
    pdf.save(buf)
    prepared = live_engine.prepare(buf.getvalue(), certificate_id=CERT_ID, fields=[])
    x1, y1, x2, y2, width, height = _id_box(prepared, tmp_path)
    assert 0 <= x1 and x2 <= width and 0 <= y1 and y2 <= height, (x1, y1, x2, y2)


def test_the_id_sits_on_an_opaque_backing(live_engine: SigningEngine) -> None:
    prepared = live_engine.prepare(make_pdf(pages=1), certificate_id=CERT_ID, fields=[])
    with pikepdf.open(io.BytesIO(prepared)) as pdf:
        xobjects = pdf.pages[0].Resources.XObject
        stamp = xobjects["/KgIdStamp"]
        assert b"1 g 0 0" in stamp.read_bytes() and b" re f" in stamp.read_bytes()
        assert "/KgIdHelv" in stamp.Resources.Font  # the font travels with the stamp


def test_text_boxes_turn_with_the_page(live_engine: SigningEngine) -> None:
    data = (CORPUS / "qpdf-inherited-rotate.pdf").read_bytes()
    prepared = live_engine.prepare(
        data, certificate_id=CERT_ID, fields=[FieldBox("date", 1, (100, 100, 300, 120))]
    )
    with pikepdf.open(io.BytesIO(prepared)) as pdf:
        rotate = int(pdf.pages[0].obj.get("/Rotate", 0) or pdf.Root.Pages.get("/Rotate", 0))
        (field,) = [f for f in pdf.Root.AcroForm.Fields if str(f.T) == "date"]
        assert rotate in (90, 180, 270)
        assert int(field.MK.R) == rotate
        assert "/Matrix" in field.AP.N


def test_a_file_the_strict_reader_refuses_is_rebuilt_and_signed(
    live_engine: SigningEngine, test_pki: LivePki
) -> None:
    data = (CORPUS / "pyhanko-minimal-badxref.pdf").read_bytes()
    prepared = live_engine.prepare(data, certificate_id=CERT_ID, fields=[])
    assert not prepared.startswith(data[:200]) or len(prepared) != len(data)
    signed = live_engine.seal(
        live_engine.sign_approval(prepared, signature_field="kg_sig_1", reason="r", values={})
    )
    assert verify_pdf(signed, trust_roots=[test_pki.root]).ok


@pytest.mark.parametrize(
    ("name", "code"),
    [
        ("qpdf-enc-R3_V2_U-view_O-master.pdf", "document.encrypted"),
        ("pyhanko-malformed-encrypt-dict1.pdf", "document.encrypted"),
        ("qpdf-enc-R3_V2_O-master.pdf", "document.restricted"),
        ("qpdf-pages-loop.pdf", "document.damaged"),
        # certificate encryption and a malformed AES-256 dictionary: protected, not damaged
        ("pyhanko-minimal-pubkey-rc4.pdf", "document.encrypted"),
        ("pyhanko-minimal-aes256-malformed-oe.pdf", "document.encrypted"),
        ("pyhanko-minimal-signed-twice-no-sig-type.pdf", "document.already_signed"),
    ],
)
def test_refusals_say_what_is_wrong(name: str, code: str, live_engine: SigningEngine) -> None:
    with pytest.raises(DocumentError) as info:
        live_engine.inspect((CORPUS / name).read_bytes())
    assert info.value.code == code


def test_a_restricted_file_is_refused_saying_what_to_do(live_engine: SigningEngine) -> None:
    with pytest.raises(DocumentError) as info:
        live_engine.inspect((CORPUS / "qpdf-enc-XI-R6_V5_O-master.pdf").read_bytes())
    assert info.value.code == "document.restricted"
    assert (
        "パスワード保護（権限制限）を解除したPDFをアップロードしてください" in info.value.message_ja
    )
    assert info.value.details == {
        "denied": ["modify", "annotate", "fill-in", "print", "high-quality print", "copy"]
    }


@pytest.mark.parametrize(
    "name",
    [
        # bytes before %PDF- and an owner password that restricts nothing (P = -4)
        "qpdf-leading-junk.pdf",
        # FPDF font names with unescaped GBK bytes: pyHanko's reader refuses them, so every
        # signature's check of the later revisions failed on the product's own output
        "pdfjs-issue3521.pdf",
        # qpdf 12 cannot recover it; pyHanko's tolerant reader (like poppler, MuPDF, pdfium) can
        "pdfjs-issue16091.pdf",
        # a field reached twice in the form tree: pyHanko refuses it, the rebuild drops the repeat
        "pyhanko-form-tree-circular-ref-input.pdf",
        # each of these made keiyaku verify refuse every signature the product added: a structure
        # element reached twice, /Info shared with /AcroForm (each signature's /ModDate changed
        # it), two sibling fields of one name ("Duplicate field name"); and a /Filter string
        "pyhanko-struct-tree-circular-ref.pdf",
        "pypdf-reportlab-overlay.pdf",
        "qpdf-annotations.pdf",
        "qpdf-bad30.pdf",
        "qpdf-shallow_array.pdf",
        "qpdf-bad21.pdf",
        # only the Adler-32 checksum of its content stream is wrong: read as it is
        "pdfminer-zen_of_python_corrupted.pdf",
    ],
)
def test_what_viewers_read_is_normalised_and_its_signatures_verify(
    name: str, live_engine: SigningEngine, test_pki: LivePki
) -> None:
    data = (CORPUS / name).read_bytes()
    prepared = live_engine.prepare(data, certificate_id=CERT_ID, fields=[])
    assert b"/Encrypt" not in prepared
    signed = live_engine.sign_approval(prepared, signature_field="kg_sig_1", reason="r", values={})
    signed = live_engine.seal(
        live_engine.sign_approval(signed, signature_field="kg_sig_2", reason="r", values={})
    )
    report = verify_pdf(signed, trust_roots=[test_pki.root])
    assert report.ok, report.as_dict()


def test_large_object_streams_are_written_out_before_signing(
    live_engine: SigningEngine, monkeypatch: pytest.MonkeyPatch
) -> None:
    # pyHanko reads an object stream of N objects in N^2 steps: large ones are rebuilt as plain
    # objects (the limit lowered here so that a small file shows it)
    monkeypatch.setattr("core.signing._repair.MAX_OBJECT_STREAM", 20)
    with pikepdf.open(io.BytesIO(make_pdf(pages=1))) as pdf:
        for i in range(60):
            pdf.Root[f"/KgExtra{i}"] = pdf.make_indirect(pikepdf.Dictionary(N=i))
        out = io.BytesIO()
        pdf.save(out, object_stream_mode=pikepdf.ObjectStreamMode.generate)
    loaded = load_document(out.getvalue())
    assert loaded.rebuilt
    with pikepdf.open(io.BytesIO(loaded.data)) as pdf:
        assert not any(
            isinstance(o, pikepdf.Stream) and o.get("/Type") == "/ObjStm" for o in pdf.objects
        )
    assert live_engine.prepare(out.getvalue(), certificate_id=CERT_ID, fields=[])


def test_a_page_whose_content_cannot_be_decoded_is_refused_as_damaged(
    live_engine: SigningEngine,
) -> None:
    # viewers each show such a page differently, and every signed copy would fail qpdf --check
    with pikepdf.open(io.BytesIO(make_pdf(pages=2))) as pdf:
        pdf.pages[1].obj.Contents.write(b"not flate data", filter=pikepdf.Name.FlateDecode)
        out = io.BytesIO()
        pdf.save(out)
    with pytest.raises(DocumentError) as info:
        live_engine.inspect(out.getvalue())
    assert info.value.code == "document.damaged"
    assert "page 2" in info.value.details["reason"]


def test_usage_rights_are_stripped_before_the_first_signature(
    live_engine: SigningEngine,
) -> None:
    data = (CORPUS / "pdfjs-prefilled_f1040.pdf").read_bytes()
    prepared = live_engine.prepare(data, certificate_id=CERT_ID, fields=[])
    with pikepdf.open(io.BytesIO(prepared)) as pdf:
        assert "/Perms" not in pdf.Root


@pytest.fixture(scope="module")
def sealed(live_engine: SigningEngine) -> bytes:
    prepared = live_engine.prepare(make_pdf(pages=1), certificate_id=CERT_ID, fields=[])
    return live_engine.seal(
        live_engine.sign_approval(prepared, signature_field="kg_sig_1", reason="r", values={})
    )


def test_bounded_verification_agrees_with_the_direct_one(sealed: bytes, test_pki: LivePki) -> None:
    with BoundedVerifier(trust_roots=[test_pki.root]) as verifier:
        report = verifier.verify(sealed)
        again = verifier.verify(sealed)  # the child is reused
    assert report.ok and again.ok, report.as_dict()
    assert report.as_dict() == verify_pdf(sealed, trust_roots=[test_pki.root]).as_dict()


def test_verification_over_budget_could_not_finish(sealed: bytes, test_pki: LivePki) -> None:
    with BoundedVerifier(
        trust_roots=[test_pki.root], budget=VerifyBudget(seconds=0.01)
    ) as verifier:
        report = verifier.verify(sealed)
    assert not report.ok and report.unfinished
    assert report.error is not None and "could not finish" in report.error
    with BoundedVerifier(
        trust_roots=[test_pki.root], budget=VerifyBudget(memory_bytes=64 * 1024 * 1024)
    ) as verifier:
        starved = verifier.verify(sealed)
    assert not starved.ok and starved.unfinished, starved.as_dict()


def test_intake_judges_the_file_signers_will_see_not_the_upload(
    dev_runtime: Runtime,
) -> None:
    """pdfium loops on this form's upload (one unnamed field with two parents) until the
    render budget runs out; the rebuild before the first signature mends the form tree. The
    intake check, like create, renders what signers will be shown: the prepared file."""
    data = (CORPUS / "qpdf-shared-unnamed-field.pdf").read_bytes()
    with RenderPool(RenderBudget(seconds=20)) as pool:
        runtime = replace(dev_runtime, renderer=pool)
        with pytest.raises(DocumentError) as refused:
            pool.check(data, name="upload.pdf")
        assert refused.value.code == "document.too_complex"
        infos = check_documents(runtime=runtime, documents=[DocumentInput("form.pdf", data)])
    assert [info.page_count for info in infos] == [1]


def _with_page_content(content: bytes, **stream: object) -> bytes:
    """A two-page PDF whose first page's content is ``content`` as written (already encoded
    for ``stream``'s /Filter)."""
    with pikepdf.open(io.BytesIO(make_pdf(pages=2))) as pdf:
        page = pdf.pages[0].obj
        page.Contents = pdf.make_stream(content)
        for key, value in stream.items():
            page.Contents[f"/{key}"] = value
        out = io.BytesIO()
        pdf.save(out)
    return out.getvalue()


def _lzw(codes: list[int], *, early_change: bool = True) -> bytes:
    """``codes`` packed as an LZW stream: most significant bit first, each as wide as a decoder
    reads it (9 bits after a clear, one more when the table reaches 511, 1023 and 2047)."""
    bits = count = 0
    size, entries, last = 9, 0, 256
    for code in codes:
        bits = (bits << size) | code
        count += size
        if code == 256:
            size, entries = 9, 0
        elif last != 256:
            entries += 1
            if 258 + entries - 1 + early_change in (511, 1023, 2047):
                size += 1
        last = code
    pad = -count % 8
    return (bits << pad).to_bytes((count + pad) // 8, "big")


def _chain(length: int) -> list[int]:
    """A clear, ``a``, then each code naming the entry just made: ``aa``, ``aaa``, ... (the
    shape that makes a few kilobytes of LZW decode to megabytes)."""
    return [256, ord("a"), *range(258, 258 + length)]


@pytest.mark.parametrize(
    ("content", "stream", "reason"),
    [
        (b"BT /F1 12 Tf 72 720 Td (x) Tj ET", {"Filter": pikepdf.Name("/PlateDecode")}, "filter"),
        (b"BT /F1 12 Tf 72 720 Td /Na#00me Tj ET", {}, "cannot be parsed"),
        (b"q 10 0 0 10 0 0 cm BI /W 1 /H 1 /BPC 8 /CS /G ID \x00", {}, "cannot be parsed"),
        (_lzw([256, ord("q"), 300, 257]), {"Filter": pikepdf.Name.LZWDecode}, "LZW"),
    ],
    ids=["unknown-filter", "nul-in-a-name", "inline-image-without-end", "lzw-bad-code"],
)
def test_page_content_no_viewer_can_draw_is_refused_as_damaged(
    content: bytes, stream: dict[str, object], reason: str, live_engine: SigningEngine
) -> None:
    # each was signed before, and every signed copy failed qpdf --check with the inherited damage
    with pytest.raises(DocumentError) as info:
        live_engine.inspect(_with_page_content(content, **stream))
    assert info.value.code == "document.damaged"
    assert reason in info.value.details["reason"]


def test_an_image_that_says_jpeg_but_is_not_is_refused_as_damaged(
    live_engine: SigningEngine,
) -> None:
    with pikepdf.open(io.BytesIO(make_pdf(pages=1))) as pdf:
        image = pdf.make_stream(b"ww not a jpeg")
        image.Type, image.Subtype = pikepdf.Name.XObject, pikepdf.Name.Image
        image.Width = image.Height = image.BitsPerComponent = 8
        image.ColorSpace, image.Filter = pikepdf.Name.DeviceGray, pikepdf.Name.DCTDecode
        page = pdf.pages[0]
        page.obj.Resources.XObject = pikepdf.Dictionary(Im1=image)
        page.obj.Contents.write(page.obj.Contents.read_bytes() + b"\nq 8 0 0 8 0 0 cm /Im1 Do Q")
        out = io.BytesIO()
        pdf.save(out)
    with pytest.raises(DocumentError) as info:
        live_engine.inspect(out.getvalue())
    assert info.value.code == "document.damaged" and "not JPEG" in info.value.details["reason"]


@pytest.mark.parametrize("early_change", [True, False])
def test_the_lzw_walk_agrees_with_qpdf_without_decoding(early_change: bool) -> None:
    # the walk decides whether qpdf may decode a stream at all: it must say what qpdf writes
    raw = _lzw([*_chain(3000), 257], early_change=early_change)
    with pikepdf.new() as pdf:
        stream = pdf.make_stream(raw)
        stream.Filter = pikepdf.Name.LZWDecode
        stream.DecodeParms = pikepdf.Dictionary(EarlyChange=int(early_change))
        decoded = stream.read_bytes()
    assert decoded == b"a" * len(decoded)
    assert lzw_decoded_size(raw, early_change=early_change) == (len(decoded), False)
    assert lzw_decoded_size(_lzw([256, 97, 258, 400]), early_change=True) == (3, True)


def test_an_lzw_bomb_is_sized_not_decoded(live_engine: SigningEngine) -> None:
    # ten full tables of ever longer entries: about 60 KB that would decode to 70 MB
    raw = _lzw([code for _ in range(10) for code in _chain(4096 - 258)] + [257])
    size, bad = lzw_decoded_size(raw)
    assert len(raw) < 64 * 1024 and size > 64 * 1024 * 1024 and not bad
    live_engine.inspect(_with_page_content(raw, Filter=pikepdf.Name.LZWDecode))  # accepted


def test_content_past_the_documents_tokenising_budget_is_left_to_the_viewers(
    live_engine: SigningEngine, monkeypatch: pytest.MonkeyPatch
) -> None:
    # qpdf tokenises about 10 MB a second: heavy drawings must not hold an upload for long
    with pikepdf.open(io.BytesIO(make_pdf(pages=2))) as pdf:
        pdf.pages[1].obj.Contents = pdf.make_stream(b"BT /F1 12 Tf 72 720 Td /Na#00me Tj ET")
        out = io.BytesIO()
        pdf.save(out)
    damaged_second_page = out.getvalue()
    with pytest.raises(DocumentError) as info:
        live_engine.inspect(damaged_second_page)
    assert "page 2: content stream cannot be parsed" in info.value.details["reason"]
    with pikepdf.open(io.BytesIO(damaged_second_page)) as pdf:
        first_page = len(pdf.pages[0].obj.Contents.read_bytes())
    monkeypatch.setattr("core.signing._repair._MAX_CONTENT_CHECK_TOTAL", first_page)
    live_engine.inspect(damaged_second_page)  # page 1 used the budget: page 2 is not read
