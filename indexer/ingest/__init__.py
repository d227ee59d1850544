"""Ingestion: files as sent and managed (`files`), decode -> encode -> tokens (`pipeline`), and the one commit
path that puts tokens into the corpus and rows into the catalog (`commit`). Imports catalog, store and cluster."""
