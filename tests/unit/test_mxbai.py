"""The mxbai-v2 backend: prompt layout, truncation, padding, batching, and parity with mixedbread's library.

Parity fixtures (tests/fixtures/mxbai_reference_*.json) come from `scripts/mxbai_reference.py`, which runs the
reference `mxbai-rerank` library in its own transformers-4 venv on the same seeded weights built here.
"""
from __future__ import annotations

import os

os.environ["HF_HUB_OFFLINE"] = "1"  # before transformers is imported: nothing may try the network

import json
from pathlib import Path
from typing import Any

import pytest
import torch

from rerank.mxbai import (
    CHAT_PREFIX,
    CHAT_SUFFIX,
    DEFAULT_MAX_LENGTH,
    TASK_PROMPT,
    MxbaiV2Scorer,
    backend_defaults,
    document_part,
    prompt_text,
    query_part,
)
from rerank.registry import load_scorer
from rerank.spec import CrossEncoderSpec, MxbaiV2Spec
from rerank_proxy_tools.qwen import (
    TINY_CONFIG,
    TINY_STD,
    loaded_weights_sha256,
    make_base_v2_qwen2,
    make_qwen2_reranker,
    make_tiny_qwen2,
    make_tiny_qwen2_qwen_vocab,
    tokenizer_sha256,
)

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
QUERY = "How does a lack of vitamin C affect sailors?"
SHORT = "Scurvy is caused by a lack of vitamin C."
LONG = " ".join(["Long sea voyages ended with bleeding gums until citrus fruit was added to the rations."] * 12)


def fixture(model: str) -> dict[str, Any]:
    return json.loads((FIXTURES / f"mxbai_reference_{model}.json").read_text(encoding="utf-8"))


def ranking(scores: list[float]) -> list[int]:
    return sorted(range(len(scores)), key=lambda i: -scores[i])


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("tiny-qwen2")
    make_tiny_qwen2(folder)
    return folder


def scorer(folder: Path, **fields: Any) -> MxbaiV2Scorer:
    return MxbaiV2Scorer(MxbaiV2Spec(source=str(folder), **fields), name="mxbai")


@pytest.fixture(scope="module")
def tiny(tiny_dir: Path) -> MxbaiV2Scorer:
    return scorer(tiny_dir)


# --- prompt -------------------------------------------------------------------------------------------------


def test_prompt_text_is_chat_turn_with_instruction_query_document_then_task() -> None:
    text = prompt_text("what is scurvy", "Scurvy is a disease.", "Prefer medical sources.")

    assert text == (
        CHAT_PREFIX
        + "instruction: Prefer medical sources.\nquery: what is scurvy\ndocument: Scurvy is a disease.\n"
        + TASK_PROMPT
        + CHAT_SUFFIX
    )
    assert CHAT_PREFIX.startswith("<|im_start|>system\n") and CHAT_PREFIX.endswith("<|im_start|>user\n")
    assert TASK_PROMPT.endswith("(0 for not relevant, 1 for relevant).\nRelevance:")
    assert CHAT_SUFFIX == "<|im_end|>\n<|im_start|>assistant\n"


def test_prompt_without_instruction_has_no_instruction_line() -> None:
    assert query_part("q") == "query: q"
    assert query_part("q", "") == "query: q"
    assert "instruction:" not in prompt_text("q", "d")


def test_input_ids_are_pieces_tokenized_separately_and_decode_to_the_prompt(tiny: MxbaiV2Scorer) -> None:
    ids = tiny.encode(QUERY, [SHORT])[0]

    piece = tiny._ids
    assert ids == (
        piece(CHAT_PREFIX) + piece(query_part(QUERY)) + piece("\n") + piece(document_part(SHORT)) + piece("\n")
        + piece(TASK_PROMPT) + piece(CHAT_SUFFIX)
    )
    assert tiny.tokenizer.decode(ids, skip_special_tokens=False) == prompt_text(QUERY, SHORT)


def test_configured_instruction_goes_before_every_query(tiny_dir: Path) -> None:
    instructed = scorer(tiny_dir, instruction="Prefer causes.")

    ids = instructed.encode(QUERY, [SHORT])[0]

    assert instructed.tokenizer.decode(ids) == prompt_text(QUERY, SHORT, "Prefer causes.")


