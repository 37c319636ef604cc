# mypy: disable-error-code="no-untyped-call"
# (pyHanko's PDF object constructors and writer methods are unannotated; every call would need
# its own ignore otherwise)
"""A TrueType font parsed once and embedded as small per-revision subsets.

pyHanko's ``GlyphAccumulator`` re-parses the whole font and runs fontTools' subsetter for every
writer: ~80 ms per approval with IPAexGothic (6 MB, 12 000 glyphs), more than the signature itself.
Field values are short (a date, a name), horizontal and need no shaping beyond the ``cmap``, so
this module parses the font once and builds each subset by copying raw ``glyf`` records, keeping
glyph IDs (``CIDToGIDMap /Identity``): about a millisecond per subset.
"""

from __future__ import annotations

import random
import string
import struct
import zlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from io import BytesIO
from itertools import accumulate
from pathlib import Path

from fontTools import ttLib
from pyhanko.pdf_utils import generic
from pyhanko.pdf_utils.generic import pdf_name
from pyhanko.pdf_utils.writer import BasePdfFileWriter

__all__ = ["CjkFont", "ShapedText"]

# Tables a PDF consumer needs from an embedded TrueType program (ISO 32000-1, 9.9); the rest
# (layout, vertical metrics, names of 12 000 glyphs) only costs bytes.
_KEPT_TABLES = ("OS/2", "cvt ", "fpgm", "glyf", "head", "hhea", "hmtx", "loca", "maxp", "prep")

_PROGRAM_CACHE_SIZE = 32

# composite glyph flags (OpenType 'glyf' spec)
_ARG_1_AND_2_ARE_WORDS = 0x0001
_WE_HAVE_A_SCALE = 0x0008
_MORE_COMPONENTS = 0x0020
_WE_HAVE_AN_X_AND_Y_SCALE = 0x0040
_WE_HAVE_A_TWO_BY_TWO = 0x0080


@dataclass(frozen=True)
class ShapedText:
    """Glyph IDs and total advance (in text space units of 1/1000 em) of one string."""

    text: str
    glyph_ids: tuple[int, ...]
    advance: int

    def show_operator(self) -> bytes:
        """The ``Tj`` operator showing these glyphs (2-byte CIDs equal to glyph IDs)."""
        return b"<" + "".join(f"{gid:04x}" for gid in self.glyph_ids).encode("ascii") + b"> Tj"


def _checksum(data: bytes) -> int:
    padded = data + b"\0" * (-len(data) % 4)
    words: tuple[int, ...] = struct.unpack(f">{len(padded) // 4}I", padded)
    return sum(words) & 0xFFFFFFFF


