"""`rerank` as a library (rerank/library.py): which backend a source gets, `predict` and `rank` on real tiny models,
scores equal to the engine's, batching that changes no score, chunking, instructions, and a light `import rerank`."""
from __future__ import annotations

import os

os.environ["HF_HUB_OFFLINE"] = "1"  # before transformers is imported: nothing may try the network

import itertools
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch

from rerank import RankedResult, Reranker, load
from rerank.backend import ModelLoadError
from rerank.chunking import Chunking, split
from rerank.engine import ScoringEngine
from rerank.library import model_spec
from rerank.spec import BiEncoderSpec, CrossEncoderSpec, MxbaiV2Spec, RemoteSpec
from rerank_proxy_tools.models import MINILM_SOURCE, make_tiny_cross_encoder
from rerank_proxy_tools.qwen import make_tiny_qwen2

QUERY = "How does a lack of vitamin C affect sailors?"
DOCS = [
    "Scurvy is caused by a lack of vitamin C.",
    "Paris is the capital of France.",
    "Sailors on long voyages developed bleeding gums until citrus fruit was added to their rations at sea.",
    "Vitamin C",
    "Smoking damages the lungs and raises the risk of cancer and heart disease over many years of exposure.",
]
REPO = Path(__file__).resolve().parents[2]
KINDS = ["cross_encoder", "mxbai"]
_names = itertools.count()


@pytest.fixture(scope="module")
def ce_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_cross_encoder(tmp_path_factory.mktemp("library-ce"))


@pytest.fixture(scope="module")
def qwen_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("library-qwen2")
    make_tiny_qwen2(folder)
    return folder


# Models load on the CPU (device="cpu"): `auto` would take a GPU where there is one, and with it mxbai-v2's bfloat16
# and torch.compile, which change the numbers these tests compare.
@pytest.fixture(scope="module")
def cross_encoder(ce_dir: Path) -> Reranker:
    return load(str(ce_dir), device="cpu")


@pytest.fixture(scope="module")
def mxbai(qwen_dir: Path) -> Reranker:
    return load(str(qwen_dir), device="cpu")


def reranker(request: pytest.FixtureRequest, kind: str) -> Reranker:
    found: Reranker = request.getfixturevalue(kind)
    return found


def model_calls(reranker: Reranker) -> tuple[list[tuple[int, ...]], Any]:
    """The input_ids shape of every forward call of the reranker's model, and the hook to remove."""
    shapes: list[tuple[int, ...]] = []
    module: torch.nn.Module = reranker.scorer.module  # type: ignore[attr-defined]
    hook = module.register_forward_pre_hook(
        lambda _m, _args, kwargs: shapes.append(tuple(kwargs["input_ids"].shape)), with_kwargs=True)
    return shapes, hook


# --- which backend ---------------------------------------------------------------------------------------------------


def test_the_backend_is_read_from_the_models_config(ce_dir: Path, qwen_dir: Path) -> None:
    assert isinstance(model_spec(str(ce_dir)), CrossEncoderSpec)  # BertForSequenceClassification
    assert isinstance(model_spec(str(qwen_dir)), MxbaiV2Spec)  # Qwen2ForCausalLM
    assert isinstance(model_spec(MINILM_SOURCE), BiEncoderSpec)  # a sentence-transformers folder (BertModel)


@pytest.mark.parametrize(("source", "spec_type"), [
    ("mixedbread-ai/mxbai-rerank-base-v2", MxbaiV2Spec),
    ("mixedbread-ai/mxbai-rerank-large-v2", MxbaiV2Spec),
    ("mixedbread-ai/mxbai-rerank-base-v1", CrossEncoderSpec),
    ("BAAI/bge-reranker-base", CrossEncoderSpec),
    ("cross-encoder/ms-marco-MiniLM-L-6-v2", CrossEncoderSpec),
    ("http://reranker.internal:7997", RemoteSpec),
])
def test_a_hub_id_with_no_config_at_hand_is_told_by_its_name(source: str, spec_type: type) -> None:
    spec = model_spec(source)

    assert type(spec) is spec_type and spec.source == source


