"""The retrieval core: a query's tokens against one store version -> ranked tracks with moments. Arrays in,
dataclasses out. One stage a module, none calling another: `ranking.search` picks the candidates (`exhaustive`,
`votes`, `scan`), has them scored exactly (`windows`, `exhaustive`) and ranked with their moments (`moments`); the
exact scorer and the product kernels they share are `sliding`. Imports only `indexer.store`; never the catalog,
ingestion, jobs or Ray."""
