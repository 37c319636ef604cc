"""The SFTP sink against a real OpenSSH sshd: whole files only, trigger last, host key checked."""

from __future__ import annotations

import hashlib
import json
import os
import threading
import time
from dataclasses import replace
from pathlib import Path

import pytest

from connectors._drop import key_hash, temp_name
from connectors.outbound import ContentSpec, RecordSpec, render_outbound
from connectors.sftp import SftpEndpoint, SftpSink, open_sftp
from core.errors import GatewayError
from core.outbound_types import PushDocument
from tests.contract.test_sinks import content
from tests.fixtures.sshd import SshServer


def _endpoint(server: SshServer) -> SftpEndpoint:
    return SftpEndpoint(
        host=server.host,
        port=server.port,
        username=server.username,
        key_path=server.client_key,
        known_hosts=server.known_hosts,
        timeout=5,
    )


class Reader(threading.Thread):
    """The receiving system's import job: polls the folder and reads every visible file, noting
    any whose bytes are not one of the complete files ever uploaded."""

    def __init__(self, folder: Path, complete: set[str]) -> None:
        super().__init__(daemon=True)
        self.folder, self.complete = folder, complete
        self.stop = threading.Event()
        self.reads = 0
        self.partial: list[str] = []

    def run(self) -> None:
        while not self.stop.is_set():
            for path in self.folder.rglob("*"):
                if path.name.startswith(".") or ".keiyaku-receipts" in path.parts:
                    continue
                try:
                    data = path.read_bytes()
                except (FileNotFoundError, IsADirectoryError):
                    continue
                self.reads += 1
                if hashlib.sha256(data).hexdigest() not in self.complete:
                    self.partial.append(f"{path.name}: {len(data)} bytes")


def _big_content(n: int) -> object:
    big = PushDocument("図面.pdf", b"%PDF-1.7\n" + os.urandom(3 * 1024 * 1024) + b"\n%%EOF\n")
    return replace(content(n), documents=(big,))


def test_a_polling_reader_never_sees_a_partial_file(sshd_server: SshServer, tmp_path: Path) -> None:
    spec = ContentSpec(record=RecordSpec(format="json", fields={"no": "management_number"}))
    outs = [render_outbound(_big_content(n), spec, f"sftp-partial:{n}") for n in range(6)]
    complete = {hashlib.sha256(f.data).hexdigest() for o in outs for f in o.files}

    # Control: the same reader against a plain upload does catch files half-written, so a
    # clean result below means something.
    naive = sshd_server.root / "naive"
    naive.mkdir()
    reader = Reader(naive, complete)
    reader.start()
    try:
        with open_sftp(_endpoint(sshd_server)) as sftp:
            for out in outs:
                for file in out.files:
                    with sftp.open(f"{naive}/{file.name}", "wb") as fh:
                        fh.set_pipelined(True)
                        fh.write(file.data)
                        time.sleep(0.01)
    finally:
        reader.stop.set()
        reader.join()
    assert reader.partial, "the control upload should have been caught half-written"

    drop = sshd_server.root / "drop"
    drop.mkdir()
    reader = Reader(drop, complete)
    reader.start()
    sink = SftpSink(name="dms", endpoint=_endpoint(sshd_server), root=str(drop))
    try:
        for out in outs:
            sink.push(out)
    finally:
        sink.close()
        time.sleep(0.05)
        reader.stop.set()
        reader.join()
    assert reader.partial == []
    assert reader.reads > 0
    assert len([p for p in drop.rglob("*.pdf")]) == 12  # 6 × (drawing + certificate)
    assert not [p for p in drop.rglob("*.part")]


