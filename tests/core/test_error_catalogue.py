"""Every error code the source can raise is catalogued in ``core.error_codes`` with the class,
disposition and HTTP status it is raised with, and ``docs/errors.md`` is the catalogue."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import core.errors
import gateway.body_limit
import mapping.spec
from core.error_codes import CATALOGUE, FAMILIES, lookup, markdown
from core.errors import Disposition, GatewayError
from gateway.errors import status_for
from tests.raised_codes import ROOT, RaiseSite, raise_sites

# Sites whose code is not a literal, with every code they can raise. ``None``: the site passes
# on the code of an error raised (and checked) elsewhere.
DYNAMIC: dict[tuple[str, str], tuple[str, ...] | None] = {
    ("core/errors.py", "code"): ("storage.full", "storage.read_only", "storage.io_error"),
    ("core/intake/awards.py", "exc.code"): None,  # a refusal re-coded as the award's line error
    ("core/rendering.py", "code"): None,  # a DocumentError of the render worker, passed on
    ("gateway/errors.py", "f'{REQUEST_HTTP_PREFIX}{exc.status_code}'"): ("request.http_405",),
    ("gateway/ops_http.py", "f'health.{local_down[0]}'"): ("health.database", "health.blobs"),
}

# Raised as a class the code is not catalogued under (to be made consistent where it lives).
KNOWN_CLASS_MISMATCHES = {("gateway/cli_pushback.py", "not_found.envelope")}


def _classes() -> dict[str, type[GatewayError]]:
    assert gateway.body_limit and mapping.spec  # imported for their error classes
    found: dict[str, type[GatewayError]] = {}
    pending: list[type[GatewayError]] = [GatewayError]
    while pending:
        cls = pending.pop()
        found[cls.__name__] = cls
        pending.extend(cls.__subclasses__())
    return found


SITES = raise_sites()
CLASSES = _classes()


def _literal_sites() -> list[RaiseSite]:
    return [s for s in SITES if s.code is not None]


def test_the_scan_finds_the_raise_sites() -> None:
    # guards the scanner itself: a change that blinds it would pass every test below
    assert len(_literal_sites()) > 300
    assert {s.error_class for s in SITES} >= {"StateError", "DocumentError", "SinkError"}


def test_every_raised_code_is_catalogued() -> None:
    missing = sorted(
        {f"{s.code} ({s.file}:{s.line})" for s in _literal_sites() if s.code not in CATALOGUE}
    )
    assert missing == []


def test_every_dynamic_code_is_known_and_catalogued() -> None:
    dynamic = {(s.file, s.expression) for s in SITES if s.code is None}
    assert dynamic == set(DYNAMIC), "list a new dynamic code's possible values in DYNAMIC"
    for codes in DYNAMIC.values():
        for code in codes or ():
            assert lookup(code) is not None, code


def test_every_catalogued_code_is_raised() -> None:
    raised = {s.code for s in _literal_sites()}
    raised |= {code for codes in DYNAMIC.values() for code in codes or ()}
    assert sorted(set(CATALOGUE) - raised) == []


def test_codes_are_raised_as_their_catalogued_class() -> None:
    wrong = []
    for site in _literal_sites():
        assert site.error_class in CLASSES, f"unknown error class {site.error_class}"
        entry = CATALOGUE[str(site.code)]
        if (site.file, site.code) in KNOWN_CLASS_MISMATCHES:
            continue
        if not issubclass(CLASSES[site.error_class], entry.raised_as):
            wrong.append(f"{site.code}: {site.error_class} at {site.file}:{site.line}")
    assert wrong == []


def _disposition(site: RaiseSite) -> Disposition | None:
    """The disposition a site raises with, when it is written as a constant."""
    if site.disposition is None:
        return CLASSES[site.error_class].default_disposition
    node = ast.parse(site.disposition, mode="eval").body
    if isinstance(node, ast.Attribute) and ast.unparse(node.value) == "Disposition":
        return Disposition[node.attr]
    return None  # decided at run time


def test_codes_are_raised_with_their_catalogued_disposition() -> None:
    wrong = []
    for site in _literal_sites():
        entry = CATALOGUE[str(site.code)]
        raised = _disposition(site)
        if entry.disposition is not None and raised is not None and raised != entry.disposition:
            wrong.append(f"{site.code}: {raised.value} at {site.file}:{site.line}")
    assert wrong == []


def test_the_status_is_the_catalogued_one() -> None:
    for entry in CATALOGUE.values():
        # a per-case code's status is its fatal one (503 when raised retriable)
        disposition = entry.disposition or Disposition.FATAL
        exc = entry.raised_as(entry.code, "en", "ja", disposition=disposition)
        assert status_for(exc) == entry.status, entry.code


@pytest.mark.parametrize(
    ("error", "status"),
    [
        (GatewayError("request.http_418", "teapot", "ティーポット"), 418),
        (CLASSES["StateError"]("state.illegal_transition", "", ""), 409),
        (CLASSES["InputError"]("envelope.bad_date", "", ""), 422),
        (CLASSES["StateError"]("envelope.bad_date", "", ""), 422),
        (CLASSES["AuthError"]("link.locked", "", ""), 423),
        (CLASSES["SigningError"]("signing.tsa_unreachable", "", ""), 500),
        (
            CLASSES["SigningError"](
                "signing.tsa_unreachable", "", "", disposition=Disposition.RETRIABLE
            ),
            503,
        ),
        # a refusal re-coded as an award's line error keeps the line error's 422
        (CLASSES["RecordError"]("state.award_needs_access_code", "", ""), 422),
        (GatewayError("nobody.catalogued_this", "", ""), 500),
    ],
)
def test_status_for(error: GatewayError, status: int) -> None:
    assert status_for(error) == status


def test_state_error_is_for_state_codes() -> None:
    """Refused input is an InputError (422); a StateError is a ``state.*`` conflict (409). No
    module is excepted: the last, core/envelopes/, raised 14 refusals as StateError."""
    wrong = {
        f"{s.code} at {s.file}:{s.line}"
        for s in _literal_sites()
        if s.error_class == "StateError" and not str(s.code).startswith("state.")
    }
    assert sorted(wrong) == []
    catalogued = sorted(
        code
        for code, entry in CATALOGUE.items()
        if entry.raised_as is CLASSES["StateError"] and not code.startswith("state.")
    )
    assert catalogued == []
    for site in _literal_sites():
        if site.error_class == "InputError":
            assert not str(site.code).startswith("state."), site


def test_the_error_tree_names_every_family() -> None:
    doc = core.errors.__doc__ or ""
    assert sorted(f for f in FAMILIES if f"{f}.*" not in doc) == []


def test_the_catalogue_is_read_only() -> None:
    with pytest.raises(TypeError):
        CATALOGUE["x.y"] = CATALOGUE["internal.unexpected"]  # type: ignore[index]


def test_the_docs_table_is_current() -> None:
    docs = Path(ROOT / "docs" / "errors.md")
    assert docs.read_text(encoding="utf-8") == markdown(), (
        "regenerate: python -c 'import core.error_codes as c; "
        'open("docs/errors.md", "w").write(c.markdown())\''
    )
