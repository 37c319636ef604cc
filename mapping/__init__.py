"""mapping: the YAML mapping language, from raw records to drafts or line errors (pure, no I/O).

``load_mapping`` checks a mapping file and reports every problem with its YAML line;
``SourceMapping.apply`` turns one record into an envelope, contractor or usage-request draft,
a skip, or line errors.
"""

from mapping.spec import (
    MappingSpecError,
    Outcome,
    SourceMapping,
    choose_signing_authority,
    load_mapping,
    redact,
)
from mapping.transforms import transform_names

__all__ = [
    "MappingSpecError",
    "Outcome",
    "SourceMapping",
    "choose_signing_authority",
    "load_mapping",
    "redact",
    "transform_names",
]
