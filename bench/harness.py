"""What the benches share, so each one measures the same honest way.

- **Stacks in their own processes, interleaved within rounds.** A :class:`StackProcess` builds
  one stack (the gateway, bare pyHanko, a floor, ...) in a spawned child and runs one timed
  operation at a time on the parent's command; :func:`interleave` has every stack do its
  operation once per round, in an order rotated round by round, so the machine's load swings
  (2 shared cores) hit every stack alike and the ratios come from the same moments.
- **Process peak RSS, per operation.** Before each operation the child resets its high-water
  mark (``/proc/self/clear_refs``: 5) and reads ``VmHWM`` after it, so the peak is that
  operation's, not the verification's or set-up's; ``idle_mb`` is the resident size before it.
  Where the reset is refused, ``ru_maxrss`` (the whole life of the child) stands in.
- **What one operation needs** (``above_idle_mb``): after the timed rounds, :func:`memory_pass`
  has each stack run a few more operations, each after a garbage collection and glibc's
  ``malloc_trim(0)`` hand the free heap back to the kernel, so the resident size before it is
  what is live and its rise is what it allocates. (In the timed rounds the heap kept from
  earlier operations absorbs the next one and the rise reads near zero; the trim is kept out
  of them because it would add page faults to the timings.)
- **Every output verified**, by the stack itself after the timed part (untimed, not in the peak).
- **The machine's load** (``os.getloadavg``) at start and end of every run, and one JSON object
  with ``--json``.
- A scratch PostgreSQL database, and an RFC 3161 TSA over HTTP on loopback (pyHanko's
  ``DummyTimeStamper`` behind aiohttp) with configurable added latency.
"""

from __future__ import annotations

import asyncio
import ctypes
import gc
import importlib
import json
import multiprocessing
import os
import resource
import secrets
import statistics
import threading
import time
import traceback
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

PG_ADMIN = os.environ.get(
    "KEIYAKU_TEST_PG_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test"
)


# --- the machine ------------------------------------------------------------------------------


def machine() -> dict[str, Any]:
    """Cores and the 1/5/15-minute load averages now."""
    return {"cores": os.cpu_count(), "load": [round(x, 2) for x in os.getloadavg()]}


def emit(report: dict[str, Any], lines: Sequence[str], *, as_json: bool) -> None:
    """Print the run: one JSON object, or the human lines."""
    if as_json:
        print(json.dumps(report, ensure_ascii=False, sort_keys=True))
    else:
        print("\n".join(lines))


# --- figures ----------------------------------------------------------------------------------


@dataclass
class Samples:
    """Seconds per operation and each operation's peak RSS (bytes) of one stack."""

    seconds: list[float] = field(default_factory=list)
    peaks: list[int] = field(default_factory=list)
    idles: list[int] = field(default_factory=list)
    rises: list[int] = field(default_factory=list)  # from memory_pass, on a trimmed heap
    verified: int = 0

    @property
    def p50_ms(self) -> float:
        return statistics.median(self.seconds) * 1000

    @property
    def p90_ms(self) -> float:
        ordered = sorted(self.seconds)
        return ordered[min(len(ordered) - 1, int(len(ordered) * 0.9))] * 1000

    @property
    def peak_mb(self) -> float:
        return max(self.peaks) / 2**20 if self.peaks else 0.0

    @property
    def idle_mb(self) -> float:
        return min(self.idles) / 2**20 if self.idles else 0.0

    @property
    def above_idle_mb(self) -> float:
        """The largest rise of one operation over the resident size just before it: what the
        operation itself needed, from :func:`memory_pass` when it ran (else from the timed
        operations, where the kept heap hides most of it). The largest peak less the smallest
        idle also counts the heap the process kept from earlier operations, which says more
        about the allocator."""
        rises = self.rises or [p - i for p, i in zip(self.peaks, self.idles, strict=True)]
        return max(rises) / 2**20 if rises else 0.0

    def as_dict(self) -> dict[str, Any]:
        return {
            "n": len(self.seconds),
            "p50_ms": round(self.p50_ms, 2),
            "p90_ms": round(self.p90_ms, 2),
            "peak_rss_mb": round(self.peak_mb, 1),
            "idle_rss_mb": round(self.idle_mb, 1),
            "above_idle_mb": round(self.above_idle_mb, 2),
            "verified": self.verified,
        }


def ratio(a: float, b: float) -> float:
    """a / b, rounded for printing (inf when b is 0)."""
    return round(a / b, 3) if b else float("inf")


# --- stacks in child processes ----------------------------------------------------------------


