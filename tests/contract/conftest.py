"""The receiving systems the sink contract suite pushes to."""

from tests.fixtures.http_sink import rest_sink_server
from tests.fixtures.soap_sink import soap_sink_server

__all__ = ["rest_sink_server", "soap_sink_server"]
