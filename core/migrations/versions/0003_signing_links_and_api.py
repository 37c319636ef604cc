"""signing links, access codes, API clients, envelope ownership, amendments

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-22
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op


revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:

    op.create_table(
        "access_codes",
        sa.Column("party_id", sa.String(length=32), nullable=False),
        sa.Column("code_hash", sa.String(length=200), nullable=False),
        sa.Column("set_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["party_id"], ["parties.id"], name=op.f("fk_access_codes_party_id_parties")
        ),
        sa.PrimaryKeyConstraint("party_id", name=op.f("pk_access_codes")),
    )

    op.create_table(
        "signing_links",
        sa.Column("id", sa.String(length=32), nullable=False),
        sa.Column("token_hash", sa.String(length=64), nullable=False),
        sa.Column(
            "purpose",
            sa.Enum("sign", "download", name="link_purpose", native_enum=False, length=16),
            nullable=False,
        ),
        sa.Column("envelope_id", sa.String(length=32), nullable=False),
        sa.Column("party_id", sa.String(length=32), nullable=True),
        sa.Column("email", sa.String(length=320), nullable=False),
        sa.Column("issued_for", sa.String(length=200), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("revoked_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("revoked_reason", sa.String(length=32), nullable=True),
        sa.Column("failed_attempts", sa.Integer(), nullable=False),
        sa.Column("locked_at", sa.DateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(
            ["envelope_id"], ["envelopes.id"], name=op.f("fk_signing_links_envelope_id_envelopes")
        ),
        sa.ForeignKeyConstraint(
            ["party_id"], ["parties.id"], name=op.f("fk_signing_links_party_id_parties")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_signing_links")),
        sa.UniqueConstraint("token_hash", name=op.f("uq_signing_links_token_hash")),
    )
    with op.batch_alter_table("signing_links", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_signing_links_envelope_id"), ["envelope_id"], unique=False
        )
        batch_op.create_index(batch_op.f("ix_signing_links_party_id"), ["party_id"], unique=False)
        batch_op.create_index(
            batch_op.f("ix_signing_links_issued_for"), ["issued_for"], unique=False
        )

    op.create_table(
        "api_clients",
        sa.Column("id", sa.String(length=32), nullable=False),
        sa.Column("name", sa.String(length=100), nullable=False),
        sa.Column("token_hash", sa.String(length=64), nullable=False),
        sa.Column("token_hint", sa.String(length=16), nullable=False),
        sa.Column("scopes", sa.JSON(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("revoked_at", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_api_clients")),
        sa.UniqueConstraint("name", name=op.f("uq_api_clients_name")),
        sa.UniqueConstraint("token_hash", name=op.f("uq_api_clients_token_hash")),
    )

    op.create_table(
        "api_envelopes",
        sa.Column("envelope_id", sa.String(length=32), nullable=False),
        sa.Column("client_id", sa.String(length=32), nullable=False),
        sa.Column("idempotency_key", sa.String(length=200), nullable=True),
        sa.Column("request_sha256", sa.String(length=64), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["client_id"], ["api_clients.id"], name=op.f("fk_api_envelopes_client_id_api_clients")
        ),
        sa.ForeignKeyConstraint(
            ["envelope_id"], ["envelopes.id"], name=op.f("fk_api_envelopes_envelope_id_envelopes")
        ),
        sa.PrimaryKeyConstraint("envelope_id", name=op.f("pk_api_envelopes")),
        sa.UniqueConstraint(
            "client_id", "idempotency_key", name=op.f("uq_api_envelopes_client_id")
        ),
    )
    with op.batch_alter_table("api_envelopes", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_api_envelopes_client_id"), ["client_id"], unique=False)
        batch_op.create_index(
            batch_op.f("ix_api_envelopes_created_at"), ["created_at"], unique=False
        )

    op.create_table(
        "amendments",
        sa.Column("envelope_id", sa.String(length=32), nullable=False),
        sa.Column("original_id", sa.String(length=32), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["envelope_id"], ["envelopes.id"], name=op.f("fk_amendments_envelope_id_envelopes")
        ),
        sa.ForeignKeyConstraint(
            ["original_id"], ["envelopes.id"], name=op.f("fk_amendments_original_id_envelopes")
        ),
        sa.PrimaryKeyConstraint("envelope_id", name=op.f("pk_amendments")),
    )
    with op.batch_alter_table("amendments", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_amendments_original_id"), ["original_id"], unique=False
        )


def downgrade() -> None:

    with op.batch_alter_table("amendments", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_amendments_original_id"))
    op.drop_table("amendments")

    with op.batch_alter_table("api_envelopes", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_api_envelopes_created_at"))
        batch_op.drop_index(batch_op.f("ix_api_envelopes_client_id"))
    op.drop_table("api_envelopes")

    op.drop_table("api_clients")

    with op.batch_alter_table("signing_links", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_signing_links_issued_for"))
        batch_op.drop_index(batch_op.f("ix_signing_links_party_id"))
        batch_op.drop_index(batch_op.f("ix_signing_links_envelope_id"))
    op.drop_table("signing_links")

    op.drop_table("access_codes")
