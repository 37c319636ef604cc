"""The Sink contract, run against every sink with a real receiving end.

Folder: a temporary folder. SFTP: a private OpenSSH sshd. SOAP: the test SOAP server through
zeep. REST: the test REST server through httpx (HMAC checked). Each sink must deliver every file
and the record, give a repeated key one effect, tell outages (retriable) from refusals (not),
and come back after an outage.
"""

from __future__ import annotations

import datetime as dt
import os
import socket
from collections.abc import Iterator
from dataclasses import dataclass, replace
from decimal import Decimal
from pathlib import Path
from typing import Any, Protocol

import pytest

from connectors.base import Sink
from connectors.folder import FolderSink
from connectors.http import RestSink
from connectors.outbound import ContentSpec, RecordSpec, render_outbound
from connectors.sftp import SftpEndpoint, SftpSink
from connectors.soap import SoapCall, SoapSink
from core.errors import GatewayError
from core.outbound_types import GuaranteeRecord, Outbound, PushContent, PushDocument
from tests.fixtures.http_sink import RestSinkServer
from tests.fixtures.soap_sink import RECORD_FIELDS, SoapSinkServer
from tests.fixtures.sshd import SshServer

SPEC = ContentSpec(
    directory="{management_number}",
    record=RecordSpec(format="json", fields=RECORD_FIELDS),
)


def content(n: int = 1) -> PushContent:
    """A completed envelope's content, without a database."""
    return PushContent(
        envelope_id=f"env{n:04d}",
        event="completed",
        facts={
            "envelope_id": f"env{n:04d}",
            "management_number": f"KG-20261122-{n:04d}",
            "title": "市道１号線舗装補修工事",
            "certificate_id": "ab" * 16,
            "contractor_name": "株式会社髙橋建設",
            "corporate_number": "7000012050002",
            "amount": Decimal("31389000"),
            "concluded_on": dt.date(2026, 11, 22),
            "department": "土木課",
        },
        guarantees=(
            GuaranteeRecord(
                "advance", "前払金保証", "2070004426", "西日本建設業保証株式会社", "Q7xK2mP9aZ"
            ),
        ),
        documents=(PushDocument("工事請負契約書.pdf", b"%PDF-1.7 contract " + os.urandom(3000)),),
        certificate=b"%PDF-1.7 certificate " + os.urandom(1000),
    )


def outbound(n: int = 1) -> Outbound:
    return render_outbound(content(n), SPEC, f"contract-test:{n}:completed")


class Harness(Protocol):
    sink: Sink

    def files(self, key: str) -> dict[str, bytes] | None: ...
    def effects(self, key: str) -> int: ...
    def outage(self) -> Sink: ...


@dataclass
class FolderHarness:
    root: Path
    sink: Sink

    def _folder(self, key: str) -> Path:
        return self.root / f"KG-20261122-{int(key.split(':')[1]):04d}"

    def files(self, key: str) -> dict[str, bytes] | None:
        folder = self._folder(key)
        if not folder.exists():
            return None
        return {p.name: p.read_bytes() for p in folder.iterdir() if not p.name.startswith(".")}

    def effects(self, key: str) -> int:
        # Each write renames a new inode into place: count distinct inodes seen over time.
        folder = self._folder(key)
        inodes = {p.name: p.stat().st_ino for p in folder.iterdir()}
        self._seen = getattr(self, "_seen", {})
        count = self._seen.get(key, (0, {}))
        if count[1] != inodes:
            self._seen[key] = (count[0] + 1, inodes)
        return self._seen[key][0]

    def outage(self) -> Sink:
        blocker = self.root.parent / "not-a-folder"
        blocker.write_text("x")
        return FolderSink(name="folder", root=blocker / "sub")


@dataclass
class SftpHarness(FolderHarness):
    endpoint: SftpEndpoint | None = None

    def outage(self) -> Sink:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
        assert self.endpoint is not None
        return SftpSink(name="sftp", endpoint=replace(self.endpoint, port=port), root="/tmp")


