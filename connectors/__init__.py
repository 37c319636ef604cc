"""connectors: sources that pull and sinks that push, one module (or package) per transport."""

from connectors.base import Batch, Provenance, RawRecord, Sink, Source

__all__ = ["Batch", "Provenance", "RawRecord", "Sink", "Source"]
