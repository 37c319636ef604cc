"""push-back: guarantee references (電子保証)

Revision ID: 0005
Revises: 0002
Create Date: 2026-11-23
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op


revision = "0005"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:

    op.create_table(
        "guarantee_references",
        sa.Column("id", sa.String(length=32), nullable=False),
        sa.Column("envelope_id", sa.String(length=32), nullable=False),
        sa.Column(
            "kind",
            sa.Enum(
                "contract",
                "advance",
                "interim_advance",
                name="guarantee_kind",
                native_enum=False,
                length=16,
            ),
            nullable=False,
        ),
        sa.Column("contract_number", sa.String(length=32), nullable=False),
        sa.Column("issuer", sa.String(length=200), nullable=False),
        sa.Column("key_ciphertext", sa.Text(), nullable=False),
        sa.Column("key_hint", sa.String(length=8), nullable=False),
        sa.Column("project_name", sa.String(length=300), nullable=True),
        sa.Column("buyer", sa.String(length=200), nullable=True),
        sa.Column("source", sa.String(length=16), nullable=False),
        sa.Column("notice_blob_id", sa.String(length=64), nullable=True),
        sa.Column("created_by", sa.String(length=320), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["envelope_id"],
            ["envelopes.id"],
            name=op.f("fk_guarantee_references_envelope_id_envelopes"),
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_guarantee_references")),
        sa.UniqueConstraint(
            "envelope_id",
            "contract_number",
            name=op.f("uq_guarantee_references_envelope_id"),
        ),
    )
    with op.batch_alter_table("guarantee_references", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_guarantee_references_contract_number"),
            ["contract_number"],
            unique=False,
        )
        batch_op.create_index(
            batch_op.f("ix_guarantee_references_envelope_id"), ["envelope_id"], unique=False
        )


def downgrade() -> None:

    with op.batch_alter_table("guarantee_references", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_guarantee_references_envelope_id"))
        batch_op.drop_index(batch_op.f("ix_guarantee_references_contract_number"))

    op.drop_table("guarantee_references")
