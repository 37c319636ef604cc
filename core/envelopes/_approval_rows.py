"""The rows an inline approval writes, as Core statements: one statement on PostgreSQL.

:func:`core.envelopes.approvals.approve` signs first, then in one transaction moves the party to
``completed`` only if it is still waiting for it (the once-only guard), stores the field values,
and records each document's new revision and size. Through the ORM that was four statements, each
a round trip to PostgreSQL, plus the unit of work's bookkeeping. Here they are one statement
there: the guarded party UPDATE is a CTE every other part waits on (``EXISTS (SELECT ... FROM
approved)``), so it runs, and takes the party's row lock, before anything else is touched, and
when it changes no row nothing else is written either. SQLite (no data-modifying CTEs) runs the
same parts one after the other. Statements are built once per (fields, documents) count.
"""

from __future__ import annotations

import datetime as dt
import functools
from collections.abc import Mapping, Sequence
from typing import Any, cast

from sqlalchemy import Column, Table, bindparam, exists, func, insert, select, update
from sqlalchemy.orm import Session, make_transient_to_detached
from sqlalchemy.orm.attributes import set_committed_value
from sqlalchemy.sql import Executable

from core.model import Document, DocumentRevision, Field, Party, utcnow
from core.states import ACTIONABLE_PARTY_STATES, PartyState

_PARTIES = cast(Table, Party.__table__)
_FIELDS = cast(Table, Field.__table__)
_DOCUMENTS = cast(Table, Document.__table__)
_REVISIONS = cast(Table, DocumentRevision.__table__)
_REVISION_COLUMNS = ("document_id", "seq", "kind", "blob_id", "size", "reason", "created_at")


def _param(name: str, column: Column[Any]) -> Any:
    return bindparam(name, type_=column.type)


def _approve_party() -> Any:
    # Parameter names are never a column's name: a key given at execution that names a column
    # of a table being UPDATEd is added to that UPDATE's SET clause (fields.party_id would be).
    return (
        update(_PARTIES)
        .where(
            _PARTIES.c.id == _param("approved_party", _PARTIES.c.id),
            _PARTIES.c.state.in_(bindparam("approved_from", expanding=True)),
        )
        .values(
            state=_param("approved_to", _PARTIES.c.state),
            approved_at=_param("approved_now", _PARTIES.c.approved_at),
            approved_ip=_param("approved_ip", _PARTIES.c.approved_ip),
            auth_method=_param("approved_auth", _PARTIES.c.auth_method),
            completed_at=_param("approved_now", _PARTIES.c.completed_at),
        )
    )


def _set_field(i: int) -> Any:
    return update(_FIELDS).where(_FIELDS.c.id == _param(f"field_id_{i}", _FIELDS.c.id))


def _field_values(i: int) -> dict[str, Any]:
    return {"value": _param(f"field_value_{i}", _FIELDS.c.value)}


def _set_document(i: int) -> Any:
    return update(_DOCUMENTS).where(_DOCUMENTS.c.id == _param(f"document_id_{i}", _DOCUMENTS.c.id))


def _document_values(i: int) -> dict[str, Any]:
    return {
        "size": _param(f"document_size_{i}", _DOCUMENTS.c.size),
        "signature_count": _param(f"document_signatures_{i}", _DOCUMENTS.c.signature_count),
    }


def _revision_values(i: int) -> list[Any]:
    return [_param(f"revision_{c}_{i}", _REVISIONS.c[c]) for c in _REVISION_COLUMNS]


@functools.lru_cache(maxsize=128)
def _postgresql_statement(fields: int, documents: int) -> Executable:
    approved = _approve_party().returning(_PARTIES.c.id).cte("approved")
    guard = exists(select(approved.c.id))
    side = [
        _set_field(i).where(guard).values(**_field_values(i)).cte(f"field_{i}")
        for i in range(fields)
    ]
    side += [
        _set_document(i).where(guard).values(**_document_values(i)).cte(f"document_{i}")
        for i in range(documents)
    ]
    revisions = [
        insert(_REVISIONS)
        .from_select(list(_REVISION_COLUMNS), select(*_revision_values(i)).where(guard))
        .returning(_REVISIONS.c.id)
        .cte(f"revision_{i}")
        for i in range(documents)
    ]
    return select(
        select(func.count()).select_from(approved).scalar_subquery(),
        *(select(r.c.id).scalar_subquery() for r in revisions),
    ).add_cte(*side)