def test_answer_tokens_are_one_and_zero(tiny: MxbaiV2Scorer) -> None:
    assert tiny.tokenizer.decode([tiny.relevant_id]) == "1"
    assert tiny.tokenizer.decode([tiny.not_relevant_id]) == "0"


# --- truncation ---------------------------------------------------------------------------------------------


def test_long_document_is_cut_at_the_end_and_the_query_is_kept(tiny_dir: Path) -> None:
    short_budget = scorer(tiny_dir, max_length=64)
    query_ids = short_budget._ids(query_part(QUERY))
    document_ids = short_budget._ids(document_part(LONG))
    assert len(query_ids) < 48 and len(query_ids) + 1 + len(document_ids) > 64  # the case under test

    ids = short_budget.encode(QUERY, [LONG])[0]

    prefix, suffix = short_budget.prefix_ids, short_budget.suffix_ids
    assert len(ids) == len(prefix) + 64 + len(suffix)
    assert ids[: len(prefix)] == prefix and ids[len(ids) - len(suffix) :] == suffix
    body = ids[len(prefix) : len(ids) - len(suffix)]
    assert body[: len(query_ids)] == query_ids
    assert body[len(query_ids) :] == (short_budget.sep_ids + document_ids)[: 64 - len(query_ids)]


def test_long_query_keeps_three_quarters_of_the_budget(tiny_dir: Path) -> None:
    short_budget = scorer(tiny_dir, max_length=64)
    long_query = " ".join([QUERY] * 10)

    ids = short_budget.encode(long_query, [LONG])[0]

    body = ids[len(short_budget.prefix_ids) : len(ids) - len(short_budget.suffix_ids)]
    assert body[:48] == short_budget._ids(query_part(long_query))[:48]
    assert body[48:] == (short_budget.sep_ids + short_budget._ids(document_part(LONG)))[:16]


def test_budget_defaults_to_8192_and_shrinks_to_fit_the_position_embeddings(tmp_path: Path) -> None:
    make_qwen2_reranker(tmp_path, {**TINY_CONFIG, "max_position_embeddings": 512}, std=TINY_STD)

    small_positions = scorer(tmp_path)

    template = len(small_positions.prefix_ids) + len(small_positions.suffix_ids)
    assert small_positions.spec.max_length == DEFAULT_MAX_LENGTH
    assert small_positions.max_length == 512 - template
    ids = small_positions.encode(" ".join([QUERY] * 200), [LONG * 5])[0]
    assert len(ids) == 512


def test_explicit_max_length_is_kept_and_cpu_default_dtype_is_float32(tiny_dir: Path) -> None:
    explicit = scorer(tiny_dir, max_length=300)

    assert explicit.max_length == 300
    assert explicit.model.dtype == torch.float32


@pytest.mark.parametrize(
    ("fields", "dtype"),
    [({"device": "cuda"}, "bfloat16"), ({"device": "cuda", "dtype": "float32"}, "float32"), ({}, "float32")],
    ids=["gpu-defaults-to-bfloat16", "gpu-explicit-float32-kept", "cpu-defaults-to-float32"],
)
def test_dtype_defaults_to_bfloat16_on_gpu_only(fields: dict[str, str], dtype: str) -> None:
    spec = backend_defaults(MxbaiV2Spec(source="mixedbread-ai/mxbai-rerank-base-v2", **fields))

    assert spec.dtype == dtype


def test_bfloat16_scores_track_float32(tiny_dir: Path, tiny: MxbaiV2Scorer) -> None:
    docs = [SHORT, LONG, "Paris is the capital of France."]
    half = scorer(tiny_dir, dtype="bfloat16")

    assert half.model.dtype == torch.bfloat16
    assert half.score(QUERY, docs) == pytest.approx(tiny.score(QUERY, docs), abs=0.25)


# --- padding, batching, forward -----------------------------------------------------------------------------


def test_padding_gives_the_same_score_alone_and_beside_longer_pairs(tiny: MxbaiV2Scorer) -> None:
    alone = tiny.score(QUERY, [SHORT])[0]

    in_batch = tiny.score(QUERY, [LONG, SHORT, LONG[:300]])

    assert tiny.batch_size >= 3  # one padded batch
    assert in_batch[1] == pytest.approx(alone, abs=1e-4)