class Stack(Protocol):
    """One thing measured: built in its child process from keyword arguments."""

    def run(self, i: int) -> None:
        """Operation ``i`` (timed)."""

    def verify(self, i: int) -> None:
        """Check operation ``i``'s output; raise if it is wrong (untimed)."""

    def close(self) -> None:
        """Release what the stack holds."""


_STATUS = Path("/proc/self/status")
_CLEAR_REFS = Path("/proc/self/clear_refs")


def _reset_peak() -> bool:
    try:
        _CLEAR_REFS.write_text("5")
        return True
    except OSError:
        return False


def _release_free_heap() -> None:
    """Garbage collected and the C heap's free pages returned to the kernel, so the resident
    size before an operation is what is live, and the operation's rise is what it needs."""
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc: the rise may read low
        pass


def _status_bytes(name: str) -> int:
    for line in _STATUS.read_text().splitlines():
        if line.startswith(name + ":"):
            return int(line.split()[1]) * 1024
    return 0


def _child(factory: str, kwargs: dict[str, Any], conn: Any) -> None:
    """A stack's process: build it, then answer commands until told to stop."""
    try:
        module, name = factory.split(":")
        stack: Stack = getattr(importlib.import_module(module), name)(**kwargs)
    except BaseException:
        conn.send(("error", traceback.format_exc()))
        return
    conn.send(("ready", None))
    resettable = _reset_peak()
    while True:
        command, arg = conn.recv()
        try:
            if command in ("run", "memory"):
                if command == "memory":
                    _release_free_heap()
                idle = _status_bytes("VmRSS")
                resettable = _reset_peak()
                start = time.perf_counter()
                stack.run(arg)
                elapsed = time.perf_counter() - start
                peak = (
                    _status_bytes("VmHWM")
                    if resettable
                    else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
                )
                conn.send(("ok", (elapsed, peak, idle)))
            elif command == "batch":
                # Throughput: several operations back to back, timed as one, with the
                # background work they leave (a stack's ``settle``, e.g. the signing
                # worker's flush of staged blobs): deferred work is still work.
                start = time.perf_counter()
                for i in arg:
                    stack.run(i)
                settle = getattr(stack, "settle", None)
                if settle is not None:
                    settle()
                conn.send(("ok", time.perf_counter() - start))
            elif command == "verify":
                stack.verify(arg)
                conn.send(("ok", None))
            elif command == "call":
                method, args = arg
                conn.send(("ok", getattr(stack, method)(*args)))
            elif command == "stop":
                stack.close()
                conn.send(("ok", None))
                return
        except BaseException:
            conn.send(("error", traceback.format_exc()))


class StackError(RuntimeError):
    """A stack's child process failed; the message carries its traceback."""


class StackProcess:
    """A stack built by ``factory`` ("module:callable") in its own spawned process."""

    def __init__(self, name: str, factory: str, **kwargs: Any) -> None:
        self.name = name
        ctx = multiprocessing.get_context("spawn")
        self._conn, child_conn = ctx.Pipe()
        self._proc = ctx.Process(target=_child, args=(factory, kwargs, child_conn), daemon=True)
        self._proc.start()
        self.samples = Samples()
        self._answer()

    def _answer(self) -> Any:
        if not self._conn.poll(1800):
            raise StackError(f"{self.name}: no answer in 30 minutes")
        status, value = self._conn.recv()
        if status == "error":
            raise StackError(f"{self.name} failed:\n{value}")
        return value

    def send(self, command: str, arg: Any = None) -> None:
        self._conn.send((command, arg))

    def ask(self, command: str, arg: Any = None) -> Any:
        self.send(command, arg)
        return self._answer()

    def run(self, i: int) -> None:
        """Operation ``i``, timed and peak-measured in the child, then verified (untimed)."""
        elapsed, peak, idle = self.ask("run", i)
        self.samples.seconds.append(elapsed)
        self.samples.peaks.append(peak)
        self.samples.idles.append(idle)
        self.ask("verify", i)
        self.samples.verified += 1

    def measure(self, i: int) -> None:
        """Operation ``i`` on a trimmed heap: its rise over the live resident size (untimed
        for the figures), then verified."""
        _elapsed, peak, idle = self.ask("memory", i)
        self.samples.rises.append(max(peak - idle, 0))
        self.ask("verify", i)
        self.samples.verified += 1

    def call(self, method: str, *args: Any) -> Any:
        """Any other method of the stack (set-up steps, untimed)."""
        return self.ask("call", (method, args))

    def close(self) -> None:
        try:
            if self._proc.is_alive():
                self.ask("stop")
        finally:
            self._proc.join(timeout=30)
            if self._proc.is_alive():
                self._proc.kill()
                self._proc.join()


