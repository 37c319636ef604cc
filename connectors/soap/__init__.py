"""SOAP connector (zeep): a source of awards (:class:`SoapSource`) and a push-back sink
(:class:`SoapSink`).

``sink`` and ``source`` hold the two connectors with their runtime values (:class:`SoapCall`,
:class:`SoapQuery`), ``config`` their YAML settings; ``_client`` the safe zeep client both
open and the call failures both mean the same by, ``_response`` the source's response
checking, flattening and what its failed calls mean.
"""

from connectors.soap.config import SoapSinkConfig, SoapSourceConfig
from connectors.soap.sink import SoapCall, SoapSink
from connectors.soap.source import MAX_RECORD_RETRIES, DocumentStore, SoapQuery, SoapSource

__all__ = [
    "MAX_RECORD_RETRIES",
    "DocumentStore",
    "SoapCall",
    "SoapQuery",
    "SoapSink",
    "SoapSinkConfig",
    "SoapSource",
    "SoapSourceConfig",
]
