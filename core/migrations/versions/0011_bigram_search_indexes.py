"""bigram indexes for two-character substring searches on PostgreSQL

Trigram indexes (0010) serve LIKE '%word%' only for words of three characters or more; most
Japanese words are two kanji (道路, 工事, 髙橋), so those searches scanned. keiyaku_bigrams(text) is
the text's distinct two-character substrings; a GIN index over it answers "contains this
two-character word" (core.records.search). SQLite has neither and keeps LIKE.

Revision ID: 0011
Revises: 0010
Create Date: 2026-11-22
"""

from __future__ import annotations

from alembic import op

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None

_INDEXES = (
    ("ix_documents_name_bigram", "documents", "name"),
    ("ix_envelopes_title_bigram", "envelopes", "title"),
    ("ix_envelopes_counterparty_bigram", "envelopes", "counterparty"),
)

# IMMUTABLE (an index expression must be) and STRICT: NULL in, NULL out. A text of one
# character has no bigram: the empty array, which contains no word.
_FUNCTION = """
CREATE OR REPLACE FUNCTION keiyaku_bigrams(t text) RETURNS text[]
LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE
AS $$
  SELECT coalesce(array_agg(DISTINCT substr(t, i, 2)), '{}'::text[])
  FROM generate_series(1, char_length(t) - 1) AS i
$$
"""


def upgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    op.execute(_FUNCTION)
    for name, table, column in _INDEXES:
        op.execute(f"CREATE INDEX {name} ON {table} USING gin (keiyaku_bigrams({column}))")


def downgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    for name, _, _ in _INDEXES:
        op.execute(f"DROP INDEX IF EXISTS {name}")
    op.execute("DROP FUNCTION IF EXISTS keiyaku_bigrams(text)")