def test_batch_size_changes_neither_scores_nor_their_order(tiny_dir: Path) -> None:
    docs = [LONG, SHORT, "", LONG[:200], "Paris is the capital of France.", SHORT * 3, LONG[:50]]

    by_batch = {size: scorer(tiny_dir, batch_size=size).score(QUERY, docs) for size in (1, 2, 3, 32)}

    for scores in by_batch.values():
        assert scores == pytest.approx(by_batch[32], abs=1e-4)
    assert len(set(round(s, 3) for s in by_batch[32])) == len(docs)  # distinct, so order is really checked


def test_lm_head_runs_on_each_pairs_last_position_only(tiny: MxbaiV2Scorer) -> None:
    shapes: list[tuple[int, ...]] = []
    hook = tiny.model.lm_head.register_forward_hook(lambda module, args, out: shapes.append(tuple(args[0].shape)))
    try:
        tiny.score(QUERY, [SHORT, LONG])
    finally:
        hook.remove()

    assert shapes == [(2, tiny.model.config.hidden_size)]  # one vector per pair, not one per token


def test_batches_are_padded_on_the_right_without_an_attention_mask(tiny: MxbaiV2Scorer) -> None:
    calls: list[dict[str, object]] = []
    hook = tiny.module.register_forward_pre_hook(lambda module, args, kwargs: calls.append(kwargs), with_kwargs=True)
    try:
        tiny.score(QUERY, [SHORT, LONG])
    finally:
        hook.remove()

    call = calls[-1]  # after the shared prefix's own call
    ids = call["input_ids"]
    assert call.get("attention_mask") is None
    assert ids[0, 0].item() != tiny.pad_id and ids[0, -1].item() == tiny.pad_id  # the shorter row ends in padding


def forward_calls(scorer: MxbaiV2Scorer, queries: list[str], docs: list[str]) -> list[dict[str, Any]]:
    calls: list[dict[str, Any]] = []
    hook = scorer.module.register_forward_pre_hook(lambda module, args, kwargs: calls.append(kwargs),
                                                   with_kwargs=True)
    try:
        scorer.score_pairs(queries, docs)
    finally:
        hook.remove()
    return calls


def test_one_searchs_pairs_run_their_template_and_query_once(tiny_dir: Path) -> None:
    fresh = scorer(tiny_dir)
    docs = [SHORT, LONG[:300], "Paris is the capital of France."]

    prefix, rows = forward_calls(fresh, [QUERY] * 3, docs)
    (later,) = forward_calls(fresh, [QUERY] * 2, ["okapi bm25", "reciprocal rank fusion"])  # the search's next call

    shared = len(fresh.prefix_ids) + len(fresh.query_ids(QUERY))
    assert prefix["input_ids"].tolist() == [fresh.encode(QUERY, [SHORT])[0][:shared]]
    assert rows["input_ids"].shape[0] == 3
    # The rows ran after the prefix's keys and values (the cache holds both once the call is over).
    assert rows[fresh._cache_arg].get_seq_length() == shared + rows["input_ids"].shape[1]
    assert later[fresh._cache_arg].get_seq_length() == shared + later["input_ids"].shape[1]


def test_pairs_of_several_queries_share_the_chat_prefix(tiny_dir: Path) -> None:
    prefix, rows = forward_calls(scorer(tiny_dir), ["what is bm25", "rerankers"], [SHORT, LONG[:300]])

    assert prefix["input_ids"].tolist() == [scorer(tiny_dir).prefix_ids]
    assert rows["input_ids"].shape[0] == 2


@pytest.mark.parametrize("queries", [[QUERY] * 4, ["what is bm25", "rerankers", "what is bm25", QUERY]])
def test_sharing_the_prefix_keeps_every_score(tiny_dir: Path, queries: list[str]) -> None:
    docs = [SHORT, LONG, "Paris is the capital of France.", LONG[:120]]
    whole = scorer(tiny_dir)
    whole.share_prefix = False

    assert scorer(tiny_dir).score_pairs(queries, docs) == pytest.approx(whole.score_pairs(queries, docs), abs=1e-4)


def test_a_compiled_model_runs_whole_rows(tiny_dir: Path) -> None:
    # Sharing would recompile its blocks layer by layer (dynamo guards on the layer index the cache is read with).
    assert scorer(tiny_dir, compile=True).share_prefix is False


def test_attention_is_sdpa(tiny: MxbaiV2Scorer) -> None:
    assert tiny.model.config._attn_implementation == "sdpa"