class CjkFont:
    """A TrueType (``glyf``) font, parsed once, that embeds subsets into PDF writers."""

    def __init__(self, path: Path) -> None:
        data = path.read_bytes()
        self.path = path
        num_tables = struct.unpack(">H", data[4:6])[0]
        self._tables: dict[str, bytes] = {}
        for i in range(num_tables):
            tag_raw, _cs, offset, length = struct.unpack(">4sIII", data[12 + 16 * i : 28 + 16 * i])
            self._tables[tag_raw.decode("latin-1")] = data[offset : offset + length]
        if "glyf" not in self._tables or "loca" not in self._tables:
            raise ValueError(f"{path}: only TrueType-outline fonts (glyf) are supported")

        head = self._tables["head"]
        self.units_per_em: int = struct.unpack(">H", head[18:20])[0]
        self.bbox: tuple[int, int, int, int] = struct.unpack(">hhhh", head[36:44])
        loca_format = struct.unpack(">h", head[50:52])[0]
        self.num_glyphs: int = struct.unpack(">H", self._tables["maxp"][4:6])[0]
        loca = self._tables["loca"]
        count = self.num_glyphs + 1
        if loca_format == 0:
            self._loca = [2 * v for v in struct.unpack(f">{count}H", loca[: 2 * count])]
        else:
            self._loca = list(struct.unpack(f">{count}I", loca[: 4 * count]))

        hhea = self._tables["hhea"]
        self.ascent, self.descent = struct.unpack(">hh", hhea[4:8])
        n_hmetrics = struct.unpack(">H", hhea[34:36])[0]
        hmtx = self._tables["hmtx"]
        advances: list[int] = [
            struct.unpack(">H", hmtx[4 * i : 4 * i + 2])[0] for i in range(n_hmetrics)
        ]
        advances += [advances[-1]] * (self.num_glyphs - n_hmetrics)
        self._advances = advances

        os2 = self._tables.get("OS/2", b"")
        version = struct.unpack(">H", os2[:2])[0] if len(os2) >= 2 else 0
        self.cap_height = (
            struct.unpack(">h", os2[88:90])[0] if version >= 2 and len(os2) >= 90 else self.ascent
        )

        # cmap and the PostScript name: parsed with fontTools, once
        tt = ttLib.TTFont(BytesIO(data), lazy=True)
        best = tt.getBestCmap() or {}
        order = tt.getGlyphOrder()
        gid_by_name = {name: gid for gid, name in enumerate(order)}
        self._cmap: dict[int, int] = {cp: gid_by_name[name] for cp, name in best.items()}
        ps_name = tt["name"].getDebugName(6) or path.stem
        self.postscript_name = "".join(c for c in ps_name if c.isalnum() or c in "-_") or "Font"
        tt.close()
        self._programs: dict[tuple[int, ...], tuple[int, bytes]] = {}

    def shape(self, text: str) -> ShapedText:
        """Map ``text`` to glyphs through the cmap (no shaping: CJK and Latin need none here)."""
        gids = tuple(self._cmap.get(ord(ch), 0) for ch in text)
        advance = sum(self._width(g) for g in gids)
        return ShapedText(text=text, glyph_ids=gids, advance=advance)

    def _width(self, gid: int) -> int:
        """Advance width of a glyph in 1/1000 em."""
        return round(self._advances[gid] * 1000 / self.units_per_em)

    def _closure(self, gids: Iterable[int]) -> set[int]:
        """The glyphs plus every component of composite glyphs among them."""
        glyf = self._tables["glyf"]
        todo = [0, *gids]
        seen: set[int] = set()
        while todo:
            gid = todo.pop()
            if gid in seen or not 0 <= gid < self.num_glyphs:
                continue
            seen.add(gid)
            start, end = self._loca[gid], self._loca[gid + 1]
            if end - start < 10 or struct.unpack(">h", glyf[start : start + 2])[0] >= 0:
                continue
            pos = start + 10
            while True:
                flags, component = struct.unpack(">HH", glyf[pos : pos + 4])
                todo.append(component)
                pos += 4 + (4 if flags & _ARG_1_AND_2_ARE_WORDS else 2)
                if flags & _WE_HAVE_A_SCALE:
                    pos += 2
                elif flags & _WE_HAVE_AN_X_AND_Y_SCALE:
                    pos += 4
                elif flags & _WE_HAVE_A_TWO_BY_TWO:
                    pos += 8
                if not flags & _MORE_COMPONENTS:
                    break
        return seen

    def subset_program(self, gids: Iterable[int]) -> bytes:
        """A TrueType program holding only ``gids`` (glyph IDs kept, other glyphs empty)."""
        keep = sorted(self._closure(gids))
        glyf_src = self._tables["glyf"]
        loca = self._loca
        glyf = bytearray()
        lengths = [0] * self.num_glyphs
        for gid in keep:
            record = glyf_src[loca[gid] : loca[gid + 1]]
            record += b"\0" * (-len(record) % 4)
            glyf += record
            lengths[gid] = len(record)
        # offsets only move at kept glyphs: accumulate() does the 12 000-entry walk in C
        offsets = list(accumulate(lengths, initial=0))
        tables = {tag: self._tables[tag] for tag in _KEPT_TABLES if tag in self._tables}
        tables["glyf"] = bytes(glyf)
        tables["loca"] = struct.pack(f">{len(offsets)}I", *offsets)
        head = bytearray(tables["head"])
        head[8:12] = b"\0\0\0\0"  # checkSumAdjustment, fixed below
        head[50:52] = struct.pack(">h", 1)  # long loca offsets
        tables["head"] = bytes(head)
        return self._assemble(tables)

    def _font_file(self, gids: tuple[int, ...]) -> tuple[int, bytes]:
        """(length, Flate-compressed program) for a glyph set; the last few are cached because
        the same values (today's date, the same signer) recur from one approval to the next."""
        cached = self._programs.get(gids)
        if cached is None:
            program = self.subset_program(gids)
            cached = (len(program), zlib.compress(program))
            self._programs[gids] = cached
            while len(self._programs) > _PROGRAM_CACHE_SIZE:
                self._programs.pop(next(iter(self._programs)))
        return cached

    @staticmethod
    def _assemble(tables: Mapping[str, bytes]) -> bytes:
        tags = sorted(tables)
        num = len(tags)
        entry_selector = max(num.bit_length() - 1, 0)
        search_range = (1 << entry_selector) * 16
        header = struct.pack(
            ">IHHHH", 0x00010000, num, search_range, entry_selector, num * 16 - search_range
        )
        directory = bytearray()
        body = bytearray()
        offset = 12 + 16 * num
        head_offset = 0
        for tag in tags:
            table = tables[tag]
            if tag == "head":
                head_offset = offset + len(body)
            directory += struct.pack(
                ">4sIII", tag.encode("latin-1"), _checksum(table), offset + len(body), len(table)
            )
            body += table + b"\0" * (-len(table) % 4)
        font = bytearray(header + directory + body)
        adjustment = (0xB1B0AFBA - _checksum(bytes(font))) & 0xFFFFFFFF
        font[head_offset + 8 : head_offset + 12] = struct.pack(">I", adjustment)
        return bytes(font)

    def embed(
        self, writer: BasePdfFileWriter, shaped: Iterable[ShapedText]
    ) -> generic.IndirectObject:
        """Add a Type0 font with the glyphs of ``shaped`` (and a ToUnicode map) to ``writer``."""
        to_unicode: dict[int, str] = {}
        for item in shaped:
            for gid, ch in zip(item.glyph_ids, item.text, strict=True):
                if gid:
                    to_unicode.setdefault(gid, ch)
        gids = sorted(to_unicode)
        subset_tag = "".join(random.choices(string.ascii_uppercase, k=6))  # noqa: S311
        base_font = pdf_name(f"/{subset_tag}+{self.postscript_name}")
        length, compressed = self._font_file(tuple(gids))
        font_file = generic.StreamObject(
            {
                pdf_name("/Length1"): generic.NumberObject(length),
                pdf_name("/Filter"): pdf_name("/FlateDecode"),
            },
            encoded_data=compressed,
        )
        scale = 1000 / self.units_per_em
        descriptor = generic.DictionaryObject(
            {
                pdf_name("/Type"): pdf_name("/FontDescriptor"),
                pdf_name("/FontName"): base_font,
                pdf_name("/Flags"): generic.NumberObject(4),
                pdf_name("/FontBBox"): generic.ArrayObject(
                    generic.NumberObject(round(v * scale)) for v in self.bbox
                ),
                pdf_name("/ItalicAngle"): generic.NumberObject(0),
                pdf_name("/Ascent"): generic.NumberObject(round(self.ascent * scale)),
                pdf_name("/Descent"): generic.NumberObject(round(self.descent * scale)),
                pdf_name("/CapHeight"): generic.NumberObject(round(self.cap_height * scale)),
                pdf_name("/StemV"): generic.NumberObject(80),
                pdf_name("/FontFile2"): writer.add_object(font_file),
            }
        )
        widths = generic.ArrayObject()
        for gid in gids:
            widths.append(generic.NumberObject(gid))
            widths.append(generic.ArrayObject([generic.NumberObject(self._width(gid))]))
        cid_font = generic.DictionaryObject(
            {
                pdf_name("/Type"): pdf_name("/Font"),
                pdf_name("/Subtype"): pdf_name("/CIDFontType2"),
                pdf_name("/BaseFont"): base_font,
                pdf_name("/CIDSystemInfo"): generic.DictionaryObject(
                    {
                        pdf_name("/Registry"): generic.pdf_string("Adobe"),
                        pdf_name("/Ordering"): generic.pdf_string("Identity"),
                        pdf_name("/Supplement"): generic.NumberObject(0),
                    }
                ),
                pdf_name("/FontDescriptor"): writer.add_object(descriptor),
                pdf_name("/DW"): generic.NumberObject(1000),
                pdf_name("/W"): widths,
                pdf_name("/CIDToGIDMap"): pdf_name("/Identity"),
            }
        )
        cmap = generic.StreamObject(stream_data=_to_unicode_cmap(to_unicode))
        cmap.compress()
        type0 = generic.DictionaryObject(
            {
                pdf_name("/Type"): pdf_name("/Font"),
                pdf_name("/Subtype"): pdf_name("/Type0"),
                pdf_name("/BaseFont"): base_font,
                pdf_name("/Encoding"): pdf_name("/Identity-H"),
                pdf_name("/DescendantFonts"): generic.ArrayObject([writer.add_object(cid_font)]),
                pdf_name("/ToUnicode"): writer.add_object(cmap),
            }
        )
        return writer.add_object(type0)


def _to_unicode_cmap(mapping: Mapping[int, str]) -> bytes:
    lines = [
        "/CIDInit /ProcSet findresource begin",
        "12 dict begin",
        "begincmap",
        "/CIDSystemInfo << /Registry (Adobe) /Ordering (UCS) /Supplement 0 >> def",
        "/CMapName /Adobe-Identity-UCS def",
        "/CMapType 2 def",
        "1 begincodespacerange",
        "<0000> <FFFF>",
        "endcodespacerange",
    ]
    items = sorted(mapping.items())
    for start in range(0, len(items), 100):  # at most 100 entries per block
        chunk = items[start : start + 100]
        lines.append(f"{len(chunk)} beginbfchar")
        for gid, text in chunk:
            lines.append(f"<{gid:04x}> <{text.encode('utf-16-be').hex()}>")
        lines.append("endbfchar")
    lines += ["endcmap", "CMapName currentdict /CMap defineresource pop", "end", "end"]
    return "\n".join(lines).encode("ascii")
