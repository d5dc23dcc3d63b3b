"""deliveries: one row per (analysis, destination, kind)

Revision ID: 0003
Revises: 0002
"""
from alembic import op


revision = '0003'
down_revision = '0002'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('deliveries', schema=None) as batch_op:
        batch_op.create_unique_constraint('uq_deliveries_analysis_dest_kind', ['analysis_id', 'destination', 'kind'])


def downgrade() -> None:
    with op.batch_alter_table('deliveries', schema=None) as batch_op:
        batch_op.drop_constraint('uq_deliveries_analysis_dest_kind', type_='unique')