def test_a_name_that_tells_nothing_asks_for_kind(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="pass kind="):
        model_spec("someone/some-model")
    (tmp_path / "config.json").write_text('{"architectures": ["GPT2LMHeadModel"], "model_type": "gpt2"}')
    with pytest.raises(ValueError, match=r"GPT2LMHeadModel.*pass kind="):
        model_spec(str(tmp_path))
    assert isinstance(model_spec(str(tmp_path), kind="cross-encoder"), CrossEncoderSpec)


def test_kind_overrides_the_config(qwen_dir: Path, ce_dir: Path) -> None:
    assert isinstance(model_spec(str(qwen_dir), kind="cross-encoder"), CrossEncoderSpec)
    assert isinstance(model_spec(str(ce_dir), kind="bi-encoder"), BiEncoderSpec)
    with pytest.raises(ValueError, match="not a backend"):
        model_spec(str(ce_dir), kind="colbert")


def test_only_the_options_given_are_set_so_the_backends_defaults_apply(qwen_dir: Path) -> None:
    spec = model_spec(str(qwen_dir), device="cpu", max_length=300, batch_size=4, instruction="Prefer causes.",
                      max_batch_tokens=1024)

    assert isinstance(spec, MxbaiV2Spec)
    assert (spec.device, spec.max_length, spec.batch_size, spec.instruction, spec.max_batch_tokens) == (
        "cpu", 300, 4, "Prefer causes.", 1024)
    assert spec.model_fields_set == {"source", "device", "max_length", "batch_size", "instruction",
                                     "max_batch_tokens", "backend"}
    assert "dtype" not in model_spec(str(qwen_dir)).model_fields_set  # mxbai-v2 picks bfloat16 on a GPU itself
    assert model_spec(str(qwen_dir)).device == "auto"
    assert "device" not in model_spec("http://127.0.0.1:9").model_fields_set


def test_bad_options_are_refused_before_anything_loads(ce_dir: Path) -> None:
    with pytest.raises(TypeError, match="max_wait_ms, score_cache_entries: settings of the proxy's engine"):
        load(str(ce_dir), max_wait_ms=5, score_cache_entries=10)
    with pytest.raises(ValueError, match="instruction"):  # a field of mxbai-v2 only
        load(str(ce_dir), instruction="Prefer causes.")
    with pytest.raises(ValueError, match="dtype"):
        load(str(ce_dir), dtype="int3")
    with pytest.raises(ModelLoadError, match="no such model folder"):
        load(str(ce_dir / "missing"))


# --- predict and rank ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
def test_rank_orders_by_score_and_indices_refer_to_the_input(request: pytest.FixtureRequest, kind: str) -> None:
    model = reranker(request, kind)
    scores = model.predict((QUERY, DOCS))

    ranked = model.rank(QUERY, DOCS)

    assert len(set(scores)) == len(DOCS)  # distinct, so the order is really checked
    assert [hit.index for hit in ranked] == sorted(range(len(DOCS)), key=lambda i: -scores[i])
    assert [hit.score for hit in ranked] == [scores[hit.index] for hit in ranked]
    assert all(isinstance(hit, RankedResult) and hit.document is None for hit in ranked)


@pytest.mark.parametrize("kind", KINDS)
def test_top_k_and_return_documents(request: pytest.FixtureRequest, kind: str) -> None:
    model = reranker(request, kind)
    full = model.rank(QUERY, DOCS)

    top = model.rank(QUERY, DOCS, top_k=2, return_documents=True)

    assert [(hit.index, hit.score) for hit in top] == [(hit.index, hit.score) for hit in full[:2]]
    assert [hit.document for hit in top] == [DOCS[hit.index] for hit in top]
    assert model.rank(QUERY, DOCS, top_k=len(DOCS) + 10) == full


