"""The local CPU backends: parity with sentence-transformers, source resolution, device choice, load errors."""
from __future__ import annotations

import gc
import os
import re
import threading
import tracemalloc
from concurrent.futures import ThreadPoolExecutor

os.environ["HF_HUB_OFFLINE"] = "1"  # before transformers is imported: nothing may try the network

from pathlib import Path

import pytest
import torch
from sentence_transformers import CrossEncoder, SentenceTransformer

from rerank.backend import ModelLoadError, Scorer
from rerank.bi_encoder import BiEncoderScorer, pool, pooling_mode
from rerank.cross_encoder import CrossEncoderScorer
from rerank.loading import pick_device, resolve_source
from rerank.registry import load_scorer
from rerank.spec import CPU_BATCH_TOKENS, SPEC_TYPES, BiEncoderSpec, CrossEncoderSpec
from rerank_proxy_tools.models import MINILM_PACKAGE, MINILM_SOURCE, make_tiny_cross_encoder

QUERIES = ["vitamin C deficiency causes scurvy", "smoking increases the risk of lung cancer"]
# Short biomedical claims and abstract sentences in the style of SciFact.
SENTENCES = [
    "Scurvy results from a prolonged lack of ascorbic acid in the diet.",
    "Sailors on long voyages developed bleeding gums until citrus fruit was added to rations.",
    "Cigarette smoke contains carcinogens that damage the DNA of airway epithelial cells.",
    "Lung adenocarcinoma incidence is higher among long-term smokers than never smokers.",
    "Regular aerobic exercise lowers resting blood pressure in adults with hypertension.",
    "Metformin reduces hepatic glucose production in patients with type 2 diabetes.",
    "The gut microbiome composition shifts after a course of broad-spectrum antibiotics.",
    "Vitamin D supplementation did not reduce fracture risk in community-dwelling older adults.",
    "Statin therapy lowers LDL cholesterol and the rate of major cardiovascular events.",
    "CRISPR-Cas9 editing can introduce off-target mutations in human cell lines.",
    "Sleep deprivation impairs working memory and attention in healthy volunteers.",
    "Measles vaccination coverage above 95 percent interrupts community transmission.",
    "Chronic alcohol consumption is associated with liver fibrosis and cirrhosis.",
    "Insulin resistance precedes the onset of type 2 diabetes by several years.",
    "Tumour-infiltrating lymphocytes predict response to immune checkpoint inhibitors.",
    "Collagen synthesis requires ascorbate as a cofactor for prolyl hydroxylase.",
    "Quitting smoking before age forty avoids most of the excess mortality of smoking.",
    "Air pollution exposure is linked to reduced lung function in children.",
    "Mediterranean diets are associated with lower all-cause mortality in cohort studies.",
    "Aspirin use reduces the recurrence of colorectal adenomas in high-risk patients.",
]


@pytest.fixture(scope="module")
def minilm() -> BiEncoderScorer:
    # A small batch size so the documents span several padded batches.
    return BiEncoderScorer(BiEncoderSpec(source=MINILM_SOURCE, batch_size=7), name="minilm")


@pytest.fixture(scope="module")
def tiny_ce_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_cross_encoder(tmp_path_factory.mktemp("tiny-ce"))


def ranking(scores: list[float]) -> list[int]:
    return sorted(range(len(scores)), key=lambda i: -scores[i])


@pytest.mark.parametrize("query", QUERIES)
def test_bi_encoder_parity_with_sentence_transformers_cosine(minilm: BiEncoderScorer, query: str) -> None:
    reference = SentenceTransformer(minilm.path, device="cpu")
    vectors = reference.encode([query, *SENTENCES], convert_to_tensor=True, normalize_embeddings=True)
    expected = (vectors[1:] @ vectors[0]).tolist()

    got = minilm.score(query, SENTENCES)

    assert max(abs(a - b) for a, b in zip(got, expected)) <= 1e-4
    assert ranking(got) == ranking(expected)


