"""trigram index on envelopes.management_number for the 管理番号 search on PostgreSQL

Clerks search by the number or a part of it, in any letter case (ILIKE '%…%'); the unique
constraint's B-tree serves neither. SQLite has no such index and scans, as for the other
substring searches.

Revision ID: 0017c
Revises: 0017a_award_records
Create Date: 2026-12-07
"""

from __future__ import annotations

from alembic import op

revision = "0017c"
down_revision = "0017a_award_records"
branch_labels = None
depends_on = None

_INDEX = "ix_envelopes_management_number_trgm"


def upgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        # pg_trgm was created by 0010; IF NOT EXISTS keeps a database restored without it safe.
        op.execute("CREATE EXTENSION IF NOT EXISTS pg_trgm")
        op.execute(
            f"CREATE INDEX {_INDEX} ON envelopes USING gin (management_number gin_trgm_ops)"
        )


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute(f"DROP INDEX IF EXISTS {_INDEX}")
