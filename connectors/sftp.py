"""SFTP transport (paramiko): the verified connection shared by the SFTP source and sink.

Host keys are checked against the configured known_hosts file only (never the user's or the
system's), with ``RejectPolicy``: an unknown or changed key fails the connection. Connection
problems are retriable; host-key and authentication problems are not (retrying cannot fix them
and they may mean an attack).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import paramiko

from core.errors import Disposition, GatewayError


@dataclass(frozen=True)
class SftpEndpoint:
    """Where and as whom to connect."""

    host: str
    port: int
    username: str
    key_path: Path
    known_hosts: Path
    key_passphrase: str | None = None
    timeout: float = 15.0


def _error(code: str, en: str, ja: str, disposition: Disposition) -> GatewayError:
    return GatewayError(code, en, ja, disposition=disposition)


@contextmanager
def open_sftp(endpoint: SftpEndpoint) -> Iterator[paramiko.SFTPClient]:
    """A connected, host-key-verified SFTP client, closed on exit."""
    client = paramiko.SSHClient()
    client.set_missing_host_key_policy(paramiko.RejectPolicy())
    where = f"{endpoint.host}:{endpoint.port}"
    try:
        client.load_host_keys(str(endpoint.known_hosts))
    except OSError as exc:
        raise _error(
            "sftp.known_hosts_unreadable",
            f"cannot read known_hosts {endpoint.known_hosts}: {exc}",
            "SFTP接続先のホスト鍵ファイル(known_hosts)を読み込めません。",
            Disposition.FATAL,
        ) from exc
    try:
        client.connect(
            endpoint.host,
            port=endpoint.port,
            username=endpoint.username,
            key_filename=str(endpoint.key_path),
            passphrase=endpoint.key_passphrase,
            timeout=endpoint.timeout,
            banner_timeout=endpoint.timeout,
            auth_timeout=endpoint.timeout,
            look_for_keys=False,
            allow_agent=False,
        )
        sftp = client.open_sftp()
    except paramiko.BadHostKeyException as exc:
        client.close()
        raise _error(
            "sftp.host_key_mismatch",
            f"host key of {where} does not match known_hosts",
            "SFTP接続先のホスト鍵が登録されたものと一致しません。",
            Disposition.FATAL,
        ) from exc
    except paramiko.AuthenticationException as exc:
        client.close()
        raise _error(
            "sftp.auth_failed",
            f"authentication to {where} failed",
            "SFTP接続先での認証に失敗しました。",
            Disposition.FATAL,
        ) from exc
    except paramiko.SSHException as exc:
        client.close()
        if "not found in known_hosts" in str(exc):
            raise _error(
                "sftp.host_key_unknown",
                f"host key of {where} is not in known_hosts",
                "SFTP接続先のホスト鍵が登録されていません。",
                Disposition.FATAL,
            ) from exc
        raise _error(
            "sftp.unreachable",
            f"SSH negotiation with {where} failed: {exc}",
            "SFTP接続先に接続できません。",
            Disposition.RETRIABLE,
        ) from exc
    except OSError as exc:  # includes timeouts
        client.close()
        raise _error(
            "sftp.unreachable",
            f"cannot connect to {where}: {exc}",
            "SFTP接続先に接続できません。",
            Disposition.RETRIABLE,
        ) from exc
    try:
        yield sftp
    finally:
        sftp.close()
        client.close()
