"""Interleaving two rankings of one search's hits, and which ranking the search's clicks prefer.

Rankers A and B each order the same candidate window (possibly differently, possibly with different members). One
merged list is served instead of either, and the clicks on it say which ranking the user preferred:

- team-draft (Radlinski, Kurup and Joachims 2008): the rankings pick in turns like captains choosing teams. The team
  with fewer picks goes next, a coin decides when the teams are level, and each pick is the picker's best document
  not yet taken. A click counts for the team that picked the clicked document; more clicks win.
- balanced (Joachims 2002, 2003): the merged list takes the next document of whichever ranking is less deep, skipping
  documents already shown, with one coin for who starts, so every prefix is the union of top-k(A) and top-k'(B) with
  k and k' at most one apart. Clicks are judged at the depth of the lowest click (`BalancedInterleaving.credit`).

Once one ranking has no unpicked document left, the other fills the rest. Rankings that were cut short lose the
documents they did not rank, so the merged list is as long as the union of both (or `length`, when that is smaller).

Everything here is pure and deterministic for a seed. The proxy calls `interleave` once per search over the whole
window, with the seed from `search_seed(search_id)`, so any proxy of a fleet rebuilds the same list. It serves
from/size pages as `page` slices of that list, keeps the result under the search id, and calls `outcome` with the ids
clicked so far. Document ids can be any hashable value. Use (index, _id) pairs when a search spans indices.
"""
from __future__ import annotations

import hashlib
import random
from collections.abc import Hashable, Iterable, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Generic, TypeAlias, TypeVar

DocT = TypeVar("DocT", bound=Hashable)


class Method(StrEnum):
    TEAM_DRAFT = "team-draft"
    BALANCED = "balanced"


class Team(StrEnum):
    A = "a"
    B = "b"


class Outcome(StrEnum):
    A = "a"  # ranking A got more credit from the search's clicks
    B = "b"
    TIE = "tie"  # clicked, and both got the same credit
    NONE = "none"  # no click on a served document: no preference at all, which is not a tie


@dataclass(frozen=True)
class Credit:
    """How many of a search's clicks count for each ranking, under the method's rule."""

    a: int
    b: int

    @property
    def outcome(self) -> Outcome:
        if self.a == self.b:
            return Outcome.NONE if self.a == 0 else Outcome.TIE
        return Outcome.A if self.a > self.b else Outcome.B


@dataclass(frozen=True)
class TeamDraftInterleaving(Generic[DocT]):
    docs: tuple[DocT, ...]  # the merged list, best first
    teams: tuple[Team, ...]  # teams[i] picked docs[i]

    def page(self, start: int, size: int) -> TeamDraftInterleaving[DocT]:
        window = _page_slice(start, size)
        return TeamDraftInterleaving(self.docs[window], self.teams[window])

    def credit(self, clicked: Iterable[DocT]) -> Credit:
        """One point per clicked document to the team that picked it. Clicks on ids not in the list are ignored."""
        clicked_docs = set(clicked)
        picks = [team for doc, team in zip(self.docs, self.teams) if doc in clicked_docs]
        return Credit(a=picks.count(Team.A), b=picks.count(Team.B))

    def outcome(self, clicked: Iterable[DocT]) -> Outcome:
        return self.credit(clicked).outcome


@dataclass(frozen=True)
class BalancedInterleaving(Generic[DocT]):
    docs: tuple[DocT, ...]  # the merged list, best first
    # The 1-based rank of docs[i] in A and in B, None when that ranking does not hold it. These ranks, not the two
    # whole rankings, are all that attribution needs, because clicks only land on documents of the merged list.
    ranks_a: tuple[int | None, ...]
    ranks_b: tuple[int | None, ...]
    a_first: bool  # the coin: A's next document came first whenever both rankings were equally deep

    def page(self, start: int, size: int) -> BalancedInterleaving[DocT]:
        window = _page_slice(start, size)
        return BalancedInterleaving(self.docs[window], self.ranks_a[window], self.ranks_b[window], self.a_first)

    def credit(self, clicked: Iterable[DocT]) -> Credit:
        """Joachims' rule: take the lowest clicked document of the merged list and k, the best rank either ranking
        gives it. Each ranking gets one point per clicked document in its own top k. Clicks on ids not in the list
        are ignored."""
        clicked_docs = set(clicked)
        positions = [i for i, doc in enumerate(self.docs) if doc in clicked_docs]
        if not positions:
            return Credit(0, 0)
        lowest = positions[-1]
        depth = min(rank for rank in (self.ranks_a[lowest], self.ranks_b[lowest]) if rank is not None)
        return Credit(a=_count_within(self.ranks_a, positions, depth), b=_count_within(self.ranks_b, positions, depth))

    def outcome(self, clicked: Iterable[DocT]) -> Outcome:
        return self.credit(clicked).outcome


