"""What a sink sends: files named from templates, and a metadata record in JSON, XML or CSV.

A :class:`ContentSpec` (one per sink, from the YAML config) says which files go out (the signed
PDFs, the completion certificate), how they are named, and which metadata record goes with them:
output name → source field, rendered as JSON, as XML validated against a configured XSD, or as
CSV in UTF-8 or CP932. :func:`render_outbound` turns the core's
:class:`~core.outbound_types.PushContent` into an :class:`~core.outbound_types.Outbound`, which
is what :meth:`Sink.push <connectors.base.Sink.push>` takes.

Record fields name a fact (``management_number``, ``contractor_name``, ``amount``,
``concluded_on`` ...), ``idempotency_key``, ``guarantees`` (the whole list; JSON and XML), or one
guarantee value: ``guarantees.1.contract_number`` (the first reference) or
``guarantee.advance.authentication_key`` (the first 前払金保証). A record that cannot be
rendered (a character CP932 cannot hold, a value the XSD refuses) is a refusal of that one
delivery: it goes dead with the reason instead of being written with ``?`` in it.

``spec`` holds what a sink is sent (the YAML settings beside the runtime specs they make),
``check`` the start-up checks of a spec, ``record`` the metadata record's values and formats,
``render`` the files of one delivery and its trigger file's manifest.
"""

from connectors.outbound.check import check_source, check_spec, check_template
from connectors.outbound.record import encode_cp932, record_values, render_record
from connectors.outbound.render import manifest, render_outbound
from connectors.outbound.spec import ContentConfig, ContentSpec, RecordConfig, RecordSpec

__all__ = [
    "ContentConfig",
    "ContentSpec",
    "RecordConfig",
    "RecordSpec",
    "check_source",
    "check_spec",
    "check_template",
    "encode_cp932",
    "manifest",
    "record_values",
    "render_outbound",
    "render_record",
]
