"""How inputs are cut into model calls: one rule for the engine's micro-batches and the backends' own calls.

A call grows while its padded size (inputs x longest) stays within a token budget and its count within a cap.
Taken shortest first (`token_batches`), neighbours in a call have similar lengths and little of the call is padding:
a backend's own calls always go that way, and so do the engine's micro-batches while a round has time to spare.
When a deadline is near, the engine cuts its micro-batches off the cluster's rank order instead (each call shortest
first inside), so that whatever is scored when the deadline stops it is the top of the window; that costs the padding
of mixed lengths in a call. `Pace` is what tells the two apart: the model's seconds per padded token, as its calls
took them.
"""
from __future__ import annotations

from collections.abc import Sequence


def fits(size: int, longest: int, max_items: int, max_tokens: int) -> bool:
    """Whether a call of `size` inputs takes one more whose length, `longest`, is the call's longest so far.
    An empty call takes anything: an input longer than the budget runs alone."""
    return size == 0 or (size < max_items and (size + 1) * longest <= max_tokens)


def token_batches(lengths: Sequence[int], max_items: int, max_tokens: int) -> list[list[int]]:
    """Positions of `lengths` cut into calls, shortest first, each call as big as `fits` allows."""
    calls: list[list[int]] = []
    call: list[int] = []
    for i in sorted(range(len(lengths)), key=lengths.__getitem__):
        if not fits(len(call), lengths[i], max_items, max_tokens):
            calls.append(call)
            call = []
        call.append(i)
    if call:
        calls.append(call)
    return calls


def padded_tokens(lengths: Sequence[int], calls: Sequence[Sequence[int]]) -> int:
    """What `calls` (positions of `lengths`) run, padding included: each call's inputs x its longest."""
    return sum(len(call) * max(lengths[i] for i in call) for call in calls if call)


class Pace:
    """A model's seconds per padded token: a moving average of its calls, each weighted by its size (a small call's
    fixed overhead does not swing it), older calls fading by DECAY per call. None until a call was timed."""

    DECAY = 0.7

    def __init__(self) -> None:
        self._seconds = 0.0
        self._tokens = 0.0

    def observe(self, tokens: int, seconds: float) -> None:
        if tokens > 0 and seconds >= 0:
            self._seconds = self.DECAY * self._seconds + seconds
            self._tokens = self.DECAY * self._tokens + tokens

    @property
    def seconds_per_token(self) -> float | None:
        return self._seconds / self._tokens if self._tokens > 0 else None

    def seconds(self, tokens: float) -> float | None:
        """How long calls of `tokens` padded tokens should take; None while nothing was timed."""
        per_token = self.seconds_per_token
        return None if per_token is None else per_token * tokens
