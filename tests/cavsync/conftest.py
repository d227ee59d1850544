"""The composition root's tests use the API's demo corpus (indexed once per session)."""

from __future__ import annotations

from ..service.conftest import CORPUS_CLIPS, DEMO_CHECKPOINT, REPO, Corpus, client, corpus

__all__ = ["CORPUS_CLIPS", "DEMO_CHECKPOINT", "REPO", "Corpus", "client", "corpus"]
