"""A circuit breaker per model: after a run of failed searches the model gets a rest instead of more work.

closed -> open after `failures` consecutive failed searches (the model raised for the search, or its deadline passed
with nothing or only part of it scored). While open every search is refused at once (the proxy answers with the
cluster's own order). After `open_s` it is half-open: exactly one trial search is let through, the others are still
refused; the trial's success closes the breaker, its failure opens it for another `open_s`. In the closed state a
success resets the count.

Pure: no event loop, no threads; the clock is injectable so tests step time by hand. The engine asks `allow()`
before queueing a search and hands the ticket back with the search's outcome to `record()`. An outcome of None
(the search was refused as overloaded, its caller left, the model was unloaded) says nothing about the model: it
frees the trial slot and counts neither way. A ticket from before the breaker last opened or closed is stale: its
outcome is ignored, so a slow search admitted before the breaker opened can neither close it nor count twice.
"""
from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

State = Literal["closed", "open", "half-open"]
STATE_CODES: dict[str, int] = {"closed": 0, "half-open": 1, "open": 2}  # the rerank_model_circuit_state gauge


@dataclass(frozen=True)
class Ticket:
    """One admitted search: the breaker's epoch when it was admitted, and whether it is the half-open trial."""

    epoch: int
    trial: bool = False


class CircuitBreaker:
    def __init__(
        self,
        failures: int = 5,
        open_s: float = 10.0,
        *,
        enabled: bool = True,
        clock: Callable[[], float] = time.monotonic,
        on_open: Callable[[], None] | None = None,
    ):
        if failures < 1:
            raise ValueError("failures must be at least 1")
        if open_s <= 0:
            raise ValueError("open_s must be positive")
        self.failures = failures
        self.open_s = open_s
        self.enabled = enabled
        self._clock = clock
        self._on_open = on_open
        self._failed = 0  # consecutive failed searches, in the closed state
        self._opened_at: float | None = None  # None: closed
        self._trial = False  # the half-open trial is in flight
        self._epoch = 0  # bumped whenever the breaker opens or closes
        self.opened_total = 0

    @property
    def state(self) -> State:
        if self._opened_at is None:
            return "closed"
        return "open" if self._clock() < self._opened_at + self.open_s else "half-open"

    @property
    def code(self) -> int:
        """0 closed, 1 half-open, 2 open."""
        return STATE_CODES[self.state]

    @property
    def consecutive_failures(self) -> int:
        return self._failed

    def retry_in(self) -> float:
        """Seconds until the breaker turns half-open (0 when it is not open)."""
        if self._opened_at is None:
            return 0.0
        return max(0.0, self._opened_at + self.open_s - self._clock())

    def allow(self) -> Ticket | None:
        """A ticket for a search to go ahead, or None: refuse it (open, or half-open with the trial in flight)."""
        state = self.state
        if state == "closed":
            return Ticket(self._epoch)
        if state == "open" or self._trial:
            return None
        self._trial = True
        return Ticket(self._epoch, trial=True)

    def record(self, ticket: Ticket, ok: bool | None) -> None:
        """The admitted search's outcome: True succeeded, False failed, None neither (says nothing of the model)."""
        if ticket.trial:
            self._trial = False
            if ok is True:
                self._close()
            elif ok is False:
                self._open()
            return
        if ok is None or ticket.epoch != self._epoch or self._opened_at is not None:
            return
        if ok:
            self._failed = 0
        else:
            self._failed += 1
            if self.enabled and self._failed >= self.failures:
                self._open()

    def _open(self) -> None:
        self._opened_at = self._clock()
        self._failed = 0
        self._epoch += 1
        self.opened_total += 1
        if self._on_open is not None:
            self._on_open()

    def _close(self) -> None:
        self._opened_at = None
        self._failed = 0
        self._epoch += 1
