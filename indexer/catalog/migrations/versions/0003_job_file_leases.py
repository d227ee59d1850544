"""job file leases: who works on a file of an index job, until when, how often it was dispatched

Revision ID: 0003_leases
Revises: 0002
Create Date: 2026-11-27 01:40:00
"""

import sqlalchemy as sa
from alembic import op

revision = "0003_leases"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("job_files") as batch:
        batch.add_column(sa.Column("owner", sa.String(length=64), nullable=True))
        batch.add_column(sa.Column("lease_until", sa.Float(), nullable=True))
        batch.add_column(sa.Column("dispatches", sa.Integer(), nullable=False, server_default="0"))


def downgrade() -> None:
    with op.batch_alter_table("job_files") as batch:
        batch.drop_column("dispatches")
        batch.drop_column("lease_until")
        batch.drop_column("owner")
