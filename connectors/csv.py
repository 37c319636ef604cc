"""The CSV *format*: bytes in, raw records out, streamed. Transports (folder, SFTP) hand it a
binary stream; it never reads a whole file into memory.

Options follow what real exports need (notes/integration.md): a declared encoding (``cp932``
for Shift_JIS files, ``utf-8`` with or without a BOM), a header row or declared column names
(or positions "1", "2", ... when neither), rows to skip before the header, values meaning empty.
A record that cannot be read whole (undecodable bytes, a wrong number of columns) comes out with
its ``error`` set, so the run records a line error and goes on with the next line.
"""

from __future__ import annotations

import codecs
import csv
import io
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import IO, Any

from connectors.base import Provenance, RawRecord
from core.errors import RecordError

__all__ = ["CsvFormat", "PrefixedStream", "encoding_hint", "read_csv"]

_ALIASES = {"shift_jis": "cp932", "shift-jis": "cp932", "sjis": "cp932", "s_jis": "cp932",
            "windows-31j": "cp932", "ms932": "cp932"}  # fmt: skip


@dataclass(frozen=True)
class CsvFormat:
    """How to read one CSV layout."""

    encoding: str = "utf-8"
    header: bool = True
    columns: tuple[str, ...] = ()
    delimiter: str = ","
    quotechar: str = '"'
    skip_rows: int = 0
    null_values: tuple[str, ...] = ("",)

    @classmethod
    def from_options(cls, options: Mapping[str, Any]) -> CsvFormat:
        """From a mapping's ``format:`` section (keys that are not about CSV are ignored)."""
        encoding = str(options.get("encoding", "utf-8"))
        return cls(
            encoding=_ALIASES.get(encoding.lower(), encoding),
            header=bool(options.get("header", True)),
            columns=tuple(options.get("columns", ())),
            delimiter=str(options.get("delimiter", ",")),
            quotechar=str(options.get("quotechar", '"')),
            skip_rows=int(options.get("skip_rows", 0)),
            null_values=tuple(options.get("null_values", ("",))),
        )

    @property
    def python_encoding(self) -> str:
        """The codec to decode with: UTF-8 always drops a leading BOM."""
        name = codecs.lookup(self.encoding).name
        return "utf-8-sig" if name in ("utf-8", "utf-8-sig") else self.encoding


def _decodes(data: bytes, encoding: str) -> bool:
    """Whether ``data`` is valid in ``encoding`` (a character cut at the end is allowed)."""
    decoder = codecs.getincrementaldecoder(encoding)(errors="strict")
    try:
        decoder.decode(data, final=False)
    except UnicodeDecodeError:
        return False
    return True


def encoding_hint(head: bytes, declared: str) -> str | None:
    """What a file's first bytes look like when they do not look like ``declared``: ``"utf-8"``
    or ``"cp932"``, else None. UTF-8 text is almost never valid CP932 *and* valid UTF-8 at once
    (and the reverse), so a file that decodes strictly only as the other is a safe hint."""
    body = head[3:] if head.startswith(b"\xef\xbb\xbf") else head
    if body.isascii():
        return None
    declared = codecs.lookup(_ALIASES.get(declared.lower(), declared)).name
    utf8 = _decodes(body, "utf-8")
    if declared in ("utf-8", "utf-8-sig"):
        return "cp932" if not utf8 and _decodes(body, "cp932") else None
    return "utf-8" if utf8 or head.startswith(b"\xef\xbb\xbf") else None


class PrefixedStream(io.RawIOBase):
    """A binary stream whose first bytes were already read (to sniff them): those, then the
    rest of the original stream."""

    def __init__(self, head: bytes, rest: IO[bytes]) -> None:
        self._head = memoryview(head)
        self._rest = rest

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        if self._head.nbytes:
            n = min(len(buffer), self._head.nbytes)
            buffer[:n] = self._head[:n]
            self._head = self._head[n:]
            return n
        data = self._rest.read(len(buffer))
        buffer[: len(data)] = data
        return len(data)


def _unique_names(names: list[str]) -> list[str]:
    seen: dict[str, int] = {}
    result = []
    for position, raw in enumerate(names, start=1):
        name = raw.strip().strip("\ufeff") or str(position)
        if name in seen:
            seen[name] += 1
            name = f"{name}_{seen[name]}"
        else:
            seen[name] = 1
        result.append(name)
    return result


def _record_error(code: str, en: str, ja: str) -> RecordError:
    return RecordError(code, en, ja)


def read_csv(stream: IO[bytes], fmt: CsvFormat, *, source: str, file: str) -> Iterator[RawRecord]:
    """Raw records of one CSV stream, with the 1-based line each starts on."""
    text = io.TextIOWrapper(stream, encoding=fmt.python_encoding, errors="replace", newline="")
    try:
        yield from _rows(text, fmt, source=source, file=file)
    finally:
        text.detach()  # the caller owns (and closes) the binary stream


def _rows(text: io.TextIOWrapper, fmt: CsvFormat, *, source: str, file: str) -> Iterator[RawRecord]:
    reader = csv.reader(text, delimiter=fmt.delimiter, quotechar=fmt.quotechar, strict=False)
    nulls = set(fmt.null_values)
    names: list[str] | None = list(fmt.columns) if fmt.columns else None
    skip = fmt.skip_rows
    header_pending = fmt.header
    previous_end = 0
    while True:
        try:
            row = next(reader)
        except StopIteration:
            return
        except csv.Error as exc:
            line = previous_end + 1
            previous_end = reader.line_num
            yield RawRecord(
                {},
                Provenance(source=source, file=file, line=line),
                _record_error(
                    "format.csv",
                    f"line {line} is not valid CSV: {exc}",
                    f"{line}行目をCSVとして読めません。",
                ),
            )
            continue
        line = previous_end + 1
        previous_end = reader.line_num
        if skip:
            skip -= 1
            continue
        if header_pending:
            header_pending = False
            names = _unique_names(row)
            continue
        if not any(cell.strip() for cell in row):
            continue  # blank line (Excel leaves them at the end)
        provenance = Provenance(source=source, file=file, line=line)
        if names is None:
            names = [str(i) for i in range(1, len(row) + 1)]
        error: RecordError | None = None
        if any("\ufffd" in cell for cell in row):
            error = _record_error(
                "format.encoding",
                f"line {line} is not valid {fmt.encoding}",
                f"{line}行目の文字コードが{fmt.encoding}として正しくありません。",
            )
        elif len(row) < len(names):
            error = _record_error(
                "format.column_count",
                f"line {line} has {len(row)} columns; {len(names)} expected",
                f"{line}行目の列数が{len(row)}です({len(names)}列必要です)。",
            )
        elif len(row) > len(names) and any(cell.strip() for cell in row[len(names) :]):
            error = _record_error(
                "format.column_count",
                f"line {line} has {len(row)} columns; {len(names)} expected",
                f"{line}行目の列数が{len(row)}です({len(names)}列のはずです)。",
            )
        fields: dict[str, Any] = {}
        for name, cell in zip(names, row, strict=False):
            fields[name] = None if cell.strip() in nulls else cell
        yield RawRecord(fields, provenance, error)
