"""staff, access scope, search indexes and the audit hash chain

Revision ID: 0007
Revises: 0006
Create Date: 2026-11-22
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "staff",
        sa.Column("id", sa.String(length=32), nullable=False),
        sa.Column("email", sa.String(length=320), nullable=False),
        sa.Column("name", sa.String(length=200), nullable=False),
        sa.Column("department", sa.String(length=200), nullable=True),
        sa.Column("roles", sa.String(length=64), nullable=False),
        sa.Column(
            "scope",
            sa.Enum(
                "own", "department", "all", name="visibility_scope", native_enum=False, length=16
            ),
            nullable=False,
        ),
        sa.Column("disabled", sa.Boolean(), nullable=False),
        sa.Column("password_hash", sa.String(length=200), nullable=True),
        sa.Column("totp_secret", sa.String(length=64), nullable=True),
        sa.Column("failed_logins", sa.Integer(), nullable=False),
        sa.Column("locked_until", sa.DateTime(timezone=True), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_staff")),
        sa.UniqueConstraint("email", name=op.f("uq_staff_email")),
    )
    op.create_table(
        "audit_chain_head",
        sa.Column("id", sa.Integer(), autoincrement=False, nullable=False),
        sa.Column("seq", sa.BigInteger(), nullable=False),
        sa.Column("hash", sa.String(length=64), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_audit_chain_head")),
    )
    with op.batch_alter_table("audit_events", schema=None) as batch_op:
        batch_op.add_column(sa.Column("chain_seq", sa.BigInteger(), nullable=True))
        batch_op.add_column(sa.Column("chain_hash", sa.String(length=64), nullable=True))
        batch_op.create_unique_constraint(batch_op.f("uq_audit_events_chain_seq"), ["chain_seq"])
    with op.batch_alter_table("envelopes", schema=None) as batch_op:
        batch_op.add_column(sa.Column("department", sa.String(length=200), nullable=True))
        batch_op.create_index("ix_envelopes_transaction_date", ["transaction_date", "id"])
        batch_op.create_index("ix_envelopes_counterparty", ["counterparty"])
        batch_op.create_index("ix_envelopes_amount", ["amount"])
        batch_op.create_index("ix_envelopes_department", ["department", "transaction_date"])
        batch_op.create_index("ix_envelopes_creator_email", ["creator_email"])
        batch_op.create_index("ix_envelopes_completed_at", ["completed_at"])
    with op.batch_alter_table("parties", schema=None) as batch_op:
        batch_op.create_index("ix_parties_email", ["email"])
    with op.batch_alter_table("api_clients", schema=None) as batch_op:
        batch_op.add_column(sa.Column("allowed_networks", sa.JSON(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("api_clients", schema=None) as batch_op:
        batch_op.drop_column("allowed_networks")
    with op.batch_alter_table("parties", schema=None) as batch_op:
        batch_op.drop_index("ix_parties_email")
    with op.batch_alter_table("envelopes", schema=None) as batch_op:
        for name in (
            "ix_envelopes_completed_at",
            "ix_envelopes_creator_email",
            "ix_envelopes_department",
            "ix_envelopes_amount",
            "ix_envelopes_counterparty",
            "ix_envelopes_transaction_date",
        ):
            batch_op.drop_index(name)
        batch_op.drop_column("department")
    with op.batch_alter_table("audit_events", schema=None) as batch_op:
        batch_op.drop_constraint(batch_op.f("uq_audit_events_chain_seq"), type_="unique")
        batch_op.drop_column("chain_hash")
        batch_op.drop_column("chain_seq")
    op.drop_table("audit_chain_head")
    op.drop_table("staff")