@pytest.mark.parametrize(
    ("num_labels", "activation_fn"),
    [(1, None), (1, "torch.nn.modules.linear.Identity"), (2, None)],
    ids=["one-label-default-sigmoid", "one-label-saved-identity", "two-labels-positive-class"],
)
def test_cross_encoder_parity_with_crossencoder_predict(
    tmp_path: Path, num_labels: int, activation_fn: str | None
) -> None:
    folder = make_tiny_cross_encoder(tmp_path, num_labels=num_labels, activation_fn=activation_fn)
    scorer = CrossEncoderScorer(CrossEncoderSpec(source=str(folder), batch_size=6))
    query = QUERIES[0]

    predicted = CrossEncoder(str(folder), device="cpu").predict([(query, doc) for doc in SENTENCES])
    expected = (predicted if num_labels == 1 else predicted[:, 1]).tolist()
    got = scorer.score(query, SENTENCES)

    assert max(abs(a - b) for a, b in zip(got, expected)) <= 1e-4
    assert ranking(got) == ranking(expected)


def test_cross_encoder_saved_identity_returns_raw_logits(tmp_path: Path) -> None:
    folder = make_tiny_cross_encoder(tmp_path, activation_fn="torch.nn.modules.linear.Identity")
    scores = CrossEncoderScorer(CrossEncoderSpec(source=str(folder))).score(QUERIES[0], SENTENCES)
    assert any(s < 0 or s > 1 for s in scores)  # sigmoid outputs would all lie in (0, 1)


def test_cross_encoder_cuts_document_past_max_length(tiny_ce_dir: Path) -> None:
    scorer = CrossEncoderScorer(CrossEncoderSpec(source=str(tiny_ce_dir), max_length=32))
    long_doc = " ".join(SENTENCES[:4])  # far past 32 tokens already
    short_query, long_query = QUERIES[0], " ".join(SENTENCES[4:8])

    same = scorer.score(short_query, [long_doc, long_doc + " " + SENTENCES[9]])
    assert same[0] == pytest.approx(same[1], abs=1e-6)  # batch rows may differ in the last float32 bits
    assert len(scorer.score(long_query, [long_doc])) == 1  # a query longer than the budget still scores


def test_trained_minilm_ranks_relevant_document_above_irrelevant(minilm: BiEncoderScorer) -> None:
    relevant, irrelevant = minilm.score(
        "What causes scurvy?",
        ["Scurvy is caused by a lack of vitamin C in the diet.", "The stock market closed higher on Friday."],
    )
    assert relevant > irrelevant + 0.2


def test_bi_encoder_reads_mean_pooling_and_trained_length_from_folder(minilm: BiEncoderScorer) -> None:
    assert minilm.pooling == "mean"
    assert minilm.max_length == 256  # sentence_bert_config.json caps the spec's default 512


def test_empty_document_list_scores_nothing(minilm: BiEncoderScorer, tiny_ce_dir: Path) -> None:
    assert minilm.score("anything", []) == []
    assert CrossEncoderScorer(CrossEncoderSpec(source=str(tiny_ce_dir))).score("q", []) == []


def test_count_tokens_counts_text_without_special_tokens(minilm: BiEncoderScorer) -> None:
    assert minilm.count_tokens(["vitamin c", " ".join(["word"] * 1000), ""]) == [2, 1000, 0]  # not truncated
    assert minilm.count_tokens([]) == []


def test_encoded_pairs_keep_about_four_bytes_a_token_while_they_wait(tiny_ce_dir: Path) -> None:
    # The engine holds every queued search's encodings: lists of Python ints would take 36+ bytes a token.
    scorer = CrossEncoderScorer(CrossEncoderSpec(source=str(tiny_ce_dir)))
    docs = [" ".join(f"w{i}x{j}" for j in range(60)) for i in range(100)]
    gc.collect()
    tracemalloc.start()
    try:
        pairs = scorer.encode_pairs(["a query"] * len(docs), docs)
        gc.collect()
        held, _ = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    tokens = sum(pair.tokens for pair in pairs)
    assert tokens > 10_000
    assert held / tokens < 12  # input_ids and token_type_ids, 4 bytes each, plus small per-pair objects