@dataclass
class ServerHarness:
    server: SoapSinkServer | RestSinkServer
    sink: Sink
    down_sink: Sink

    def files(self, key: str) -> dict[str, bytes] | None:
        got = self.server.applied.get(key)
        if got is None:
            return None
        return {k: v for k, v in got.files.items() if not k.endswith(".json")}

    def effects(self, key: str) -> int:
        return 1 if key in self.server.applied else 0

    def outage(self) -> Sink:
        self.server.down = True
        return self.down_sink


@pytest.fixture(params=["folder", "sftp", "soap", "rest"])
def harness(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Any]:
    kind = request.param
    if kind == "folder":
        root = tmp_path / "drop"
        yield FolderHarness(root=root, sink=FolderSink(name="folder", root=root))
        return
    if kind == "sftp":
        server: SshServer = request.getfixturevalue("sshd_server")
        endpoint = SftpEndpoint(
            host=server.host,
            port=server.port,
            username=server.username,
            key_path=server.client_key,
            known_hosts=server.known_hosts,
            timeout=5,
        )
        root = server.root / f"contract-{os.urandom(4).hex()}"
        sink = SftpSink(name="sftp", endpoint=endpoint, root=str(root))
        try:
            yield SftpHarness(root=root, sink=sink, endpoint=endpoint)
        finally:
            sink.close()
        return
    if kind == "soap":
        soap: SoapSinkServer = request.getfixturevalue("soap_sink_server")
        call = SoapCall(wsdl=soap.wsdl, operation="DeliverContract", attempts=1, timeout=5)
        sink = SoapSink(name="soap", call=call)
        try:
            yield ServerHarness(soap, sink, sink)
        finally:
            sink.close()
        return
    rest: RestSinkServer = request.getfixturevalue("rest_sink_server")
    sink = RestSink(name="rest", url=rest.url, hmac_secret=rest.secret, attempts=1, timeout=5)
    try:
        yield ServerHarness(rest, sink, sink)
        assert rest.bad_signatures == 0
    finally:
        sink.close()


def test_push_delivers_every_file_and_the_record(harness: Any) -> None:
    out = outbound(1)
    harness.sink.push(out)
    got = harness.files(out.idempotency_key)
    assert got is not None
    for file in out.files:
        if file.role == "record" and isinstance(harness, ServerHarness):
            continue  # structured sinks receive the record as fields
        assert got[file.name] == file.data, file.name
    if isinstance(harness, ServerHarness):
        record = harness.server.applied[out.idempotency_key].record
        assert record["contractNumber"] == "KG-20261122-0001"
        assert record["amount"] == "31389000"
        assert record["guarantees"][0]["authentication_key"] == "Q7xK2mP9aZ"


def test_the_same_key_twice_has_one_effect(harness: Any) -> None:
    out = outbound(2)
    for _ in range(3):
        harness.sink.push(out)
        assert harness.effects(out.idempotency_key) == 1


def test_two_keys_are_two_deliveries(harness: Any) -> None:
    first, second = outbound(3), outbound(4)
    for out in (first, second):
        harness.sink.push(out)
    assert harness.files(first.idempotency_key) and harness.files(second.idempotency_key)


def test_an_outage_is_retriable_and_the_sink_comes_back(harness: Any) -> None:
    out = outbound(5)
    down = harness.outage()
    with pytest.raises(GatewayError) as info:
        down.push(out)
    assert info.value.retriable, info.value.code
    down.close()
    if isinstance(harness, ServerHarness):
        harness.server.down = False
    harness.sink.push(out)
    assert harness.files(out.idempotency_key)


