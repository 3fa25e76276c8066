"""failed_jobs: the dead-letter table

Revision ID: 0004
Revises: 0001
"""
from alembic import op
import sqlalchemy as sa


revision = "0004"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "failed_jobs",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("flow_name", sa.String(length=255), nullable=False),
        sa.Column("deployment_name", sa.String(length=255), nullable=True),
        sa.Column("flow_run_id", sa.Uuid(), nullable=False),
        sa.Column("flow_run_name", sa.String(length=255), nullable=True),
        sa.Column("parameters", sa.JSON(), nullable=False),
        sa.Column("state", sa.String(length=32), nullable=False),
        sa.Column("error", sa.Text(), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("failed_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("recorded_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("retried_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("retry_flow_run_id", sa.Uuid(), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_failed_jobs")),
        sa.UniqueConstraint("flow_run_id", name=op.f("uq_failed_jobs_flow_run_id")),
    )
    with op.batch_alter_table("failed_jobs", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_failed_jobs_deployment_name"), ["deployment_name"], unique=False)
        batch_op.create_index(batch_op.f("ix_failed_jobs_failed_at"), ["failed_at"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("failed_jobs", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_failed_jobs_failed_at"))
        batch_op.drop_index(batch_op.f("ix_failed_jobs_deployment_name"))
    op.drop_table("failed_jobs")
