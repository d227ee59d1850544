"""cavsync.indexer: corpora -> per-frame global tokens in FAISS, the SQL catalog, index jobs and the work of their tasks."""
