"""original names: a video's name exactly as sent or found, percent-encoded, when its shown name escapes it

Revision ID: 0006_original_names
Revises: 0005_managed_media
Create Date: 2026-12-10 10:00:00

Rows written before keep their names as they were recorded (the original): they are shown escaped when read
(`indexer.catalog.tables.display_name`), so no row is rewritten here.
"""

import sqlalchemy as sa
from alembic import op

revision = "0006_original_names"
down_revision = "0005_managed_media"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("videos") as batch:
        batch.add_column(sa.Column("original_name", sa.Text(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("videos") as batch:
        batch.drop_column("original_name")
