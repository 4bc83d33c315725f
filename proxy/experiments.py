"""Interleaved experiments, the state side: which searches an experiment takes, the served searches that click
events are attributed to, and each experiment's tally.

- `session_key`: what makes two requests "the same search" for an experiment: the index expression, the query
  (body and parameters without `from`/`size`) and the session header's value. Pages of one query in one session
  share it, so they fall into the same experiment and are pages of the same merged list (its seed is the key's).
- `assign`: the experiment a search is in. Experiments that match the search's indices take consecutive slices of
  [0, 100) percent in config order, and the search's point in that range is a hash of its session key.
- `ExperimentBook`: the served searches (bounded in number and by a TTL) and the tallies. It is carried across
  config reloads, so a reload does not reset an experiment. It lives in memory only: a restart starts the
  tallies again (the capture log keeps what a restart would lose).
"""
from __future__ import annotations

import hashlib
import re
import secrets
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import orjson
from cachetools import TTLCache

from .config import Config, Events
from .experiment_stats import ExperimentSummary, ExperimentTally, summarize
from .interleaving import Interleaving, Outcome

DocKey = tuple[str | None, str | None]  # (_index, _id): a hit of a search over several indices is named by both

_PAGING = frozenset({"from", "size"})
_CLIENT_SEARCH_ID = re.compile(r"[A-Za-z0-9_-]{8,64}")


def session_key(
    index: str | None, body: Mapping[str, Any] | None, params: Sequence[tuple[str, str]], session: str | None
) -> str:
    query = {k: v for k, v in (body or {}).items() if k not in _PAGING}
    kept = sorted((k, v) for k, v in params if k not in _PAGING)
    material = orjson.dumps([index, query, kept, session], option=orjson.OPT_SORT_KEYS)
    return hashlib.blake2b(material, digest_size=16).hexdigest()


def _percent_point(key: str) -> float:
    digest = hashlib.blake2b(key.encode(), digest_size=8, person=b"experiment").digest()
    return int.from_bytes(digest, "big") / 2**64 * 100


def assign(config: Config, index: str | None, key: str) -> str | None:
    point = _percent_point(key)
    start = 0.0
    for name, experiment in config.experiments.items():
        if not experiment.matches(index):
            continue
        if point < start + experiment.traffic:
            return name
        start += experiment.traffic
    return None


def search_id(requested: str | None) -> str:
    """The id a served search is known by: the client's own `X-Rerank-Search-Id` when it sends one back (a further
    page of a search it was served), else a new random one."""
    if requested is not None and _CLIENT_SEARCH_ID.fullmatch(requested):
        return requested
    return secrets.token_hex(12)


@dataclass
class ServedSearch:
    experiment: str
    interleaving: Interleaving[DocKey]  # the merged list down to the deepest page served
    clicked: set[DocKey] = field(default_factory=set)
    outcome: Outcome = Outcome.NONE


class ExperimentBook:
    def __init__(self, options: Events, clock: Callable[[], float] = time.monotonic):
        self.options = options
        self.searches: TTLCache[str, ServedSearch] = TTLCache(options.max_searches, options.ttl_s, timer=clock)
        self.tallies: dict[str, ExperimentTally] = {}

    def served(self, search_id: str, experiment: str, interleaving: Interleaving[DocKey]) -> bool:
        """Records a served page; False when it is a further page of a search already counted (the merged list
        held grows to the deepest page, the search is not counted again)."""
        held = self.searches.get(search_id)
        if held is not None and held.experiment == experiment:
            if len(interleaving.docs) > len(held.interleaving.docs):
                held.interleaving = interleaving
            return False
        if held is not None:  # the id now names a search of another experiment: the old one keeps its outcome
            del self.searches[search_id]
        self.searches[search_id] = ServedSearch(experiment, interleaving)
        self.tallies[experiment] = self.tallies.get(experiment, ExperimentTally()).add()
        return True

    def credit(self, search_id: str, doc_id: str, index: str | None) -> str:
        """A preference (a click) for a document of a served search; what became of it: `attributed`,
        `unknown-search` (never served here, or expired) or `not-served` (no such document on its pages)."""
        held = self.searches.get(search_id)
        if held is None:
            return "unknown-search"
        match = next((key for key in held.interleaving.docs
                      if key[1] == doc_id and (index is None or key[0] == index)), None)
        if match is None:
            return "not-served"
        held.clicked.add(match)
        outcome = held.interleaving.outcome(held.clicked)
        if outcome is not held.outcome:
            self.tallies[held.experiment] = self.tallies[held.experiment].revise(held.outcome, outcome)
            held.outcome = outcome
        return "attributed"

    def summaries(self) -> dict[str, ExperimentSummary]:
        return {name: summarize(tally) for name, tally in self.tallies.items()}

    def summary(self, config: Config) -> dict[str, Any]:
        """Every experiment's definition and verdict so far; also those a reload removed, while they have a tally."""
        experiments: dict[str, Any] = {}
        for name in [*config.experiments, *(n for n in self.tallies if n not in config.experiments)]:
            tally = self.tallies.get(name, ExperimentTally())
            definition = config.experiments.get(name)
            experiments[name] = {
                "configured": definition is not None,
                **(definition.model_dump() if definition is not None else {}),
                **asdict(summarize(tally)),
            }
        held = {"searches": len(self.searches), "max_searches": self.options.max_searches,
                "ttl_s": self.options.ttl_s}
        return {"experiments": experiments, "served_searches": held}
