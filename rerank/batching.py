"""How inputs are cut into model calls: one rule for the engine's micro-batches and the backends' own calls.

Inputs go shortest first, so neighbours in a call have similar lengths and little of the call is padding, and a
call grows while its padded size (inputs x longest) stays within a token budget and its count within a cap.
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
