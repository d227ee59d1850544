"""cavsync.indexer: corpora -> per-frame global tokens in FAISS, the SQL catalog, Celery tasks."""
