"""One persistent event loop per process for pyHanko's async API.

pyHanko's synchronous calls wrap ``asyncio.run``: a new loop per signature, and no way to keep an
HTTP session to the TSA alive between signatures. The engine instead runs its coroutines on this
loop, in a daemon thread, so the TSA connection, the parsed key and the timestamper's caches
survive from one approval to the next. Synchronous callers block on a future; async callers
(FastAPI) await it without blocking their own loop. CPU work then happens in the loop's thread,
which costs nothing extra under the GIL.
"""

from __future__ import annotations

import asyncio
import os
import threading
from collections.abc import Coroutine
from typing import Any, TypeVar

__all__ = ["BackgroundLoop", "shared_loop"]

T = TypeVar("T")


class BackgroundLoop:
    """An event loop running forever in a daemon thread, restarted after ``fork``."""

    def __init__(self, name: str = "keiyaku-signing") -> None:
        self._name = name
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._pid = 0

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        """The running loop (started on first use, and again in a forked child)."""
        with self._lock:
            if self._loop is None or self._pid != os.getpid() or not self._loop.is_running():
                loop = asyncio.new_event_loop()
                started = threading.Event()

                def _run() -> None:
                    asyncio.set_event_loop(loop)
                    loop.call_soon(started.set)
                    loop.run_forever()

                thread = threading.Thread(target=_run, name=self._name, daemon=True)
                thread.start()
                started.wait()
                self._loop, self._thread, self._pid = loop, thread, os.getpid()
            return self._loop

    def in_loop_thread(self) -> bool:
        """True when called from the loop's own thread (where blocking would deadlock)."""
        return self._thread is threading.current_thread()

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        """Run ``coro`` on the loop and block until it finishes."""
        if self.in_loop_thread():
            coro.close()
            raise RuntimeError("BackgroundLoop.run() called from its own thread; await instead")
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result()

    async def run_async(self, coro: Coroutine[Any, Any, T]) -> T:
        """Run ``coro`` on the loop and await it from another loop."""
        if self.in_loop_thread():
            return await coro
        return await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(coro, self.loop))


_SHARED = BackgroundLoop()


def shared_loop() -> BackgroundLoop:
    """The process-wide loop every engine and timestamp service uses."""
    return _SHARED
