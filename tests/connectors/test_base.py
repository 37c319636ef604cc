"""The defaults every connector inherits from ``connectors.base``."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from connectors.base import Batch, Sink, Source
from core.outbound_types import Outbound


class _Source(Source):
    closed = 0

    def pull(self, cursor: Mapping[str, Any]) -> Batch:
        return Batch(records=iter(()))

    def close(self) -> None:
        self.closed += 1


class _Sink(Sink):
    closed = 0

    def push(self, outbound: Outbound) -> None:
        raise RuntimeError("not pushed here")

    def close(self) -> None:
        self.closed += 1


def test_a_source_and_a_sink_close_when_their_with_block_ends() -> None:
    with _Source() as source, _Sink() as sink:
        assert source.closed == sink.closed == 0
    assert source.closed == sink.closed == 1


def test_a_sink_closes_when_its_with_block_raises() -> None:
    sink = _Sink()
    try:
        with sink:
            sink.push(Outbound(idempotency_key="k", directory="", files=(), record={}))
    except RuntimeError:
        pass
    assert sink.closed == 1
