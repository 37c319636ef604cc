"""server-side staff sessions, TOTP replay guard, address book, document retention, and trigram
indexes for the substring searches on PostgreSQL

Revision ID: 0010
Revises: 0009
Create Date: 2026-11-22
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None

_TRGM = (
    ("ix_documents_name_trgm", "documents", "name"),
    ("ix_envelopes_title_trgm", "envelopes", "title"),
    ("ix_envelopes_counterparty_trgm", "envelopes", "counterparty"),
)


def upgrade() -> None:
    with op.batch_alter_table("staff") as batch:
        batch.add_column(sa.Column("totp_last_step", sa.BigInteger(), nullable=True))
    with op.batch_alter_table("envelopes") as batch:
        batch.add_column(
            sa.Column("documents_purged_at", sa.DateTime(timezone=True), nullable=True)
        )
    op.create_table(
        "staff_sessions",
        sa.Column("id", sa.String(64), nullable=False),
        sa.Column(
            "staff_id",
            sa.String(32),
            sa.ForeignKey("staff.id", name="fk_staff_sessions_staff_id_staff", ondelete="CASCADE"),
            nullable=False,
        ),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("last_seen_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("ip", sa.String(64), nullable=True),
        sa.Column("ended_at", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_staff_sessions")),
    )
    op.create_index("ix_staff_sessions_staff_id", "staff_sessions", ["staff_id"])
    op.create_table(
        "address_book",
        sa.Column("id", sa.String(32), nullable=False),
        sa.Column("company", sa.String(200), nullable=False),
        sa.Column("name", sa.String(200), nullable=False),
        sa.Column("email", sa.String(320), nullable=False),
        sa.Column("department", sa.String(200), nullable=True),
        sa.Column("note", sa.Text(), nullable=True),
        sa.Column("created_by", sa.String(320), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_address_book")),
        sa.UniqueConstraint("email", "company", name="uq_address_book_email_company"),
    )
    op.create_index("ix_address_book_email", "address_book", ["email"])
    if op.get_bind().dialect.name == "postgresql":
        # pg_trgm is a trusted extension (PostgreSQL 13+): the database owner may create it.
        op.execute("CREATE EXTENSION IF NOT EXISTS pg_trgm")
        for name, table, column in _TRGM:
            op.execute(f"CREATE INDEX {name} ON {table} USING gin ({column} gin_trgm_ops)")


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        for name, _, _ in _TRGM:
            op.execute(f"DROP INDEX IF EXISTS {name}")
    op.drop_index("ix_address_book_email", "address_book")
    op.drop_table("address_book")
    op.drop_index("ix_staff_sessions_staff_id", "staff_sessions")
    op.drop_table("staff_sessions")
    with op.batch_alter_table("envelopes") as batch:
        batch.drop_column("documents_purged_at")
    with op.batch_alter_table("staff") as batch:
        batch.drop_column("totp_last_step")
