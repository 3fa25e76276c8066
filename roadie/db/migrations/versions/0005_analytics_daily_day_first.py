"""analytics_daily keyed by (day, track_id), without a foreign key, fillfactor 70 on PostgreSQL; merges the
payouts (0003) and ops (0004) branches.

Revision ID: 0005
Revises: 0003, 0004
"""
from alembic import op

revision = "0005"
down_revision = ("0003", "0004")
branch_labels = None
depends_on = None

# SQLite cannot alter keys in place: batch mode copies the table, rows included.
_NAMING = {"fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s", "pk": "pk_%(table_name)s"}


def upgrade() -> None:
    with op.batch_alter_table("analytics_daily", naming_convention=_NAMING) as batch_op:
        batch_op.drop_constraint("fk_analytics_daily_track_id_tracks", type_="foreignkey")
        batch_op.drop_index("ix_analytics_daily_day")
        batch_op.drop_constraint("pk_analytics_daily", type_="primary")
        batch_op.create_primary_key("pk_analytics_daily", ["day", "track_id"])
        batch_op.create_index("ix_analytics_daily_track_id", ["track_id", "day"], unique=False)
    if op.get_bind().dialect.name == "postgresql":
        op.execute("ALTER TABLE analytics_daily SET (fillfactor = 70)")


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute("ALTER TABLE analytics_daily RESET (fillfactor)")
    with op.batch_alter_table("analytics_daily", naming_convention=_NAMING) as batch_op:
        batch_op.drop_index("ix_analytics_daily_track_id")
        batch_op.drop_constraint("pk_analytics_daily", type_="primary")
        batch_op.create_primary_key("pk_analytics_daily", ["track_id", "day"])
        batch_op.create_index("ix_analytics_daily_day", ["day"], unique=False)
        batch_op.create_foreign_key("fk_analytics_daily_track_id_tracks", "tracks", ["track_id"], ["id"])
