"""track_versions.attempt and attempt_run_id: the run that owns a version, so a late result never overwrites a
newer one

Revision ID: 0006
Revises: 0005
"""
from alembic import op
import sqlalchemy as sa


revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # Existing versions start at attempt 0 with no owner: the first run to process one claims it.
    with op.batch_alter_table("track_versions", schema=None) as batch_op:
        batch_op.add_column(sa.Column("attempt", sa.Integer(), server_default="0", nullable=False))
        batch_op.add_column(sa.Column("attempt_run_id", sa.Uuid(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("track_versions", schema=None) as batch_op:
        batch_op.drop_column("attempt_run_id")
        batch_op.drop_column("attempt")
