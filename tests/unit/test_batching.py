"""The rule that cuts inputs into model calls: length-sorted, within a token budget and an item cap."""
from __future__ import annotations

import random

import pytest

from rerank.batching import fits, token_batches
from rerank.spec import (
    ACCELERATOR_BATCH_PAIRS,
    ACCELERATOR_BATCH_TOKENS,
    CPU_BATCH_PAIRS,
    CPU_BATCH_TOKENS,
    BiEncoderSpec,
    MxbaiV2Spec,
)


@pytest.mark.parametrize("seed", range(5))
def test_calls_hold_every_input_once_shortest_first_within_budget_and_cap(seed: int) -> None:
    rng = random.Random(seed)
    lengths = [rng.randint(1, 60) for _ in range(rng.randint(1, 80))]
    budget, cap = 200, 6

    calls = token_batches(lengths, cap, budget)

    assert sorted(i for call in calls for i in call) == list(range(len(lengths)))
    flat = [lengths[i] for call in calls for i in call]
    assert flat == sorted(flat)
    assert all(len(call) <= cap and len(call) * max(lengths[i] for i in call) <= budget for call in calls)
    # greedy: a call ends only because the next input would break the cap or the budget
    for call, following in zip(calls, calls[1:]):
        assert len(call) == cap or (len(call) + 1) * lengths[following[0]] > budget


def test_an_input_longer_than_the_budget_runs_alone() -> None:
    assert token_batches([5, 500, 5], 32, 100) == [[0, 2], [1]]
    assert fits(0, 10_000, 1, 1)
    assert not fits(1, 60, 32, 100)


def test_no_inputs_make_no_calls() -> None:
    assert token_batches([], 32, 100) == []


@pytest.mark.parametrize(("device", "expected"), [("cpu", CPU_BATCH_TOKENS), ("cuda", ACCELERATOR_BATCH_TOKENS),
                                                  ("mps", ACCELERATOR_BATCH_TOKENS)])
def test_call_budget_defaults_by_device_and_an_explicit_one_wins(device: str, expected: int) -> None:
    assert BiEncoderSpec(source="m").batch_tokens(device) == expected
    assert BiEncoderSpec(source="m", max_batch_tokens=777).batch_tokens(device) == 777
    assert CPU_BATCH_TOKENS < ACCELERATOR_BATCH_TOKENS


@pytest.mark.parametrize(("device", "expected"), [("cpu", CPU_BATCH_PAIRS), ("cuda", ACCELERATOR_BATCH_PAIRS),
                                                  (None, ACCELERATOR_BATCH_PAIRS)])
def test_pairs_per_call_default_by_device_and_an_explicit_one_wins(device: str | None, expected: int) -> None:
    assert BiEncoderSpec(source="m").batch_pairs(device) == expected
    assert BiEncoderSpec(source="m", batch_size=7).batch_pairs(device) == 7


def test_on_an_accelerator_the_token_budget_not_the_pair_count_cuts_calls() -> None:
    # ~440-token pairs (mxbai-v2 with 250-token documents): the budget, not the pair cap, must end each call.
    spec = MxbaiV2Spec(source="m")
    calls = token_batches([440] * 200, spec.batch_pairs("cuda"), spec.batch_tokens("cuda"))
    assert [len(call) for call in calls][:2] == [ACCELERATOR_BATCH_TOKENS // 440] * 2
