"""job file names: the name an uploaded file was sent with (null for files given by path)

Revision ID: 0004_job_file_names
Revises: 0003_leases
Create Date: 2026-12-02 10:00:00
"""

import sqlalchemy as sa
from alembic import op

revision = "0004_job_file_names"
down_revision = "0003_leases"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("job_files") as batch:
        batch.add_column(sa.Column("name", sa.String(length=1024), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("job_files") as batch:
        batch.drop_column("name")
