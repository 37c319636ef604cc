"""SFTP connector (paramiko): the push-back sink (:class:`SftpSink`) and the inbox source
(:class:`SftpSource`) over one verified connection (:func:`open_sftp`).

``transport`` holds the endpoint and the host-key-verified connection, ``sink`` and ``source``
the two connectors, ``config`` their YAML settings; ``_delivery`` the sink's steps of one
delivery, ``_pipeline`` the pipelined requests it writes and renames with.
"""

from connectors.sftp.config import SftpDocumentsConfig, SftpSinkConfig, SftpSourceConfig
from connectors.sftp.sink import SftpSink
from connectors.sftp.source import SftpSource
from connectors.sftp.transport import SftpEndpoint, SftpEndpointConfig, open_sftp

__all__ = [
    "SftpDocumentsConfig",
    "SftpEndpoint",
    "SftpEndpointConfig",
    "SftpSink",
    "SftpSinkConfig",
    "SftpSource",
    "SftpSourceConfig",
    "open_sftp",
]
