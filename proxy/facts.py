"""What the search path decided and measured for one request, kept beside the request while it is served and read
once it has been answered: by its access-log line (proxy/access_log.py) and its spans (proxy/tracing.py).

The search path fills it in where each thing is decided or timed: the statuses where `X-Rerank-Status` is written,
the cluster time around the rewritten request, the engine's queue and model time from the score call's own
account (`rerank.engine.ScoreTiming`). Nothing here is read back from a header.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from rerank.engine import ScoreTiming


@dataclass(slots=True, eq=False)
class SearchFacts:
    statuses: tuple[str, ...] = ()  # as in `X-Rerank-Status`: one per search (an `_msearch`: one per item)
    variant: str | None = None
    upstream_at: float = 0.0  # time.perf_counter() when the rewritten search was sent to the cluster
    upstream_s: float | None = None  # and how long its answer took; None: the relay passed the request through
    queue_s: float | None = None  # the engine's queue wait (an `_msearch`: its items' added up)
    model_s: float | None = None  # model time spent on the search's pairs (added up likewise)
    span: Any = None  # the request's server span, when tracing made one as the search began
    traced: bool = False  # tracing was asked as the search began (`span` None then: its new trace was not drawn)

    def decided(self, statuses: tuple[str, ...], variant: str) -> None:
        self.statuses, self.variant = statuses, variant

    def scored(self, timing: ScoreTiming | None) -> None:
        if timing is None:
            return
        if timing.queue_s is not None:
            self.queue_s = (self.queue_s or 0.0) + timing.queue_s
        if timing.model_started is not None:
            self.model_s = (self.model_s or 0.0) + timing.model_s

    @property
    def fell_back(self) -> bool:
        return any(status.startswith("fallback") for status in self.statuses)
