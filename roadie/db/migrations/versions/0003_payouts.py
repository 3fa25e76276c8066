"""payout ledger: payout runs, allocation lines, unallocated lines, charity totals (issue 4)

Revision ID: 0003
Revises: 0001
Create Date: 2026-11-28
"""
from alembic import op
import sqlalchemy as sa


revision = '0003'
down_revision = '0001'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('payout_allocation_lines',
    sa.Column('period_start', sa.Date(), nullable=False),
    sa.Column('user_id', sa.Uuid(), nullable=False),
    sa.Column('artist_id', sa.Uuid(), nullable=False),
    sa.Column('weight_ms', sa.BigInteger(), nullable=False),
    sa.Column('cents', sa.BigInteger(), nullable=False),
    sa.PrimaryKeyConstraint('period_start', 'user_id', 'artist_id', name=op.f('pk_payout_allocation_lines'))
    )
    op.create_table('payout_charity_totals',
    sa.Column('period_start', sa.Date(), nullable=False),
    sa.Column('charity_id', sa.Uuid(), nullable=False),
    sa.Column('cents', sa.BigInteger(), nullable=False),
    sa.Column('contribution_count', sa.Integer(), nullable=False),
    sa.PrimaryKeyConstraint('period_start', 'charity_id', name=op.f('pk_payout_charity_totals'))
    )
    op.create_table('payout_runs',
    sa.Column('period_start', sa.Date(), nullable=False),
    sa.Column('period_end', sa.Date(), nullable=False),
    sa.Column('status', sa.String(length=16), nullable=False),
    sa.Column('contributions', sa.Integer(), nullable=False),
    sa.Column('amount_cents', sa.BigInteger(), nullable=False),
    sa.Column('pool_cents', sa.BigInteger(), nullable=False),
    sa.Column('paid_cents', sa.BigInteger(), nullable=False),
    sa.Column('unallocated_cents', sa.BigInteger(), nullable=False),
    sa.Column('charity_cents', sa.BigInteger(), nullable=False),
    sa.Column('platform_cents', sa.BigInteger(), nullable=False),
    sa.Column('artists', sa.Integer(), nullable=False),
    sa.Column('listeners', sa.Integer(), nullable=False),
    sa.Column('unallocated_users', sa.Integer(), nullable=False),
    sa.Column('computed_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('paid_at', sa.DateTime(timezone=True), nullable=True),
    sa.CheckConstraint("status IN ('computed','paid')", name=op.f('ck_payout_runs_status')),
    sa.PrimaryKeyConstraint('period_start', name=op.f('pk_payout_runs'))
    )
    op.create_table('payout_unallocated_lines',
    sa.Column('period_start', sa.Date(), nullable=False),
    sa.Column('user_id', sa.Uuid(), nullable=False),
    sa.Column('cents', sa.BigInteger(), nullable=False),
    sa.Column('reason', sa.String(length=64), nullable=False),
    sa.PrimaryKeyConstraint('period_start', 'user_id', name=op.f('pk_payout_unallocated_lines'))
    )


def downgrade() -> None:
    op.drop_table('payout_unallocated_lines')
    op.drop_table('payout_runs')
    op.drop_table('payout_charity_totals')
    op.drop_table('payout_allocation_lines')
