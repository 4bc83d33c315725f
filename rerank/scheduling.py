"""The engine's queue decisions, as pure functions: no clock, no event loop, no threads; "now" comes in as an argument.

A model's queue (rerank/engine.py: `ModelQueue`, the one task that owns it) asks these at each step:

- `admit`: may one more search join (the bounded queue)? A full queue refuses the newcomer, at once.
- `take_within`: how many items, from the first, fit a budget: searches per tokenizer call (`COUNT_CHUNK` texts),
  searches per round (`ROUND_BATCHES` micro-batches of tokens).
- `unwanted` / `split_unwanted`: which searches nobody waits for any more (their caller left, their deadline passed,
  they are answered or failed), so their pairs are never tokenized or scored.
- `gathered`: has a round waited long enough for more searches (`max_wait`), or does a micro-batch's worth wait?
- `take_round`: the searches of the next round, earliest deadline first.
- `merge_pairs`: the round's distinct (query, document) pairs: a pair two searches want is scored once, and goes as
  early as its most urgent search needs.
- `Round`, `choose_order`, `cut_batch`: the round's micro-batches, each cut off one of two orders (shortest first
  while the round has time to spare, rank first otherwise: see rerank/engine.py), within the token budget.
"""
from __future__ import annotations

from collections import deque
from collections.abc import Hashable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Generic, Literal, NamedTuple, TypeVar

from .batching import fits, padded_tokens, token_batches

TIME_TO_SPARE = 1.5  # a round goes shortest first while this many times its expected time is left before the
# earliest deadline among its searches; rank first otherwise

Order = Literal["shortest", "rank"]


@dataclass(eq=False)
class Search:
    """One search in a model's queue, as far as scheduling goes: its arrival number, absolute deadline (the queue's
    clock), the token size of each pair the model must score (known once tokenized), and why its remaining pairs are
    not wanted any more (None while they are)."""

    seq: int
    deadline: float
    tokens: list[int] = field(default_factory=list)
    over: str | None = None  # abandoned (its caller left), deadline, error (its search failed), done (answered)


S = TypeVar("S", bound=Search)


def admit(in_flight: int, max_queue: int) -> str | None:
    """Whether a model whose queue holds `in_flight` searches (sent, not answered yet: waiting, tokenizing or being
    scored) takes one more: None, or why not, the `rerank_rejected_total` reason. A full queue refuses the newcomer,
    at once (the proxy falls back to the cluster's order instead of piling up): searches already queued keep their
    place, and nothing waits for room."""
    return "queue-full" if in_flight >= max_queue else None


def take_within(sizes: Iterable[int], budget: int) -> int:
    """How many of `sizes`, from the first, fit within `budget` together; at least one when there are any, so an
    item bigger than the budget goes alone. Stops at the first that does not fit (no smaller ones after it jump
    the line)."""
    taken = total = 0
    for size in sizes:
        if taken and total + size > budget:
            break
        taken, total = taken + 1, total + size
    return taken


def unwanted(search: Search, now: float) -> str | None:
    """Why nobody needs `search`'s remaining pairs any more, or None while they are still wanted."""
    return search.over or ("deadline" if now >= search.deadline else None)


def split_unwanted(searches: Iterable[S], now: float) -> tuple[list[S], list[tuple[S, str]]]:
    """The searches still wanted, in order, and the others with the reason (`unwanted`)."""
    live: list[S] = []
    gone: list[tuple[S, str]] = []
    for search in searches:
        reason = unwanted(search, now)
        if reason is None:
            live.append(search)
        else:
            gone.append((search, reason))
    return live, gone


def gathered(queued_tokens: int, max_batch_tokens: int, now: float, window_ends: float) -> bool:
    """Whether a round starts now: a micro-batch's worth of tokens waits, or the window for more searches (opened by
    the first one to arrive while the model was idle, `max_wait` long) is over."""
    return queued_tokens >= max_batch_tokens or now >= window_ends


def take_round(searches: Sequence[S], budget: int) -> tuple[list[S], list[S]]:
    """The next round's searches, earliest deadline first (equal deadlines: arrival order) up to `budget` tokens and
    at least one; and the rest, in that order, for later rounds."""
    ordered = sorted(searches, key=lambda search: (search.deadline, search.seq))
    taken = take_within((sum(search.tokens) for search in ordered), budget)
    return ordered[:taken], ordered[taken:]


class Wanted(NamedTuple, Generic[S]):
    """One (query, document) pair a search of the round still needs scored."""

    search: S
    position: int  # the document's rank in its search: the cluster's order
    query: str
    doc: str
    key: Hashable  # the score cache key: what makes two searches' pairs the same pair
    tokens: int
    encoding: object | None  # what the model reads, for a backend that tokenizes ahead


@dataclass(eq=False)
class Pair(Generic[S]):
    """One distinct (query, document) pair of a round; several searches may want it."""

    query: str
    doc: str
    key: Hashable
    tokens: int
    encoding: object | None
    targets: list[tuple[S, int]]  # (search, position) that get its score
    order: tuple[int, float, int]  # (rank, deadline, seq) of its most urgent target: the rank-first order
    taken: bool = False  # batched or dropped: the round's other order skips it


