"""reports: signed security status reports per hospital

Revision ID: 0007
Revises: 0002
Create Date: 2026-12-10 09:00:00.000000

A branch of its own next to the other features.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "status_reports",
        sa.Column("id", sa.String(length=40), nullable=False),
        sa.Column("organization_id", sa.Integer(), nullable=False),
        sa.Column("lang", sa.String(length=8), nullable=False),
        sa.Column("generated_by", sa.String(length=64), nullable=False),
        sa.Column("generated_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("content_sha256", sa.String(length=64), nullable=False),
        sa.Column("pdf_sha256", sa.String(length=64), nullable=False),
        sa.Column("html_sha256", sa.String(length=64), nullable=False),
        sa.Column("json_sha256", sa.String(length=64), nullable=False),
        sa.Column("envelope_sha256", sa.String(length=64), nullable=False),
        sa.Column("key_id", sa.String(length=64), nullable=False),
        sa.Column("audit_index", sa.BigInteger(), nullable=False),
        sa.Column("pdf", sa.LargeBinary(), nullable=False),
        sa.Column("html", sa.LargeBinary(), nullable=False),
        sa.Column("json", sa.LargeBinary(), nullable=False),
        sa.Column("envelope", sa.LargeBinary(), nullable=False),
        sa.ForeignKeyConstraint(
            ["organization_id"], ["organizations.id"], name=op.f("fk_status_reports_organization_id_organizations")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_status_reports")),
    )
    op.create_index(
        "ix_status_reports_organization_id_generated_at",
        "status_reports",
        ["organization_id", "generated_at"],
        unique=False,
    )


def downgrade() -> None:
    op.drop_index("ix_status_reports_organization_id_generated_at", table_name="status_reports")
    op.drop_table("status_reports")
