"""managed media: a video's display name and the identity (size, mtime) of its file as indexed

Revision ID: 0005_managed_media
Revises: 0004_job_file_names
Create Date: 2026-11-28 10:00:00
"""

import sqlalchemy as sa
from alembic import op

revision = "0005_managed_media"
down_revision = "0004_job_file_names"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("videos") as batch:
        batch.add_column(sa.Column("name", sa.String(length=1024), nullable=True))
        batch.add_column(sa.Column("file_size", sa.BigInteger(), nullable=True))
        batch.add_column(sa.Column("file_mtime_ns", sa.BigInteger(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("videos") as batch:
        batch.drop_column("file_mtime_ns")
        batch.drop_column("file_size")
        batch.drop_column("name")
