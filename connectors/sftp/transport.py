"""SFTP transport (paramiko): the verified connection the SFTP sink and source share.

Host keys are checked against the configured known_hosts file only (never the user's or the
system's), with ``RejectPolicy``: an unknown or changed key fails the connection. Connection
problems are retriable; host-key and authentication problems are not (retrying cannot fix them
and they may mean an attack).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path

import paramiko
from pydantic import Field, SecretStr

from connectors.base import ConnectorConfig, Resolve
from core.errors import Disposition, GatewayError

__all__ = ["KeptSftp", "SftpEndpoint", "SftpEndpointConfig", "open_sftp"]


@dataclass(frozen=True)
class SftpEndpoint:
    """Where and as whom to connect: the runtime value, made from the admin's YAML shape
    :class:`SftpEndpointConfig`."""

    host: str
    port: int
    username: str
    key_path: Path
    known_hosts: Path
    key_passphrase: str | None = None
    timeout: float = 15.0


class SftpEndpointConfig(ConnectorConfig):
    """The connection settings every SFTP sink and source has: the server, the key-only login
    and the known_hosts file its host key must be in. The admin's YAML shape of
    :class:`SftpEndpoint`, the runtime value :meth:`endpoint` makes."""

    host: str
    port: int = Field(default=22, ge=1, le=65535)
    username: str
    key_path: Path
    key_passphrase: SecretStr | None = None
    known_hosts: Path
    timeout_seconds: float = Field(default=15, gt=0)

    def endpoint(self, resolve: Resolve) -> SftpEndpoint:
        """The endpoint these settings describe, with their files resolved."""
        return SftpEndpoint(
            host=self.host,
            port=self.port,
            username=self.username,
            key_path=resolve(self.key_path),
            known_hosts=resolve(self.known_hosts),
            key_passphrase=self.key_passphrase.get_secret_value() if self.key_passphrase else None,
            timeout=self.timeout_seconds,
        )


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


class KeptSftp:
    """One verified connection (:func:`open_sftp`), opened on first use and kept until
    :meth:`close`: what the SFTP source and sink hold between their calls."""

    def __init__(self, endpoint: SftpEndpoint) -> None:
        self.endpoint = endpoint
        self._stack: ExitStack | None = None
        self._sftp: paramiko.SFTPClient | None = None

    def client(self) -> paramiko.SFTPClient:
        """The connection, opened now when it is not open."""
        if self._sftp is None:
            stack = ExitStack()
            self._sftp = stack.enter_context(open_sftp(self.endpoint))
            self._stack = stack
        return self._sftp

    def close(self) -> None:
        """Close the connection, if open (the next :meth:`client` opens a new one); one the
        server already dropped leaves nothing to release."""
        stack, self._stack, self._sftp = self._stack, None, None
        if stack is not None:
            try:
                stack.close()
            except (OSError, EOFError, paramiko.SSHException):
                pass