@pytest.mark.parametrize("kind", ["folder", "sftp"])
def test_a_retry_after_a_crash_never_puts_a_file_in_place_twice(
    kind: str, tmp_path: Path, request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No trigger file: a push dies after its first file was renamed into place, the consumer
    takes that file away at once (as drop-folder readers do), and the retry puts only the
    files that never arrived in place; a third push is a no-op."""
    item = outbound(7)
    if kind == "folder":
        root = tmp_path / "drop"
        sink: Sink = FolderSink(name="folder", root=root)
        real_replace = os.replace
        placed: list[str] = []

        def dying_replace(src: Any, dst: Any) -> None:
            if ".keiyaku-receipts" not in str(dst) and placed:
                raise OSError(5, "killed mid-delivery")  # the second file never arrives
            real_replace(src, dst)
            if ".keiyaku-receipts" not in str(dst):
                placed.append(str(dst))

        monkeypatch.setattr("connectors.folder.os.replace", dying_replace)
    else:
        server: SshServer = request.getfixturevalue("sshd_server")
        endpoint = SftpEndpoint(
            host=server.host,
            port=server.port,
            username=server.username,
            key_path=server.client_key,
            known_hosts=server.known_hosts,
            timeout=5,
        )
        root = server.root / f"retry-{os.urandom(4).hex()}"
        sink = SftpSink(name="sftp", endpoint=endpoint, root=str(root))
        from connectors.sftp._pipeline import RenamePipeline

        real_send = RenamePipeline.send
        sent: list[str] = []

        def dying_send(self: Any, old: str, new: str) -> None:
            if sent:
                raise OSError(5, "killed mid-delivery")
            sent.append(new)
            self.sftp.posix_rename(old, new)  # this one reaches the server

        monkeypatch.setattr(RenamePipeline, "send", dying_send)
    folder = root / "KG-20261122-0007"
    names = sorted(f.name for f in item.files)
    try:
        with pytest.raises(GatewayError) as info:
            sink.push(replace(item, first_attempt=True))
        assert info.value.retriable
        arrived = [p for p in folder.iterdir() if not p.name.startswith(".")]
        assert len(arrived) == 1  # one file in place, the rest still under temporary names
        taken = {arrived[0].name: arrived[0].read_bytes()}
        arrived[0].unlink()  # the consumer imported it and moved it away

        monkeypatch.undo()
        if kind == "sftp":
            monkeypatch.setattr(RenamePipeline, "send", real_send)
        sink.push(item)  # the retry
        now_there = {p.name: p.read_bytes() for p in folder.iterdir() if not p.name.startswith(".")}
        assert set(now_there) | set(taken) == set(names)
        assert not set(now_there) & set(taken)  # the taken file did not come back
        expected = {f.name: f.data for f in item.files}
        assert {**now_there, **taken} == expected
        assert not [p for p in folder.iterdir() if p.name.endswith(".part")]

        for p in list(folder.iterdir()):
            p.unlink()
        sink.push(item)  # done: nothing written
        assert list(folder.iterdir()) == []
        receipts = root / ".keiyaku-receipts"
        assert [p.name for p in receipts.iterdir() if p.name.endswith(".staged")] == []
    finally:
        if kind == "sftp":
            sink.close()  # type: ignore[attr-defined]


def test_a_crash_between_receipt_and_marker_leaves_no_marker_behind(tmp_path: Path) -> None:
    """A folder push killed after its receipt was placed but before its staged marker was
    removed: the retry finds the receipt, writes nothing again, and removes the marker (the
    SIGKILL test in tests/schedules/test_dispatch_processes.py met this as a 501st receipt)."""
    root = tmp_path / "drop"
    sink = FolderSink(name="folder", root=root)
    item = outbound(9)
    sink.push(replace(item, first_attempt=True))
    receipts = root / ".keiyaku-receipts"
    [receipt] = list(receipts.iterdir())
    marker = receipts / f"{receipt.name}.staged"
    marker.write_bytes(receipt.read_bytes())  # as the killed push left it
    folder = root / "KG-20261122-0009"
    for p in list(folder.iterdir()):
        p.unlink()  # the consumer took the files away
    sink.push(item)  # the retry
    assert [p.name for p in receipts.iterdir()] == [receipt.name]
    assert list(folder.iterdir()) == []  # nothing delivered twice