@pytest.mark.parametrize(
    ("config", "expected"),
    [
        (None, "mean"),
        ({"pooling_mode": "cls"}, "cls"),
        ({"pooling_mode": ["lasttoken"]}, "lasttoken"),
        ({"pooling_mode_cls_token": True, "pooling_mode_mean_tokens": False}, "cls"),
        ({"pooling_mode_mean_tokens": True}, "mean"),
    ],
)
def test_pooling_mode_read_from_new_and_legacy_configs(config: dict | None, expected: str) -> None:
    assert pooling_mode(config) == expected


def test_unsupported_pooling_mode_is_a_load_error() -> None:
    with pytest.raises(ModelLoadError, match="max"):
        pooling_mode({"pooling_mode_max_tokens": True})


def test_cls_and_lasttoken_pooling_find_tokens_under_left_and_right_padding() -> None:
    hidden = torch.arange(8, dtype=torch.float32).view(2, 4, 1)  # token i of row r has value 4r + i
    right_padded = torch.tensor([[1, 1, 0, 0], [1, 1, 1, 1]])
    left_padded = torch.tensor([[0, 0, 1, 1], [1, 1, 1, 1]])

    assert pool(hidden, right_padded, "cls").flatten().tolist() == [0.0, 4.0]
    assert pool(hidden, right_padded, "lasttoken").flatten().tolist() == [1.0, 7.0]
    assert pool(hidden, left_padded, "cls").flatten().tolist() == [2.0, 4.0]
    assert pool(hidden, left_padded, "lasttoken").flatten().tolist() == [3.0, 7.0]
    assert pool(hidden, right_padded, "mean").flatten().tolist() == [0.5, 5.5]


def test_package_source_resolves_to_the_model_folder_inside_the_package() -> None:
    import importlib

    folder = Path(resolve_source(MINILM_SOURCE))
    assert folder == importlib.import_module(MINILM_PACKAGE).get_model_path()
    assert (folder / "config.json").is_file() and (folder / "model.safetensors").is_file()


def test_local_folder_and_hub_id_sources_are_left_as_is(tiny_ce_dir: Path) -> None:
    assert resolve_source(str(tiny_ce_dir)) == str(tiny_ce_dir)
    assert resolve_source("BAAI/bge-reranker-base") == "BAAI/bge-reranker-base"


@pytest.mark.parametrize("source", ["package:no_such_model_package", "/no/such/model/folder", "./missing-model"])
def test_missing_source_raises_model_load_error_naming_it(source: str) -> None:
    with pytest.raises(ModelLoadError, match=re.escape(source)):
        load_scorer("m", CrossEncoderSpec(source=source))


def test_folder_without_a_model_raises_model_load_error_naming_it(tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError, match=re.escape(str(tmp_path)) + ".*no config.json"):
        load_scorer("m", BiEncoderSpec(source=str(tmp_path)))


def test_folder_without_weights_raises_model_load_error_with_the_cause(tmp_path: Path, tiny_ce_dir: Path) -> None:
    (tmp_path / "config.json").write_bytes((tiny_ce_dir / "config.json").read_bytes())
    with pytest.raises(ModelLoadError, match=re.escape(str(tmp_path)) + ".*OSError"):
        load_scorer("m", CrossEncoderSpec(source=str(tmp_path)))


def test_package_without_model_folder_raises_model_load_error() -> None:
    with pytest.raises(ModelLoadError, match="holds no model folder"):
        resolve_source("package:pytest")


