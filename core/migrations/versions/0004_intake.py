"""intake: awards, contractors' addresses, usage requests, sync runs, dead letters, job runs

Revision ID: 0004
Revises: 0002
Create Date: 2026-11-22
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op


revision = "0004"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "job_runs",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("job_id", sa.String(length=64), nullable=False),
        sa.Column("fire_time", sa.DateTime(timezone=True), nullable=False),
        sa.Column("node", sa.String(length=100), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("finished_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("message", sa.Text(), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_job_runs")),
        sa.UniqueConstraint("job_id", "fire_time", name=op.f("uq_job_runs_job_id")),
    )
    op.create_table(
        "source_cursors",
        sa.Column("source", sa.String(length=64), nullable=False),
        sa.Column("cursor", sa.JSON(), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("source", name=op.f("pk_source_cursors")),
    )
    op.create_table(
        "sync_runs",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("source", sa.String(length=64), nullable=False),
        sa.Column("trigger", sa.String(length=16), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("finished_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("duration_ms", sa.Integer(), nullable=True),
        sa.Column("records", sa.Integer(), nullable=False),
        sa.Column("created", sa.Integer(), nullable=False),
        sa.Column("updated", sa.Integer(), nullable=False),
        sa.Column("unchanged", sa.Integer(), nullable=False),
        sa.Column("skipped", sa.Integer(), nullable=False),
        sa.Column("waiting", sa.Integer(), nullable=False),
        sa.Column("released", sa.Integer(), nullable=False),
        sa.Column("conflicts", sa.Integer(), nullable=False),
        sa.Column("errors", sa.Integer(), nullable=False),
        sa.Column("message", sa.Text(), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_sync_runs")),
    )
    with op.batch_alter_table("sync_runs", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_sync_runs_source"), ["source"], unique=False)

    op.create_table(
        "contractor_emails",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("contractor_id", sa.String(length=32), nullable=False),
        sa.Column("email", sa.String(length=320), nullable=False),
        sa.Column("source", sa.String(length=64), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["contractor_id"],
            ["contractors.id"],
            name=op.f("fk_contractor_emails_contractor_id_contractors"),
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_contractor_emails")),
        sa.UniqueConstraint(
            "contractor_id", "email", name=op.f("uq_contractor_emails_contractor_id")
        ),
    )
    with op.batch_alter_table("contractor_emails", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_contractor_emails_contractor_id"), ["contractor_id"], unique=False
        )

    op.create_table(
        "contractor_identities",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("contractor_id", sa.String(length=32), nullable=False),
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("value", sa.String(length=200), nullable=False),
        sa.ForeignKeyConstraint(
            ["contractor_id"],
            ["contractors.id"],
            name=op.f("fk_contractor_identities_contractor_id_contractors"),
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_contractor_identities")),
        sa.UniqueConstraint("kind", "value", name=op.f("uq_contractor_identities_kind")),
    )
    with op.batch_alter_table("contractor_identities", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_contractor_identities_contractor_id"), ["contractor_id"], unique=False
        )

    op.create_table(
        "dead_letters",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("run_id", sa.Integer(), nullable=True),
        sa.Column("source", sa.String(length=64), nullable=False),
        sa.Column("file", sa.String(length=500), nullable=True),
        sa.Column("line", sa.Integer(), nullable=True),
        sa.Column("path", sa.String(length=500), nullable=True),
        sa.Column("field", sa.String(length=100), nullable=True),
        sa.Column("code", sa.String(length=64), nullable=False),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("reason_ja", sa.Text(), nullable=False),
        sa.Column("mapping_line", sa.Integer(), nullable=True),
        sa.Column("record", sa.JSON(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["run_id"], ["sync_runs.id"], name=op.f("fk_dead_letters_run_id_sync_runs")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_dead_letters")),
    )
    with op.batch_alter_table("dead_letters", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_dead_letters_run_id"), ["run_id"], unique=False)
        batch_op.create_index(batch_op.f("ix_dead_letters_source"), ["source"], unique=False)

    op.create_table(
        "usage_requests",
        sa.Column("id", sa.String(length=32), nullable=False),
        sa.Column("source", sa.String(length=64), nullable=False),
        sa.Column("request_key", sa.String(length=200), nullable=False),
        sa.Column("contractor_id", sa.String(length=32), nullable=False),
        sa.Column("award_ref", sa.String(length=100), nullable=True),
        sa.Column("signer_name", sa.String(length=200), nullable=False),
        sa.Column("signer_title", sa.String(length=200), nullable=True),
        sa.Column("signer_email", sa.String(length=320), nullable=False),
        sa.Column("access_code_hash", sa.String(length=200), nullable=True),
        sa.Column("contact_department", sa.String(length=200), nullable=True),
        sa.Column("contact_name", sa.String(length=200), nullable=True),
        sa.Column("contact_phone", sa.String(length=50), nullable=True),
        sa.Column("contact_email", sa.String(length=320), nullable=True),
        sa.Column("consented_on", sa.Date(), nullable=True),
        sa.Column("withdrawn_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["contractor_id"],
            ["contractors.id"],
            name=op.f("fk_usage_requests_contractor_id_contractors"),
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_usage_requests")),
        sa.UniqueConstraint("source", "request_key", name=op.f("uq_usage_requests_source")),
    )
    with op.batch_alter_table("usage_requests", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_usage_requests_contractor_id"), ["contractor_id"], unique=False
        )

    op.create_table(
        "awards",
        sa.Column("id", sa.String(length=32), nullable=False),
        sa.Column("source", sa.String(length=64), nullable=False),
        sa.Column("award_id", sa.String(length=100), nullable=False),
        sa.Column(
            "state",
            sa.Enum(
                "waiting_usage_request",
                "waiting_documents",
                "drafted",
                "sent",
                "changed_after_send",
                name="award_state",
                native_enum=False,
                length=32,
            ),
            nullable=False,
        ),
        sa.Column("title", sa.String(length=300), nullable=False),
        sa.Column("amount", sa.Numeric(precision=15, scale=0), nullable=True),
        sa.Column("award_date", sa.Date(), nullable=True),
        sa.Column("transaction_date", sa.Date(), nullable=True),
        sa.Column("department", sa.String(length=200), nullable=True),
        sa.Column("counterparty", sa.String(length=200), nullable=True),
        sa.Column("corporate_number", sa.String(length=13), nullable=True),
        sa.Column("contractor_id", sa.String(length=32), nullable=True),
        sa.Column("usage_request_id", sa.String(length=32), nullable=True),
        sa.Column("envelope_id", sa.String(length=32), nullable=True),
        sa.Column("draft", sa.JSON(), nullable=False),
        sa.Column("fingerprint", sa.String(length=64), nullable=False),
        sa.Column("rejected_change", sa.JSON(), nullable=True),
        sa.Column("usage_request_due", sa.Date(), nullable=True),
        sa.Column("signing_due", sa.Date(), nullable=True),
        sa.Column("file", sa.String(length=500), nullable=True),
        sa.Column("line", sa.Integer(), nullable=True),
        sa.Column("note", sa.Text(), nullable=True),
        sa.Column("last_run_id", sa.Integer(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["contractor_id"], ["contractors.id"], name=op.f("fk_awards_contractor_id_contractors")
        ),
        sa.ForeignKeyConstraint(
            ["envelope_id"], ["envelopes.id"], name=op.f("fk_awards_envelope_id_envelopes")
        ),
        sa.ForeignKeyConstraint(
            ["last_run_id"], ["sync_runs.id"], name=op.f("fk_awards_last_run_id_sync_runs")
        ),
        sa.ForeignKeyConstraint(
            ["usage_request_id"],
            ["usage_requests.id"],
            name=op.f("fk_awards_usage_request_id_usage_requests"),
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_awards")),
        sa.UniqueConstraint("source", "award_id", name=op.f("uq_awards_source")),
    )
    with op.batch_alter_table("awards", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_awards_contractor_id"), ["contractor_id"], unique=False
        )
        batch_op.create_index(batch_op.f("ix_awards_envelope_id"), ["envelope_id"], unique=False)
        batch_op.create_index(batch_op.f("ix_awards_state"), ["state"], unique=False)

    op.create_table(
        "award_documents",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("award_id", sa.String(length=32), nullable=False),
        sa.Column("position", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(length=255), nullable=False),
        sa.Column("origin", sa.String(length=500), nullable=False),
        sa.Column("blob_id", sa.String(length=64), nullable=False),
        sa.Column("sha256", sa.String(length=64), nullable=False),
        sa.Column("size", sa.BigInteger(), nullable=False),
        sa.ForeignKeyConstraint(
            ["award_id"], ["awards.id"], name=op.f("fk_award_documents_award_id_awards")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_award_documents")),
        sa.UniqueConstraint("award_id", "position", name=op.f("uq_award_documents_award_id")),
    )
    with op.batch_alter_table("award_documents", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_award_documents_award_id"), ["award_id"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("award_documents", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_award_documents_award_id"))

    op.drop_table("award_documents")
    with op.batch_alter_table("awards", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_awards_state"))
        batch_op.drop_index(batch_op.f("ix_awards_envelope_id"))
        batch_op.drop_index(batch_op.f("ix_awards_contractor_id"))

    op.drop_table("awards")
    with op.batch_alter_table("usage_requests", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_usage_requests_contractor_id"))

    op.drop_table("usage_requests")
    with op.batch_alter_table("dead_letters", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_dead_letters_source"))
        batch_op.drop_index(batch_op.f("ix_dead_letters_run_id"))

    op.drop_table("dead_letters")
    with op.batch_alter_table("contractor_identities", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_contractor_identities_contractor_id"))

    op.drop_table("contractor_identities")
    with op.batch_alter_table("contractor_emails", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_contractor_emails_contractor_id"))

    op.drop_table("contractor_emails")
    with op.batch_alter_table("sync_runs", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_sync_runs_source"))

    op.drop_table("sync_runs")
    op.drop_table("source_cursors")
    op.drop_table("job_runs")
