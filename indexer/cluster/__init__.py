"""The corpus: one token store or shards of it (`corpus`), a search scattered over the shards and merged
(`scatter`), the shards served by Ray actors (`ray_serve`, the only module that imports ray). A shard here is a
corpus partition, nothing else. Imports `indexer.store` and `indexer.search`."""
