"""What every `keiyaku` command shares: how it fails and how it opens the gateway.

A command never calls ``sys.exit(2)`` itself: it raises :class:`CommandError` (or lets a
:class:`~core.errors.GatewayError` leave :func:`with_gateway` / :func:`with_session`, which turn it
into :class:`GatewayFailure`), and click prints the message and exits 2. Exit codes a command
promises for its own outcomes (``verify`` 0/1/3, ``sync`` 0/1/3) stay explicit in the command.

Nothing heavy is imported at module load: ``keiyaku --help`` must not load pyHanko or SQLAlchemy.
"""

from __future__ import annotations

import getpass
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, NoReturn

import click

from core.errors import GatewayError

if TYPE_CHECKING:
    from sqlalchemy.orm import Session

    from gateway.runtime import Gateway
    from gateway.settings import Settings

__all__ = [
    "CliContext",
    "CommandError",
    "GatewayFailure",
    "actor",
    "fail",
    "with_gateway",
    "with_session",
]


class CommandError(click.ClickException):
    """The command cannot do what was asked: its message on stderr as is, exit code 2."""

    exit_code = 2

    def show(self, file: IO[Any] | None = None) -> None:
        click.echo(self.format_message(), file=file, err=file is None)


class GatewayFailure(CommandError):
    """A :class:`GatewayError` ending a command: ``error: CODE: message`` and its problems."""

    def __init__(self, error: GatewayError) -> None:
        super().__init__(f"error: {error.code}: {error.message_en}")
        self.error = error

    def show(self, file: IO[Any] | None = None) -> None:
        super().show(file)
        for problem in self.error.details.get("problems") or []:
            click.echo(f"  - {problem}", file=file, err=file is None)


def fail(error: GatewayError) -> NoReturn:
    """End the command with ``error`` (exit code 2)."""
    raise GatewayFailure(error) from error


def actor() -> str:
    """Who the audit log records for a CLI decision: ``cli:<login name>``."""
    return f"cli:{getpass.getuser()}"


class CliContext:
    """The click context object: the config path, and the settings loaded from it on demand."""

    def __init__(self, config: Path) -> None:
        self.config = config
        self._settings: Settings | None = None

    def settings(self) -> Settings:
        """The settings of ``--config``, loaded once per command; an invalid config ends the
        command (exit code 2)."""
        from gateway.settings import load_settings

        if self._settings is None:
            try:
                self._settings = load_settings(self.config)
            except GatewayError as exc:
                fail(exc)
        return self._settings


@contextmanager
def with_gateway(obj: CliContext) -> Iterator[Gateway]:
    """The configured gateway (database, blob store, signing key) for one command, closed on
    exit; a GatewayError opening or using it ends the command with exit code 2."""
    from gateway.runtime import open_gateway

    settings = obj.settings()
    try:
        gateway = open_gateway(settings)
    except GatewayError as exc:
        fail(exc)
    try:
        yield gateway
    except GatewayError as exc:
        fail(exc)
    finally:
        gateway.close()


@contextmanager
def with_session(obj: CliContext, *, commit: bool = False) -> Iterator[Session]:
    """One session on the configured database, for commands that need no signing key or blob
    store; committed on success when ``commit``; a GatewayError ends the command (exit code 2)."""
    from gateway.server import open_database

    settings = obj.settings()
    try:
        with open_database(settings) as factory, factory() as session:
            yield session
            if commit:
                session.commit()
    except GatewayError as exc:
        fail(exc)
