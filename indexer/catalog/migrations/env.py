"""Alembic environment for the catalog (run through `indexer.catalog.tables.migrate`)."""

from __future__ import annotations

from alembic import context
from sqlalchemy import text

from indexer.catalog.tables import MIGRATION_LOCK_ID, Base, make_engine

target_metadata = Base.metadata


def run_migrations() -> None:
    url = context.config.get_main_option("sqlalchemy.url")
    engine = make_engine(url)
    with engine.connect() as connection:
        context.configure(connection=connection, target_metadata=target_metadata, render_as_batch=True)
        with context.begin_transaction():
            if connection.dialect.name == "postgresql":  # released at commit; SQLite: migrate() holds a file lock
                connection.execute(text("SELECT pg_advisory_xact_lock(:id)"), {"id": MIGRATION_LOCK_ID})
            context.run_migrations()
    engine.dispose()


run_migrations()