def test_trigger_file_comes_last_and_marks_the_delivery_done(
    sshd_server: SshServer,
) -> None:
    root = sshd_server.root / "with-trigger"
    out = render_outbound(content(3), ContentSpec(directory="{management_number}"), "dms:3")
    sink = SftpSink(
        name="dms",
        endpoint=_endpoint(sshd_server),
        root=str(root),
        trigger="{management_number}.end",
    )
    try:
        sink.push(out)
        folder = root / "KG-20261122-0003"
        trigger = folder / "KG-20261122-0003.end"
        manifest = json.loads(trigger.read_text())
        assert manifest["idempotency_key"] == "dms:3"
        for item in manifest["files"]:
            data = (folder / item["name"]).read_bytes()
            assert hashlib.sha256(data).hexdigest() == item["sha256"]
        # written last: no file of the delivery is newer than the trigger
        assert max(p.stat().st_mtime_ns for p in folder.iterdir()) == trigger.stat().st_mtime_ns
        # the staged marker became the receipt (renamed into place): nothing else is left
        receipts = root / ".keiyaku-receipts"
        assert [p.name for p in receipts.iterdir()] == [key_hash("dms:3")]
        assert json.loads((receipts / key_hash("dms:3")).read_text())["idempotency_key"] == "dms:3"
        # A crash after the trigger but before the receipt: the trigger alone means "done".
        (root / ".keiyaku-receipts" / key_hash("dms:3")).unlink()
        before = {p.name: p.stat().st_ino for p in folder.iterdir()}
        sink.push(out)
        assert {p.name: p.stat().st_ino for p in folder.iterdir()} == before
        # The reader took the files away: the receipt keeps them from coming back.
        for path in folder.iterdir():
            path.unlink()
        sink.push(out)
        assert list(folder.iterdir()) == []
    finally:
        sink.close()


def test_host_key_and_auth_problems_are_not_retried(sshd_server: SshServer, tmp_path: Path) -> None:
    wrong = tmp_path / "known_hosts"
    wrong.write_text("")
    sink = SftpSink(
        name="dms",
        endpoint=replace(_endpoint(sshd_server), known_hosts=wrong),
        root=str(sshd_server.root),
    )
    out = render_outbound(content(9), ContentSpec(), "dms:9")
    with pytest.raises(GatewayError) as info:
        sink.push(out)
    assert info.value.code == "sftp.host_key_unknown" and not info.value.retriable


def test_a_dropped_connection_is_reopened(sshd_server: SshServer) -> None:
    root = sshd_server.root / "reopen"
    sink = SftpSink(name="dms", endpoint=_endpoint(sshd_server), root=str(root))
    try:
        first = render_outbound(content(1), ContentSpec(), "dms:r1")
        sink.push(first)
        kept = sink._connection._sftp
        assert kept is not None
        kept.get_channel().close()  # the server or a firewall dropped it
        second = render_outbound(content(2), ContentSpec(), "dms:r2")
        with pytest.raises(GatewayError) as info:
            sink.push(second)
        assert info.value.retriable
        sink.push(second)  # the next try
        assert (root / "KG-20261122-0002_工事請負契約書.pdf").exists()
    finally:
        sink.close()


def test_a_write_the_server_refuses_fails_the_push_and_nothing_is_placed(
    sshd_server: SshServer,
) -> None:
    """Writes are pipelined, yet every answer is checked: a file the server cannot write (here
    its temporary name leads to /dev/full, so every write is refused with "no space") fails the
    push before the staged marker, so nothing is put in place; the retry delivers it whole."""
    root = sshd_server.root / "refused-write"
    out = render_outbound(content(4), ContentSpec(directory="{management_number}"), "dms:4")
    folder = root / "KG-20261122-0004"
    folder.mkdir(parents=True)
    pdf = out.files[0]
    trap = folder / temp_name(pdf.name, "dms:4")
    trap.symlink_to("/dev/full")
    sink = SftpSink(name="dms", endpoint=_endpoint(sshd_server), root=str(root))
    try:
        with pytest.raises(GatewayError) as info:
            sink.push(replace(out, first_attempt=True))
        assert info.value.retriable
        assert [p.name for p in folder.iterdir() if not p.name.startswith(".")] == []
        receipts = root / ".keiyaku-receipts"
        assert not [p for p in receipts.iterdir() if not p.name.endswith(".part")]
        trap.unlink()
        sink.push(out)  # the retry
        placed = {p.name: p.read_bytes() for p in folder.iterdir()}
        assert placed == {f.name: f.data for f in out.files}
        assert [p.name for p in receipts.iterdir()] == [key_hash("dms:4")]
    finally:
        sink.close()