Interleaving: TypeAlias = "TeamDraftInterleaving[DocT] | BalancedInterleaving[DocT]"


def search_seed(search_id: str) -> int:
    """The interleaving seed of a search: a 64-bit hash of its id (blake2b with its own personalisation, so it is
    unrelated to the variant split's buckets). Python's hash() is salted per process, so it cannot be used here."""
    digest = hashlib.blake2b(search_id.encode("utf-8"), digest_size=8, person=b"interleaving").digest()
    return int.from_bytes(digest, "big")


def interleave(method: Method, a: Sequence[DocT], b: Sequence[DocT], *, seed: int,
               length: int | None = None) -> Interleaving[DocT]:
    """The merged list of rankings `a` and `b` under `method`: `min(length, |a ∪ b|)` documents (the whole union when
    `length` is None), the same for the same arguments. `method` may also be its config string."""
    if method == Method.TEAM_DRAFT:
        return team_draft(a, b, seed=seed, length=length)
    if method == Method.BALANCED:
        return balanced(a, b, seed=seed, length=length)
    raise ValueError(f"unknown interleaving method {method!r}; known: {', '.join(Method)}")


def team_draft(a: Sequence[DocT], b: Sequence[DocT], *, seed: int,
               length: int | None = None) -> TeamDraftInterleaving[DocT]:
    """Team-draft interleaving of `a` and `b`. It raises ValueError when a ranking repeats a document."""
    _ranks(a, "A")
    _ranks(b, "B")
    limit = _merged_length(a, b, length)
    coin = _coin(seed)
    docs: list[DocT] = []
    teams: list[Team] = []
    taken: set[DocT] = set()
    next_a = next_b = 0  # every document before these is taken
    picks_a = picks_b = 0
    while len(docs) < limit:
        while next_a < len(a) and a[next_a] in taken:
            next_a += 1
        while next_b < len(b) and b[next_b] in taken:
            next_b += 1
        if next_a < len(a) and next_b < len(b):
            a_picks = picks_a < picks_b or (picks_a == picks_b and coin.random() < 0.5)
        else:
            a_picks = next_a < len(a)
        doc = a[next_a] if a_picks else b[next_b]
        if a_picks:
            picks_a += 1
        else:
            picks_b += 1
        taken.add(doc)
        docs.append(doc)
        teams.append(Team.A if a_picks else Team.B)
    return TeamDraftInterleaving(tuple(docs), tuple(teams))


def balanced(a: Sequence[DocT], b: Sequence[DocT], *, seed: int,
             length: int | None = None) -> BalancedInterleaving[DocT]:
    """Balanced interleaving of `a` and `b`. It raises ValueError when a ranking repeats a document."""
    ranks_a = _ranks(a, "A")
    ranks_b = _ranks(b, "B")
    limit = _merged_length(a, b, length)
    a_first = _coin(seed).random() < 0.5
    docs: list[DocT] = []
    taken: set[DocT] = set()
    depth_a = depth_b = 0  # how much of each ranking the merged list has covered
    while len(docs) < limit:
        if depth_a < len(a) and depth_b < len(b):
            from_a = depth_a < depth_b or (depth_a == depth_b and a_first)
        else:
            from_a = depth_a < len(a)
        if from_a:
            doc = a[depth_a]
            depth_a += 1
        else:
            doc = b[depth_b]
            depth_b += 1
        if doc not in taken:
            taken.add(doc)
            docs.append(doc)
    return BalancedInterleaving(tuple(docs), tuple(ranks_a.get(doc) for doc in docs),
                                tuple(ranks_b.get(doc) for doc in docs), a_first)


def _coin(seed: int) -> random.Random:
    # Python guarantees that random() gives the same sequence for the same int seed in every version, which keeps
    # the lists the same across a fleet whose proxies run different Pythons. Other methods such as getrandbits or
    # choice do not promise this.
    return random.Random(seed)


def _ranks(ranking: Sequence[DocT], name: str) -> dict[DocT, int]:
    ranks = {doc: rank for rank, doc in enumerate(ranking, start=1)}
    if len(ranks) != len(ranking):
        raise ValueError(f"ranking {name} repeats a document")
    return ranks


def _merged_length(a: Sequence[DocT], b: Sequence[DocT], length: int | None) -> int:
    union = len(set(a).union(b))
    if length is None:
        return union
    if length < 0:
        raise ValueError(f"interleaving length must be >= 0, got {length}")
    return min(length, union)


def _page_slice(start: int, size: int) -> slice:
    if start < 0 or size < 0:
        raise ValueError(f"page start and size must be >= 0, got start={start}, size={size}")
    return slice(start, start + size)


def _count_within(ranks: tuple[int | None, ...], positions: list[int], depth: int) -> int:
    return sum(1 for i in positions if (rank := ranks[i]) is not None and rank <= depth)