def merge_pairs(wanted: Iterable[tuple[S, int, str, str, Hashable, int, object | None]]) -> list[Pair[S]]:
    """One pair per key, in the order first wanted, each with every search (and position) that wants it; a pair
    several searches want takes the most urgent place: its best rank, then the earliest deadline, then arrival.
    `wanted`: `Wanted` tuples (or plain tuples in its field order, which cost less to make)."""
    pairs: dict[Hashable, Pair[S]] = {}
    for search, position, query, doc, key, tokens, encoding in wanted:
        order = (position, search.deadline, search.seq)
        pair = pairs.get(key)
        if pair is None:
            pairs[key] = pair = Pair(query, doc, key, tokens, encoding, [], order)
        elif order < pair.order:
            pair.order = order
        pair.targets.append((search, position))
    return list(pairs.values())


def shortest_first(pair: Pair[S]) -> int:
    return pair.tokens


def rank_first(pair: Pair[S]) -> tuple[int, float, int]:
    """A pair's place in a round's rank-first order: its document's rank in its search (the cluster's order), then
    the search's deadline and arrival."""
    return pair.order


@dataclass(eq=False)
class Round(Generic[S]):
    """The pairs of one round in both orders it may take them in; a pair taken off one is passed over in the other."""

    searches: list[S]
    by_length: deque[Pair[S]]
    by_rank: deque[Pair[S]]
    left: int  # real tokens of the pairs not taken yet
    padding: float  # padded tokens per real token when the round goes shortest first

    @classmethod
    def of(cls, searches: Sequence[S], pairs: Sequence[Pair[S]], batch_size: int, max_batch_tokens: int) -> Round[S]:
        by_length = sorted(pairs, key=shortest_first)
        lengths = [pair.tokens for pair in by_length]
        real = sum(lengths)
        padded = padded_tokens(lengths, token_batches(lengths, batch_size, max_batch_tokens))
        return cls(list(searches), deque(by_length), deque(sorted(pairs, key=rank_first)), real,
                   padded / real if real else 1.0)

    def time_left(self, now: float) -> float | None:
        """Seconds before the earliest deadline among the round's searches still waiting; None when none waits."""
        deadlines = [search.deadline for search in self.searches if search.over is None]
        return min(deadlines) - now if deadlines else None

    def queue(self, order: Order) -> deque[Pair[S]]:
        return self.by_length if order == "shortest" else self.by_rank


def choose_order(
    seconds_per_token: float | None, time_left: float | None, left_tokens: int, padding: float, max_batch_tokens: int,
    spare: float = TIME_TO_SPARE,
) -> tuple[Order, int]:
    """Which order a round's next micro-batch comes off, and that call's padded-token budget.

    Shortest first, in calls of `max_batch_tokens`, while the round has time to spare: what it has left
    (`left_tokens` x `padding`, at the model's pace) takes under 1/`spare` of `time_left`, the time before the
    earliest deadline among its searches still waiting (None: none waits). Shortest first is the faster order, but a
    deadline may cut it anywhere. Otherwise rank first, which leaves the top of each window scored, in a call no
    bigger than what the pace fits before that deadline (one pair at least): the last calls before it shrink, so a
    search gets a few more of its top hits scored rather than a call the deadline cuts off. With no pace yet (no call
    timed), rank first at full size."""
    if seconds_per_token is None:
        return "rank", max_batch_tokens
    if time_left is None:
        return "shortest", max_batch_tokens
    if spare * seconds_per_token * left_tokens * padding <= time_left:
        return "shortest", max_batch_tokens
    fit = int(time_left / seconds_per_token) if seconds_per_token > 0 else max_batch_tokens
    return "rank", max(1, min(max_batch_tokens, fit))


def _wanted(pair: Pair[S], now: float) -> bool:
    """Whether any of the pair's searches still wants it (`unwanted` is None for one)."""
    for search, _ in pair.targets:
        if search.over is None and now < search.deadline:
            return True
    return False


def cut_batch(
    queue: deque[Pair[S]], batch_size: int, budget: int, now: float
) -> tuple[list[Pair[S]], list[tuple[Pair[S], str]]]:
    """The next micro-batch off `queue` (one of a round's orders): pairs in queue order while `fits` allows (the
    longest so far x pairs within `budget`, at most `batch_size`), then sorted shortest first (stable). Pairs taken
    off the other order are passed over; pairs whose searches are all unwanted are dropped (returned with the first
    one's reason), never scored. Both kinds leave the queue and are marked taken."""
    batch: list[Pair[S]] = []
    dropped: list[tuple[Pair[S], str]] = []
    longest = 0
    while queue:
        pair = queue[0]
        if pair.taken:
            queue.popleft()
            continue
        if not _wanted(pair, now):
            queue.popleft()
            pair.taken = True
            dropped.append((pair, unwanted(pair.targets[0][0], now) or "deadline"))
            continue
        longest = max(longest, pair.tokens)  # the batch's longest if this pair joins
        if not fits(len(batch), longest, batch_size, budget):
            break
        batch.append(queue.popleft())
        pair.taken = True
    batch.sort(key=shortest_first)
    return batch, dropped


def next_batch(
    work: Round[S], seconds_per_token: float | None, now: float, batch_size: int, max_batch_tokens: int
) -> tuple[list[Pair[S]], list[tuple[Pair[S], str]]]:
    """The round's next micro-batch (`choose_order`, then `cut_batch`) and the pairs dropped on the way; the round's
    tokens left go down by both. An empty batch: the round is over."""
    order, budget = choose_order(seconds_per_token, work.time_left(now), work.left, work.padding, max_batch_tokens)
    batch, dropped = cut_batch(work.queue(order), batch_size, budget, now)
    work.left -= sum(pair.tokens for pair in batch) + sum(pair.tokens for pair, _ in dropped)
    return batch, dropped
