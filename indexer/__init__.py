"""cavsync.indexer: media -> per-frame tokens in a versioned store, searched; the SQL catalog; index jobs.

One folder per concern, in the order the data flows (import-linter layers them, pyproject.toml):

    catalog/  the SQL catalog: tables, migrations, queries, names as shown. Imports nothing of the indexer.
    store/    the token store of one corpus: versions, segment files, FAISS indexes, the data dir's layout.
    search/   the retrieval core over one store version: candidates, exact scores, moments (arrays in,
              dataclasses out). Imports only store/.
    cluster/  the corpus: one store, or shards of it searched by scatter/merge, served in process or by Ray.
    ingest/   files -> decoded clips -> tokens -> the one commit path into corpus and catalog.
    jobs/     index jobs: their records, the supervisor, the Celery task, the broker, the sweep. On top.
"""