def test_a_repeated_document_is_scored_once_and_ties_keep_the_order_given(cross_encoder: Reranker) -> None:
    docs = ["Paris is the capital of France.", DOCS[0], "Paris is the capital of France."]
    shapes, hook = model_calls(cross_encoder)
    try:
        ranked = cross_encoder.rank(QUERY, docs)
    finally:
        hook.remove()

    assert sum(rows for rows, _width in shapes) == 2
    assert [hit.index for hit in ranked if hit.index != 1] == [0, 2]


@pytest.mark.parametrize("top_k", [0, -1, True, 2.5, "3"])
def test_invalid_top_k_is_a_value_error(cross_encoder: Reranker, top_k: Any) -> None:
    with pytest.raises(ValueError, match="top_k"):
        cross_encoder.rank(QUERY, DOCS, top_k=top_k)


def test_no_documents_no_results(cross_encoder: Reranker) -> None:
    assert cross_encoder.rank(QUERY, []) == []
    assert cross_encoder.rank(QUERY, [], top_k=3) == []
    assert cross_encoder.predict([]) == []
    assert cross_encoder.predict((QUERY, [])) == []


@pytest.mark.parametrize("kind", KINDS)
def test_predict_takes_pairs_of_several_queries(request: pytest.FixtureRequest, kind: str) -> None:
    model = reranker(request, kind)
    other = "Which city is the capital of France?"
    pairs = [(QUERY, DOCS[0]), (other, DOCS[1]), [QUERY, DOCS[2]], (other, DOCS[0])]

    scores = model.predict(pairs)

    expected = [model.predict((q, [d]))[0] for q, d in pairs]
    assert scores == pytest.approx(expected, abs=1e-4)


def test_a_string_where_a_list_belongs_is_a_type_error(cross_encoder: Reranker) -> None:
    with pytest.raises(TypeError, match=r"pass it in a list"):
        cross_encoder.predict((QUERY, DOCS[0]))
    with pytest.raises(TypeError, match="documents: a sequence of strings"):
        cross_encoder.rank(QUERY, DOCS[0])
    with pytest.raises(TypeError, match="a pair is"):
        cross_encoder.predict([(QUERY, DOCS[0], DOCS[1])])
    with pytest.raises(TypeError, match="must be a string"):
        cross_encoder.rank(QUERY, [DOCS[0], None])  # type: ignore[list-item]


# --- the engine's scores, the engine's batching ----------------------------------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
async def test_scores_equal_the_engines_for_the_same_spec(request: pytest.FixtureRequest, kind: str) -> None:
    model = reranker(request, kind)
    name = f"library-{next(_names)}"
    engine = ScoringEngine({name: model.spec})  # its own load of the same spec, scored through its queue
    await engine.start()
    try:
        served = await engine.score(name, QUERY, DOCS, 120)
    finally:
        await engine.close()

    assert model.predict((QUERY, DOCS)) == pytest.approx(served, abs=1e-4)


@pytest.mark.parametrize("kind", KINDS)
def test_many_documents_of_mixed_lengths_score_as_one_by_one(request: pytest.FixtureRequest, kind: str,
                                                             ce_dir: Path, qwen_dir: Path) -> None:
    folder = ce_dir if kind == "cross_encoder" else qwen_dir
    budget, pairs_per_call = 600, 8
    batched = load(str(folder), device="cpu", max_batch_tokens=budget, batch_size=pairs_per_call)
    words = DOCS[2].split()
    docs = [" ".join(words[: 1 + (i * 7) % len(words)]) for i in range(40)]
    shapes, hook = model_calls(batched)
    try:
        scores = batched.predict((QUERY, docs))
    finally:
        hook.remove()
    calls = [shape for shape in shapes if shape[0] > 1]  # mxbai's shared prefix runs apart, as one row

    assert scores == pytest.approx([reranker(request, kind).predict((QUERY, [doc]))[0] for doc in docs], abs=1e-4)
    assert 1 < len(calls) < len(docs)
    assert all(rows <= pairs_per_call and rows * width <= budget + 8 * rows for rows, width in calls)
    widths = [width for _rows, width in calls]
    assert widths == sorted(widths)  # shortest first


