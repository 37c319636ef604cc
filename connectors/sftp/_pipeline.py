"""Pipelined SFTP requests for the sink: many requests sent, their answers checked together.

Uses paramiko's private request API (``_async_request``, ``_finish_responses``), as paramiko's
own prefetch does.
"""

from __future__ import annotations

from typing import Any

import paramiko

__all__ = ["RenamePipeline", "RequestPipeline"]


class RequestPipeline:
    """SFTP requests sent without waiting for each answer, the answers checked together.

    The server handles one channel's requests in order, so a file's writes and close follow its
    open; only the round trip per request is saved. Uses paramiko's request pipelining
    (``_async_request``, as its own prefetch does). paramiko's own pipelined ``SFTPFile.write``
    drops the answers to its writes (and to the close), so a failed write would go unnoticed;
    here every answer is checked.
    """

    CHUNK = 32768  # paramiko's (and most servers') largest write request

    def __init__(self, sftp: paramiko.SFTPClient) -> None:
        self.sftp: Any = sftp  # its private request API is not in paramiko's stubs
        self.answers: dict[int, tuple[int, paramiko.Message]] = {}
        self.sent: list[int] = []

    def send(self, kind: int, *args: Any) -> int:
        """Send one request; its answer is kept for :meth:`wait`."""
        num = int(self.sftp._async_request(self, kind, *args))
        self.sent.append(num)
        return num

    def _async_response(self, kind: int, msg: paramiko.Message, num: int) -> None:
        # Called by paramiko with each answer.
        self.answers[num] = (kind, msg)

    def _check_exception(self) -> None:
        pass  # answers are judged in wait(), once all are in

    def collect(self) -> list[tuple[int, paramiko.Message]]:
        """Every answer to what was sent so far, in the order sent."""
        self.sftp._finish_responses(self)
        sent, self.sent = self.sent, []
        return [self.answers.pop(num) for num in sent]

    def _status(self, kind: int, msg: paramiko.Message) -> None:
        if kind != paramiko.sftp.CMD_STATUS:
            raise OSError(f"unexpected SFTP answer {kind}")
        self.sftp._convert_status(msg)  # raises the failure as paramiko would

    def wait(self) -> None:
        """Every request sent so far has been answered; raise the first failure."""
        for kind, msg in self.collect():
            self._status(kind, msg)

    def open_for_writing(self, paths: list[str]) -> list[bytes]:
        """Open (create, truncate) every path in one round trip; their handles. The answers
        to what was sent before (a mkdir) are not judged. On a failure the files opened are
        closed and the first failure is raised."""
        flags = (
            paramiko.sftp.SFTP_FLAG_WRITE
            | paramiko.sftp.SFTP_FLAG_CREATE
            | paramiko.sftp.SFTP_FLAG_TRUNC
        )
        before = len(self.sent)
        for path in paths:
            self.send(paramiko.sftp.CMD_OPEN, path, flags, paramiko.SFTPAttributes())
        answers = self.collect()[before:]
        handles: list[bytes] = []
        failure: BaseException | None = None
        for kind, msg in answers:
            if kind == paramiko.sftp.CMD_HANDLE:
                handles.append(msg.get_binary())
                continue
            try:
                self._status(kind, msg)
                failure = failure or OSError(f"unexpected SFTP answer {kind} to an open")
            except (OSError, EOFError) as exc:
                failure = failure or exc
        if failure is not None:
            for handle in handles:
                self.send(paramiko.sftp.CMD_CLOSE, handle)
            self.collect()
            raise failure
        return handles

    def write_and_close(self, handle: bytes, data: bytes) -> None:
        """Send the whole of ``data`` to the open file, then its close."""
        for offset in range(0, len(data), self.CHUNK):
            self.send(
                paramiko.sftp.CMD_WRITE,
                handle,
                paramiko.sftp.int64(offset),
                data[offset : offset + self.CHUNK],
            )
        self.send(paramiko.sftp.CMD_CLOSE, handle)


class RenamePipeline:
    """``posix_rename`` requests sent without waiting for each answer, checked together.

    The server handles one channel's requests in order, so a rename still follows the close of
    its file; only the round trip per rename is saved. Answers are collected (and any failure
    raised) by :meth:`wait` before anything that depends on them, i.e. the trigger file and the
    receipt. Uses paramiko's request pipelining (``_async_request``, as its own prefetch does);
    without it, each rename waits for its answer.
    """

    def __init__(self, sftp: paramiko.SFTPClient) -> None:
        self.sftp = sftp
        self.error: OSError | None = None

    def send(self, old: str, new: str) -> None:
        """Ask for ``old`` to be renamed over ``new``."""
        if not hasattr(self.sftp, "_async_request"):
            self.sftp.posix_rename(old, new)
            return
        self.sftp._async_request(
            self, paramiko.sftp.CMD_EXTENDED, "posix-rename@openssh.com", old, new
        )

    def _async_response(self, kind: int, msg: paramiko.Message, num: int) -> None:
        # Called by paramiko with each answer.
        if kind != paramiko.sftp.CMD_STATUS:
            self.error = self.error or OSError(f"unexpected SFTP answer {kind} to a rename")
            return
        code, text = msg.get_int(), msg.get_text()
        if code != paramiko.sftp.SFTP_OK:
            self.error = self.error or OSError(code, f"rename failed: {text}")

    def _check_exception(self) -> None:
        if self.error is not None:
            raise self.error

    def wait(self) -> None:
        """Every rename sent so far has been answered; raise the first failure."""
        if hasattr(self.sftp, "_finish_responses"):
            self.sftp._finish_responses(self)
        self._check_exception()