@functools.cache
def _sqlite_statements() -> tuple[Executable, Executable, Executable, Executable]:
    return (
        _approve_party(),
        _set_field(0).values(**_field_values(0)),
        _set_document(0).values(**_document_values(0)),
        insert(_REVISIONS)
        .values(dict(zip(_REVISION_COLUMNS, _revision_values(0), strict=True)))
        .returning(_REVISIONS.c.id),
    )


def write_approval(
    session: Session,
    *,
    party: Party,
    now: dt.datetime,
    ip: str | None,
    auth_method: str,
    values: Mapping[str, str],
    new_revisions: Sequence[tuple[Document, DocumentRevision]],
) -> bool:
    """Approve and complete ``party`` if it is still waiting for its approval, store its field
    ``values`` (by field id) and attach ``new_revisions``; False, with nothing written, when
    the party was no longer waiting (a concurrent submit won). The loaded objects are updated
    to match, without leaving anything for the ORM to flush."""
    fields = list(party.fields)
    params: dict[str, Any] = {
        "approved_party": party.id,
        "approved_now": now,
        "approved_ip": ip,
        "approved_auth": auth_method,
        "approved_to": PartyState.COMPLETED.value,
        "approved_from": sorted(s.value for s in ACTIONABLE_PARTY_STATES),
    }
    created_at = utcnow()
    for i, f in enumerate(fields):
        params[f"field_id_{i}"] = f.id
        params[f"field_value_{i}"] = values[f.id]
    for i, (doc, revision) in enumerate(new_revisions):
        params[f"document_id_{i}"] = doc.id
        params[f"document_size_{i}"] = revision.size
        params[f"document_signatures_{i}"] = doc.signature_count + 1
        revision.document_id = doc.id
        revision.created_at = created_at
        for c in _REVISION_COLUMNS:
            params[f"revision_{c}_{i}"] = getattr(revision, c)
    if session.get_bind().dialect.name == "postgresql":
        statement = _postgresql_statement(len(fields), len(new_revisions))
        approved, *revision_ids = session.execute(statement, params).one()
        if approved != 1:
            return False
    else:
        party_update, field_update, document_update, revision_insert = _sqlite_statements()
        if session.execute(party_update, params).rowcount != 1:  # type: ignore[attr-defined]
            return False
        if fields:
            session.execute(field_update, [_row(params, i, "field_") for i in range(len(fields))])
        if new_revisions:
            rows = range(len(new_revisions))
            session.execute(document_update, [_row(params, i, "document_") for i in rows])
        revision_ids = [
            session.execute(revision_insert, _row(params, i, "revision_")).scalar_one()
            for i in range(len(new_revisions))
        ]
    for f in fields:
        set_committed_value(f, "value", values[f.id])
    for (doc, revision), revision_id in zip(new_revisions, revision_ids, strict=True):
        revision.id = revision_id
        make_transient_to_detached(revision)
        session.add(revision)
        set_committed_value(revision, "document", doc)
        set_committed_value(doc, "revisions", [*doc.revisions, revision])
        set_committed_value(doc, "size", revision.size)
        set_committed_value(doc, "signature_count", doc.signature_count + 1)
    return True


def _row(params: Mapping[str, Any], i: int, prefix: str) -> dict[str, Any]:
    # The i-th row's parameters under the names of row 0's statement.
    suffix = f"_{i}"
    return {
        f"{key[: -len(suffix)]}_0": value
        for key, value in params.items()
        if key.startswith(prefix) and key.endswith(suffix)
    }
