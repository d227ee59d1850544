"""drop index_versions: a table no code ever read or wrote (the token store names its versions itself)

Revision ID: 0007_drop_index_versions
Revises: 0006_original_names
Create Date: 2026-12-20 10:00:00
"""

import sqlalchemy as sa
from alembic import op

revision = "0007_drop_index_versions"
down_revision = "0006_original_names"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.drop_table("index_versions")


def downgrade() -> None:
    op.create_table(
        "index_versions",
        sa.Column("name", sa.String(length=32), nullable=False),
        sa.Column("clips", sa.Integer(), nullable=False),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.PrimaryKeyConstraint("name"),
    )