def test_pairs_of_several_queries_score_as_each_query_alone(tiny: MxbaiV2Scorer) -> None:
    queries = ["what is bm25", "rerankers", "what is bm25", "rerankers"]
    docs = ["a ranking function", "cross-encoders and causal LMs", "okapi", "they reorder hits"]
    alone = tiny.score("what is bm25", [docs[0], docs[2]]) + tiny.score("rerankers", [docs[1], docs[3]])
    together = tiny.score_pairs(queries, docs)
    assert together == pytest.approx([alone[0], alone[2], alone[1], alone[3]], abs=1e-4)  # padding differs


def test_no_documents_score_nothing(tiny: MxbaiV2Scorer) -> None:
    assert tiny.score(QUERY, []) == []


def test_registry_loads_mxbai_v2(tiny_dir: Path) -> None:
    loaded = load_scorer("rr", MxbaiV2Spec(source=str(tiny_dir)))

    assert isinstance(loaded, MxbaiV2Scorer) and loaded.name == "rr"


def test_instruction_is_rejected_for_other_backends() -> None:
    with pytest.raises(ValueError, match="instruction"):
        CrossEncoderSpec(source="x", instruction="Prefer causes.")


# --- parity with mixedbread's mxbai-rerank ------------------------------------------------------------------


def assert_parity(folder: Path, built_sha: str, reference: dict[str, Any], case: dict[str, Any]) -> float:
    assert built_sha == reference["weights_sha256"], "weights differ from the reference's: regenerate fixtures"
    assert tokenizer_sha256(folder) == reference["tokenizer_sha256"], "tokenizer differs from the reference's"
    fields: dict[str, Any] = {"max_length": case["max_length"], "dtype": "float32"}
    if case["instruction"]:
        fields["instruction"] = case["instruction"]
    if case["batch_size"]:
        fields["batch_size"] = case["batch_size"]
    ours = scorer(folder, **fields)
    assert loaded_weights_sha256(ours.model) == built_sha  # every tensor loaded as built, none re-initialised

    assert ours.encode(case["query"], case["docs"]) == case["input_ids"]
    scores = ours.score(case["query"], case["docs"])

    diff = max(abs(a - b) for a, b in zip(scores, case["scores"]))
    print(f"parity {reference['model']}/{case['name']}: max abs diff {diff:.3g} over {len(scores)} scores")
    assert diff <= 1e-3, f"max abs diff {diff}"
    assert ranking(scores) == ranking(case["scores"])
    return diff


# The tiny model under the tests' small BPE, and under Qwen's own tokenizer: its 151,643 tokens merge across far more
# piece boundaries than the small BPE's 600, and the ids built piece by piece must still be the library's. Qwen's
# vocabulary comes from PyPI the first time (rerank_proxy_tools/qwen.py: fetch_qwen_vocab), then from .cache.
TINY_MODELS = {"tiny": make_tiny_qwen2, "tiny-qwen-vocab": make_tiny_qwen2_qwen_vocab}
TINY_REFERENCES = {name: fixture(name) for name in TINY_MODELS}


@pytest.fixture(scope="module", params=list(TINY_MODELS))
def tiny_reference(request: pytest.FixtureRequest,
                   tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str, dict[str, Any]]:
    """A tiny model built as its reference fixture was: its folder, weights' sha256 and the fixture."""
    reference = TINY_REFERENCES[request.param]
    folder = tmp_path_factory.mktemp(request.param)
    return folder, TINY_MODELS[request.param](folder, seed=reference["seed"]), reference


@pytest.mark.parametrize("case", [case["name"] for case in TINY_REFERENCES["tiny"]["cases"]])
def test_parity_with_mxbai_rerank_on_tiny_qwen2(tiny_reference: tuple[Path, str, dict[str, Any]], case: str) -> None:
    folder, built, reference = tiny_reference
    assert_parity(folder, built, reference, next(c for c in reference["cases"] if c["name"] == case))


def test_parity_with_mxbai_rerank_on_base_v2_shaped_qwen2(tmp_path: Path) -> None:
    # 494M random parameters in mxbai-rerank-base-v2's exact shapes: about a minute and 2 GB of disk on CPU.
    reference = fixture("base-v2")
    try:
        built = make_base_v2_qwen2(tmp_path, seed=reference["seed"])
        for case in reference["cases"]:
            assert_parity(tmp_path, built, reference, case)
    finally:
        (tmp_path / "model.safetensors").unlink(missing_ok=True)  # pytest keeps recent tmp dirs; 2 GB each
