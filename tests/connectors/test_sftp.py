"""The verified SFTP connection against a real OpenSSH sshd."""

from __future__ import annotations

import subprocess
from dataclasses import replace
from pathlib import Path

import pytest

from connectors.sftp import SftpEndpoint, open_sftp
from core.errors import GatewayError
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


def test_connects_with_a_known_host_key(sshd_server: SshServer) -> None:
    (sshd_server.root / "in.txt").write_text("落札データ")
    with open_sftp(_endpoint(sshd_server)) as sftp:
        assert "in.txt" in sftp.listdir(str(sshd_server.root))


def test_unknown_host_key_is_refused(sshd_server: SshServer, tmp_path: Path) -> None:
    empty = tmp_path / "known_hosts"
    empty.write_text("")
    with pytest.raises(GatewayError) as info:
        with open_sftp(replace(_endpoint(sshd_server), known_hosts=empty)):
            pass
    assert info.value.code == "sftp.host_key_unknown" and not info.value.retriable


def test_changed_host_key_is_refused(sshd_server: SshServer, tmp_path: Path) -> None:
    other = tmp_path / "other"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(other)], check=True)
    key_type, key = Path(f"{other}.pub").read_text().split()[:2]
    wrong = tmp_path / "known_hosts"
    wrong.write_text(f"[127.0.0.1]:{sshd_server.port} {key_type} {key}\n")
    with pytest.raises(GatewayError) as info:
        with open_sftp(replace(_endpoint(sshd_server), known_hosts=wrong)):
            pass
    assert info.value.code == "sftp.host_key_mismatch"


def test_nothing_listening_is_retriable(sshd_server: SshServer) -> None:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    with pytest.raises(GatewayError) as info:
        with open_sftp(replace(_endpoint(sshd_server), port=port)):
            pass
    assert info.value.code == "sftp.unreachable" and info.value.retriable


def test_source_read_failures(sshd_server: SshServer) -> None:
    from connectors.csv import CsvFormat
    from connectors.sftp import SftpSource

    inbox = sshd_server.root / "inbox-failures"
    inbox.mkdir()
    (inbox / "c.pdf").write_bytes(b"%PDF-1.7")

    def source(directory: Path) -> SftpSource:
        return SftpSource(
            endpoint=_endpoint(sshd_server), name="contract", directory=str(directory),
            csv_format=CsvFormat(),
        )  # fmt: skip

    missing = source(inbox / "none")
    with pytest.raises(GatewayError) as info:
        missing.pull({})
    assert info.value.code == "sftp.no_directory" and not info.value.retriable
    missing.close()
    present = source(inbox)
    assert present.fetch_document("c.pdf") == b"%PDF-1.7"
    with pytest.raises(GatewayError) as info:
        present.fetch_document("none.pdf")
    assert info.value.code == "intake.document_missing"
    # Removed between the stat and the read.
    assert present._stat(str(inbox / "c.pdf")) is not None
    (inbox / "c.pdf").unlink()
    with pytest.raises(GatewayError) as info:
        present._read(str(inbox / "c.pdf"))
    assert info.value.code == "sftp.vanished" and info.value.retriable
    present.close()
    present.close()
