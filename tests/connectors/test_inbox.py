"""The inbox source's branches the contract suite does not reach, on a real temp folder: the
read lock, a file rewritten while read, moving aside, documents, the encoding hint; and the
folder sink's write failures."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from connectors.csv import CsvFormat
from connectors.folder import FolderSink, FolderSource
from connectors.inbox import ReadLock
from connectors.outbound import ContentSpec, RecordSpec, render_outbound
from core.errors import GatewayError
from tests.contract.test_sinks import content

CSV = CsvFormat(encoding="cp932", header=False, columns=("番号", "件名"))
ROW = "R7-001,工事1\r\n".encode("cp932")


def _source(folder: Path, **options: object) -> FolderSource:
    return FolderSource(name="contract", directory=str(folder), csv_format=CSV, **options)  # type: ignore[arg-type]


def test_a_file_still_being_written_is_left_for_the_next_run(tmp_path: Path) -> None:
    (tmp_path / "a.csv").write_bytes(ROW)
    (tmp_path / "b.csv").write_bytes(ROW)
    (tmp_path / "c.csv.part").write_bytes(ROW)
    (tmp_path / ".hidden.csv").write_bytes(ROW)

    def grow(seconds: float) -> None:
        assert seconds == 2
        with open(tmp_path / "b.csv", "ab") as fh:
            fh.write(ROW)

    source = _source(tmp_path, read_lock=ReadLock("stable", interval=2), sleep=grow)
    batch = source.pull({})
    assert [r.provenance.file for r in batch.records] == ["a.csv"]
    assert batch.cursor["read"] == ["a.csv"] and batch.cursor["move"] == ["a.csv"]


def test_done_file_lock_reads_only_announced_files_and_moves_both(tmp_path: Path) -> None:
    (tmp_path / "a.csv").write_bytes(ROW)
    (tmp_path / "a.csv.done").write_bytes(b"")
    (tmp_path / "b.csv").write_bytes(ROW)
    source = _source(tmp_path, read_lock=ReadLock("done_file"), pattern="*")
    batch = source.pull({})
    assert [r.provenance.file for r in batch.records] == ["a.csv"]
    source.acknowledge(batch.cursor)
    moved = sorted(p.name.split("_", 1)[1] for p in (tmp_path / "processed").iterdir())
    assert moved == ["a.csv", "a.csv.done"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["b.csv", "processed"]


def test_a_file_rewritten_while_read_is_forgotten_and_not_moved(tmp_path: Path) -> None:
    (tmp_path / "a.csv").write_bytes(ROW)
    source = _source(tmp_path, read_lock=ReadLock("none"))
    batch = source.pull({})
    records = iter(batch.records)
    next(records)
    (tmp_path / "a.csv").write_bytes(ROW + ROW)
    list(records)
    assert batch.cursor["files"] == {} and batch.cursor["move"] == []
    source.acknowledge(batch.cursor)
    assert not (tmp_path / "processed").exists()


def test_read_but_unmoved_files_are_moved_next_time_and_leave_forgets(tmp_path: Path) -> None:
    (tmp_path / "a.csv").write_bytes(ROW)
    (tmp_path / "b.csv").write_bytes(ROW)
    source = _source(tmp_path, read_lock=ReadLock("none"))
    first = source.pull({})
    list(first.records)
    again = source.pull(first.cursor)  # a crash after the commit, before the move
    assert list(again.records) == [] and again.cursor["move"] == ["a.csv", "b.csv"]
    kept = source.leave(again.cursor, {"b.csv"})
    assert set(kept["files"]) == {"a.csv"} and kept["move"] == ["a.csv"]
    nowhere = _source(tmp_path, read_lock=ReadLock("none"), processed_dir=None)
    assert nowhere.pull({}).cursor["move"] == []


def test_the_encoding_hint_names_what_the_bytes_look_like(tmp_path: Path) -> None:
    (tmp_path / "a.csv").write_bytes("R7-001,工事1\r\n".encode())
    source = _source(tmp_path, read_lock=ReadLock("none"))
    list(source.pull({}).records)  # each undecodable line is a record error, not a raise
    assert source.diagnose("a.csv") == (
        "its bytes look like UTF-8, not cp932: set format.encoding: utf-8 in the mapping"
    )
    assert source.diagnose("other.csv") is None


def test_documents_are_read_only_inside_their_folder_and_size(tmp_path: Path) -> None:
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "c.pdf").write_bytes(b"%PDF-" + b"x" * 20)
    (tmp_path / "docs" / "sub").mkdir()
    source = _source(tmp_path, documents_dir=str(tmp_path / "docs"), max_document_bytes=25)
    assert source.fetch_document("c.pdf").startswith(b"%PDF-")
    codes = {}
    for path in ("../a.csv", "none.pdf", "sub"):
        with pytest.raises(GatewayError) as info:
            source.fetch_document(path)
        codes[path] = info.value.code
    assert codes == {
        "../a.csv": "intake.document_path",
        "none.pdf": "intake.document_missing",
        "sub": "intake.document_missing",
    }
    small = _source(tmp_path, documents_dir=str(tmp_path / "docs"), max_document_bytes=10)
    with pytest.raises(GatewayError) as info:
        small.fetch_document("c.pdf")
    assert info.value.code == "intake.document_too_large"
    assert info.value.message_ja.endswith("が大きすぎます。")


def test_a_missing_inbox_folder_is_fatal(tmp_path: Path) -> None:
    with pytest.raises(GatewayError) as info:
        _source(tmp_path / "none").pull({})
    assert info.value.code == "folder.no_directory" and not info.value.retriable


SPEC = ContentSpec(
    record=RecordSpec(format="csv", fields={"no": "management_number"}, encoding="cp932")
)


def test_folder_write_failures_are_retried_unless_the_name_is_refused(tmp_path: Path) -> None:
    out = render_outbound(content(1), SPEC, "drop:1")
    blocked = tmp_path / "blocked"
    blocked.write_text("a file where the folder should be")
    with pytest.raises(GatewayError) as info:
        FolderSink(name="drop", root=blocked, fsync=False).push(out)
    assert info.value.code == "folder.write_failed" and info.value.retriable
    assert info.value.message_ja == f"フォルダ {blocked / out.directory} に書き込めません。"
    long = dataclasses.replace(out, directory="x" * 300)
    with pytest.raises(GatewayError) as info:
        FolderSink(name="drop", root=tmp_path / "ok").push(long)
    assert info.value.code == "folder.write_failed" and not info.value.retriable