def test_scores_are_independent_of_the_slice_pairs_are_tokenized_in(cross_encoder: Reranker,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    whole = cross_encoder.predict((QUERY, DOCS))
    monkeypatch.setattr("rerank.library.PAIRS_PER_SLICE", 2)

    assert cross_encoder.predict((QUERY, DOCS)) == pytest.approx(whole, abs=1e-6)


# --- chunking, instructions, the bi-encoder, closing -----------------------------------------------------------------


def test_a_long_document_scores_as_its_best_chunk(ce_dir: Path, cross_encoder: Reranker) -> None:
    chunking = Chunking(size=8, overlap=2, max_chunks=3)
    chunked = load(str(ce_dir), device="cpu", chunking={"size": 8, "overlap": 2, "max_chunks": 3})
    long_doc = " ".join([DOCS[4], DOCS[2], DOCS[0]])
    chunks = split(long_doc, chunking)

    scores = chunked.predict((QUERY, [long_doc, DOCS[3]]))

    assert len(chunks) == 3
    assert scores[0] == pytest.approx(max(cross_encoder.predict((QUERY, chunks))), abs=1e-6)
    assert scores[1] == pytest.approx(cross_encoder.predict((QUERY, [DOCS[3]]))[0], abs=1e-6)  # one chunk: itself


def test_an_instruction_per_call_scores_as_a_model_loaded_with_it(qwen_dir: Path, mxbai: Reranker) -> None:
    instruction = "Prefer documents that name a cause."
    plain = mxbai.predict((QUERY, DOCS))

    instructed = mxbai.predict((QUERY, DOCS), instruction=instruction)

    assert instructed == pytest.approx(load(str(qwen_dir), device="cpu", instruction=instruction).predict((QUERY, DOCS)), abs=1e-4)
    assert instructed != pytest.approx(plain, abs=1e-3)
    assert mxbai.predict((QUERY, DOCS)) == plain  # the loaded model keeps its own (none)
    assert [hit.score for hit in mxbai.rank(QUERY, DOCS, instruction=instruction)] == sorted(instructed, reverse=True)


def test_only_mxbai_takes_an_instruction(cross_encoder: Reranker, mxbai: Reranker) -> None:
    with pytest.raises(ValueError, match="takes no instruction"):
        cross_encoder.rank(QUERY, DOCS, instruction="Prefer causes.")
    with pytest.raises(ValueError, match="instruction: empty"):
        mxbai.rank(QUERY, DOCS, instruction="")


def test_the_trained_bi_encoder_ranks_the_relevant_document_first() -> None:
    with load(MINILM_SOURCE, device="cpu") as minilm:
        ranked = minilm.rank("What causes scurvy?", ["Paris is the capital of France.", DOCS[4], DOCS[0]],
                             top_k=1, return_documents=True)

    assert [(hit.index, hit.document) for hit in ranked] == [(2, DOCS[0])]
    assert 0 < ranked[0].score <= 1  # a cosine


def test_a_closed_reranker_refuses_calls(ce_dir: Path) -> None:
    with load(str(ce_dir), device="cpu") as model:
        assert len(model.predict((QUERY, DOCS))) == len(DOCS)
    assert "closed" in repr(model)
    with pytest.raises(RuntimeError, match="is closed"):
        model.rank(QUERY, DOCS)


def test_importing_rerank_loads_no_torch() -> None:
    code = ("import sys; from rerank import RankedResult, Reranker, load; "
            "print(sorted(m for m in ('torch', 'transformers') if m in sys.modules))")
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120,
                          check=True, env={**os.environ, "PYTHONPATH": str(REPO)})

    assert done.stdout.strip() == "[]"
