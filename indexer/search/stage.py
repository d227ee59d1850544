"""How a search finds its candidates: the schemes of `indexer.search.ranking` and the votes' settings, one frozen
config (`CAVSYNC_SEARCH_*` through the settings). Imports nothing: the settings check a scheme against it."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

Scheme = Literal["auto", "exhaustive", "votes", "scan"]
SCHEMES: tuple[Scheme, ...] = ("auto", "exhaustive", "votes", "scan")


@dataclass(frozen=True)
class FirstStage:
    """How a search finds its candidates (`indexer.search.ranking`: the schemes; `CAVSYNC_SEARCH_*` in the settings)."""

    scheme: Scheme = "auto"
    probes: int = 16  # query frames that probe the index (all of a shorter query)
    per_frame: int = 2048  # nearest stored frames each probe finds
    hypotheses: int = 1024  # best-voted (track, offset bin) hypotheses scored roughly

    def __post_init__(self) -> None:
        if self.scheme not in SCHEMES:
            raise ValueError(f"unknown search scheme {self.scheme!r}; choose one of {SCHEMES}")
        if min(self.probes, self.per_frame, self.hypotheses) < 1:
            raise ValueError(f"the search's probes, per_frame and hypotheses must be >= 1, got {self}")
