"""The retrieval core: a query's tokens against one store version -> ranked tracks with moments. Arrays in,
dataclasses out: candidates (`ranking`), the exact scan (`scan`), sliding scores (`sliding`), moments (`moments`).
Imports only `indexer.store`; never the catalog, ingestion, jobs or Ray."""