@contextmanager
def stacks(specs: Mapping[str, tuple[str, dict[str, Any]]]) -> Iterator[dict[str, StackProcess]]:
    """Start one process per stack (name -> (factory, kwargs)); stop them all at the end."""
    started: dict[str, StackProcess] = {}
    try:
        for name, (factory, kwargs) in specs.items():
            started[name] = StackProcess(name, factory, **kwargs)
        yield started
    finally:
        for proc in started.values():
            proc.close()


def interleave(procs: Sequence[StackProcess], rounds: int, *, warmup: int = 1) -> None:
    """``warmup`` untimed-for-the-figures rounds, then ``rounds`` rounds in which every stack
    does operation i once; the order rotates each round so no stack always runs first."""
    for i in range(-warmup, rounds):
        shift = i % len(procs)
        for proc in [*procs[shift:], *procs[:shift]]:
            if i < 0:
                proc.ask("run", i)
                proc.ask("verify", i)
            else:
                proc.run(i)


MEMORY_OPS = 2


def memory_pass(procs: Sequence[StackProcess], first: int, count: int = MEMORY_OPS) -> None:
    """Operations ``first`` .. ``first + count - 1`` of every stack, each measured by
    :meth:`StackProcess.measure` (the stacks must have that many operations ready)."""
    for i in range(first, first + count):
        for proc in procs:
            proc.measure(i)


def parallel_batches(procs: Sequence[StackProcess], batches: Sequence[Sequence[int]]) -> float:
    """Wall seconds for every process to run its batch at the same time."""
    for proc, batch in zip(procs, batches, strict=True):
        proc.send("batch", list(batch))
    return max(proc._answer() for proc in procs)


# --- PostgreSQL -------------------------------------------------------------------------------


@contextmanager
def scratch_postgres(admin_url: str = PG_ADMIN, **settings: str) -> Iterator[str | None]:
    """A fresh database next to ``admin_url``'s, dropped afterwards; None when unreachable."""
    from sqlalchemy import create_engine, text

    admin = create_engine(
        admin_url, isolation_level="AUTOCOMMIT", connect_args={"connect_timeout": 3}
    )
    name = f"keiyaku_bench_{secrets.token_hex(4)}"
    try:
        with admin.connect() as conn:
            conn.execute(text(f'CREATE DATABASE "{name}"'))
            for key, value in settings.items():
                conn.execute(text(f'ALTER DATABASE "{name}" SET {key} = {value}'))
    except Exception:  # unreachable: the caller reports PostgreSQL as skipped
        admin.dispose()
        yield None
        return
    try:
        yield admin_url.rsplit("/", 1)[0] + f"/{name}"
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


# --- a TSA over HTTP --------------------------------------------------------------------------


@dataclass
class LoopbackTsa:
    """An RFC 3161 TSA on 127.0.0.1: the development PKI's TSA key behind aiohttp, answering
    after ``latency`` seconds more than it needs (a remote TSA's round trip)."""

    url: str
    requests: int = 0


@contextmanager
def loopback_tsa(pki_dir: Path, passphrase: bytes, latency: float = 0.0) -> Iterator[LoopbackTsa]:
    """Serve a TSA in a thread of this process until the block ends."""
    from aiohttp import web
    from asn1crypto import tsp

    from core.signing import TimestampService
    from core.signing.devpki import DevPki

    pki = DevPki.at(pki_dir)
    stamper: Any = TimestampService.development(
        tsa_cert_path=pki.tsa_cert,
        tsa_key_path=pki.tsa_key,
        chain_paths=[pki.root_cert],
        key_passphrase=passphrase,
    ).timestamper
    ready = threading.Event()
    state: dict[str, Any] = {}

    async def answer(request: web.Request) -> web.Response:
        req = tsp.TimeStampReq.load(await request.read())
        if latency:
            await asyncio.sleep(latency)
        response = await stamper.async_request_tsa_response(req)
        tsa.requests += 1
        return web.Response(body=response.dump(), content_type="application/timestamp-reply")

    async def serve() -> None:
        app = web.Application()
        app.router.add_post("/", answer)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        state["url"] = f"http://127.0.0.1:{port}/"
        state["stop"] = asyncio.Event()
        ready.set()
        await state["stop"].wait()
        await runner.cleanup()

    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_until_complete, args=(serve(),), daemon=True)
    thread.start()
    if not ready.wait(30):
        raise RuntimeError("the loopback TSA did not start")
    tsa = LoopbackTsa(state["url"])
    try:
        yield tsa
    finally:
        loop.call_soon_threadsafe(state["stop"].set)
        thread.join(timeout=10)
        loop.close()
