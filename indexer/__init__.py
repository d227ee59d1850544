"""cavsync.indexer: corpora -> per-frame tokens in FAISS, the SQL catalog, index jobs and the work of their tasks."""
