"""lifecycle milestone packages: product documents, milestones, their documents and deliveries

Revision ID: 0008
Revises: 0002
Create Date: 2026-12-10 09:30:00.000000

A branch of its own next to the other feature branches (needs only organizations and releases).
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "product_documents",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("product", sa.String(length=100), nullable=False),
        sa.Column("kind", sa.String(length=32), nullable=False),
        sa.Column("text_en", sa.Text(), nullable=False),
        sa.Column("text_ja", sa.Text(), nullable=False),
        sa.Column("updated_by", sa.String(length=200), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_product_documents")),
        sa.UniqueConstraint("product", "kind", name="uq_product_documents_product"),
    )
    op.create_table(
        "milestones",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("release_id", sa.Integer(), nullable=False),
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("package_sha256", sa.String(length=64), nullable=False),
        sa.Column("created_by", sa.String(length=200), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["release_id"], ["releases.id"], name=op.f("fk_milestones_release_id_releases")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_milestones")),
        sa.UniqueConstraint("release_id", "kind", name="uq_milestones_release_id"),
    )
    with op.batch_alter_table("milestones", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_milestones_release_id"), ["release_id"], unique=False)
    op.create_table(
        "milestone_documents",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("milestone_id", sa.Integer(), nullable=False),
        sa.Column("kind", sa.String(length=32), nullable=False),
        sa.Column("position", sa.Integer(), nullable=False),
        sa.Column("filename", sa.String(length=300), nullable=False),
        sa.Column("media_type", sa.String(length=100), nullable=False),
        sa.Column("content", sa.LargeBinary(), nullable=True),
        sa.Column("sha256", sa.String(length=64), nullable=True),
        sa.Column("missing_reason", sa.Text(), nullable=True),
        sa.Column("added_at", sa.DateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(
            ["milestone_id"],
            ["milestones.id"],
            name=op.f("fk_milestone_documents_milestone_id_milestones"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_milestone_documents")),
        sa.UniqueConstraint("milestone_id", "kind", name="uq_milestone_documents_milestone_id"),
    )
    with op.batch_alter_table("milestone_documents", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_milestone_documents_milestone_id"), ["milestone_id"], unique=False)
    op.create_table(
        "milestone_deliveries",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("milestone_id", sa.Integer(), nullable=False),
        sa.Column("hospital_id", sa.Integer(), nullable=False),
        sa.Column("notified_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("first_opened_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("first_opened_by", sa.String(length=200), nullable=True),
        sa.Column("acknowledged_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("acknowledged_by", sa.String(length=200), nullable=True),
        sa.Column("acknowledged_name", sa.String(length=200), nullable=True),
        sa.Column("acknowledged_sha256", sa.String(length=64), nullable=True),
        sa.ForeignKeyConstraint(
            ["hospital_id"], ["organizations.id"], name=op.f("fk_milestone_deliveries_hospital_id_organizations")
        ),
        sa.ForeignKeyConstraint(
            ["milestone_id"],
            ["milestones.id"],
            name=op.f("fk_milestone_deliveries_milestone_id_milestones"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_milestone_deliveries")),
        sa.UniqueConstraint("milestone_id", "hospital_id", name="uq_milestone_deliveries_milestone_id"),
    )
    with op.batch_alter_table("milestone_deliveries", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_milestone_deliveries_hospital_id"), ["hospital_id"], unique=False)
        batch_op.create_index(batch_op.f("ix_milestone_deliveries_milestone_id"), ["milestone_id"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("milestone_deliveries", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_milestone_deliveries_milestone_id"))
        batch_op.drop_index(batch_op.f("ix_milestone_deliveries_hospital_id"))
    op.drop_table("milestone_deliveries")
    with op.batch_alter_table("milestone_documents", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_milestone_documents_milestone_id"))
    op.drop_table("milestone_documents")
    with op.batch_alter_table("milestones", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_milestones_release_id"))
    op.drop_table("milestones")
    op.drop_table("product_documents")