def test_auto_device_picks_cpu_without_accelerators(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    assert pick_device("auto") == torch.device("cpu")


def test_auto_device_prefers_cuda_then_mps(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: True)
    assert pick_device("auto") == torch.device("mps")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert pick_device("auto") == torch.device("cuda")


def test_explicit_device_is_taken_as_written() -> None:
    assert pick_device("cuda:1") == torch.device("cuda", 1)
    with pytest.raises(ModelLoadError, match="nonsense"):
        pick_device("nonsense")


def test_load_scorer_picks_backend_by_spec_and_keeps_config_name(tiny_ce_dir: Path) -> None:
    scorer = load_scorer("my-reranker", CrossEncoderSpec(source=str(tiny_ce_dir)))
    assert isinstance(scorer, CrossEncoderScorer) and isinstance(scorer, Scorer)
    assert scorer.name == "my-reranker"


def test_threads_setting_is_applied_to_torch(tiny_ce_dir: Path) -> None:
    before = torch.get_num_threads()
    try:
        CrossEncoderScorer(CrossEncoderSpec(source=str(tiny_ce_dir), threads=1))
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)


def model_calls(scorer: BiEncoderScorer | CrossEncoderScorer, monkeypatch: pytest.MonkeyPatch) -> list[torch.Size]:
    """The input shape (inputs x padded length) of every model call the scorer makes from now on."""
    shapes: list[torch.Size] = []
    forward = scorer.model.forward

    def spy(*args: object, **kwargs: torch.Tensor) -> object:
        shapes.append(kwargs["input_ids"].shape)
        return forward(*args, **kwargs)

    monkeypatch.setattr(scorer.model, "forward", spy)
    return shapes


@pytest.mark.parametrize("backend", ["bi-encoder", "cross-encoder"])
def test_calls_are_cut_by_the_token_budget_and_scores_do_not_depend_on_the_cut(
    backend: str, tiny_ce_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    source = MINILM_SOURCE if backend == "bi-encoder" else str(tiny_ce_dir)
    whole = load_scorer("whole", SPEC_TYPES[backend](source=source))
    budget = 64  # three or four of SENTENCES per call
    cut = load_scorer("cut", whole.spec.model_copy(update={"max_batch_tokens": budget}))
    assert (whole.max_batch_tokens, cut.max_batch_tokens) == (CPU_BATCH_TOKENS, budget)
    shapes = model_calls(cut, monkeypatch)

    scores = cut.score(QUERIES[0], SENTENCES)

    assert scores == pytest.approx(whole.score(QUERIES[0], SENTENCES), abs=1e-5)
    assert sum(n for n, _ in shapes) == len(SENTENCES) + (backend == "bi-encoder")  # + the query
    assert len(shapes) > 3 and all(n * width <= budget for n, width in shapes)


def test_models_loaded_side_by_side_go_through_from_pretrained_one_at_a_time(
        tiny_ce_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # from_pretrained swaps class attributes (weight init, tying) for its duration and puts back what it found: two
    # at once can leave them swapped for good, and every later load then fails on meta tensors.
    from transformers import AutoModelForSequenceClassification, PreTrainedModel

    original_load = AutoModelForSequenceClassification.from_pretrained
    init_weights, tie_weights = PreTrainedModel.init_weights, PreTrainedModel.tie_weights
    inside, most_inside, lock = 0, 0, threading.Lock()
    another_came_in = threading.Event()

    def watched_load(*args: object, **kwargs: object) -> object:
        nonlocal inside, most_inside
        with lock:
            inside += 1
            most_inside = max(most_inside, inside)
            if inside > 1:
                another_came_in.set()
        another_came_in.wait(timeout=1)  # the other thread's load would come in meanwhile without the guard
        try:
            return original_load(*args, **kwargs)
        finally:
            with lock:
                inside -= 1

    monkeypatch.setattr(AutoModelForSequenceClassification, "from_pretrained", watched_load)
    with ThreadPoolExecutor(2) as pool:
        scorers = list(pool.map(lambda _: CrossEncoderScorer(CrossEncoderSpec(source=str(tiny_ce_dir))), range(2)))

    assert most_inside == 1
    assert PreTrainedModel.init_weights is init_weights and PreTrainedModel.tie_weights is tie_weights
    assert scorers[0].score("q", SENTENCES[:3]) == scorers[1].score("q", SENTENCES[:3])
