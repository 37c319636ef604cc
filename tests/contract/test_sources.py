"""The contract every Source keeps (folder, SFTP, SOAP), checked the same way for each.

1. ``pull`` returns records whose provenance names the source and where each record was;
2. the cursor is plain JSON, and once acknowledged, pulling with it returns nothing new;
3. a new record after that is returned by the next pull;
4. ``close`` may be called twice.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from connectors.base import Source
from connectors.csv import CsvFormat
from connectors.folder import FolderSource
from connectors.inbox import ReadLock
from connectors.sftp import SftpEndpoint, SftpSource
from connectors.soap import SoapQuery, SoapSource
from tests.fixtures.soap_awards import PASSWORD, USERNAME, AwardServer, soap_award_server
from tests.fixtures.sshd import SshServer

__all__ = ["soap_award_server"]

CSV = CsvFormat(encoding="cp932", header=False, columns=("番号", "件名"))


@dataclass
class Harness:
    """A source under test and how to give it one more record."""

    source: Callable[[], Source]
    add: Callable[[int], None]


def _folder_harness(folder: Path) -> Harness:
    folder.mkdir(parents=True, exist_ok=True)

    def add(n: int) -> None:
        (folder / f"awards_{n}.csv").write_bytes(f"R7-{n:03d},工事{n}\r\n".encode("cp932"))

    return Harness(
        lambda: FolderSource(
            name="contract", directory=str(folder), csv_format=CSV, read_lock=ReadLock("none")
        ),
        add,
    )


@pytest.fixture(params=["folder", "sftp", "soap"])
def harness(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Harness]:
    if request.param == "folder":
        yield _folder_harness(tmp_path / "inbox")
        return
    if request.param == "sftp":
        server: SshServer = request.getfixturevalue("sshd_server")
        folder = server.root / f"contract-{tmp_path.name}"
        local = _folder_harness(folder)
        endpoint = SftpEndpoint(
            host=server.host, port=server.port, username=server.username,
            key_path=server.client_key, known_hosts=server.known_hosts, timeout=5,
        )  # fmt: skip
        yield Harness(
            lambda: SftpSource(
                endpoint=endpoint,
                name="contract",
                directory=str(folder),
                csv_format=CSV,
                read_lock=ReadLock("none"),
            ),
            local.add,
        )
        return
    soap: AwardServer = request.getfixturevalue("soap_award_server")

    def add(n: int) -> None:
        soap.awards.append(
            {"id": f"R7-{n:03d}", "title": f"工事{n}", "amount": "1", "date": "R7.10.1",
             "contractor": "A", "updated": f"2025-10-01T00:00:{n:02d}"}
        )  # fmt: skip

    query = SoapQuery(
        wsdl=soap.wsdl_url, operation="GetAwards", record_path="awards.award",
        arguments={"office": "1"}, username=USERNAME, password=PASSWORD,
        cursor_argument="since", cursor_field="updatedAt", timeout=5, operation_timeout=5,
    )  # fmt: skip
    yield Harness(lambda: SoapSource(name="contract", query=query), add)


def test_pull_acknowledge_pull(harness: Harness) -> None:
    harness.add(1)
    harness.add(2)
    source = harness.source()
    try:
        batch = source.pull({})
        records = list(batch.records)
        assert len(records) == 2
        for record in records:
            assert record.provenance.source == "contract"
            assert record.error is None
            assert (record.provenance.file and record.provenance.line) or record.provenance.path
            assert record.provenance.describe().startswith("contract:")
        cursor = json.loads(json.dumps(batch.cursor))  # what the database keeps
        source.acknowledge(batch.cursor)
    finally:
        source.close()
    source = harness.source()
    try:
        assert list(source.pull(cursor).records) == []
        harness.add(3)
        again = source.pull(cursor)
        assert [r.provenance.source for r in again.records] == ["contract"]
    finally:
        source.close()
        source.close()
