"""archive_checks: what each re-timestamping run found (renewal by evidence)

A renewal is made only when it extends the document's validity; each run records how long a
timestamp made now would last, what it renewed and what it left alone, and the alert when the
TSA certificate is near its end, so /healthz and /metrics on every node can show it.

Revision ID: 0016
Revises: 0013
Create Date: 2026-12-01
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op


revision = "0016"
down_revision = "0013"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "archive_checks",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("checked_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("tsa_expires_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("due", sa.Integer(), nullable=False),
        sa.Column("renewed", sa.Integer(), nullable=False),
        sa.Column("nothing_to_extend", sa.Integer(), nullable=False),
        sa.Column("failed", sa.Integer(), nullable=False),
        sa.Column("alert", sa.Text(), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_archive_checks")),
    )
    op.create_index(
        op.f("ix_archive_checks_checked_at"), "archive_checks", ["checked_at"], unique=False
    )


def downgrade() -> None:
    op.drop_index(op.f("ix_archive_checks_checked_at"), table_name="archive_checks")
    op.drop_table("archive_checks")
