"""The token store of one corpus: immutable versions (`version`), their segment files (`segments`), FAISS indexes
(`build`), track tables (`tracks`), the store that writes them (`token_store`), the corpus seam every holder of a
corpus implements (`corpus`) and the data dir's layout (`datadir`). Arrays and files only: it imports no other part
of the indexer."""
