"""The SQL catalog: its tables (`tables`), migrations (Alembic, `migrations/`), the API's read queries (`queries`)
and names as shown (`names`). Imports nothing else of the indexer; SQL lives here and in `indexer.jobs`' records."""
