import os

import pytest

from rerank.bi_encoder import BiEncoderScorer
from rerank.spec import ModelSpec
from tests.models import MINILM_SOURCE

os.environ["HF_HUB_OFFLINE"] = "1"
DOCS = ["Vitamin D and bone density.", "Smoking causes lung cancer.", "A short one.", "Vitamin D and bone density."]


@pytest.fixture(scope="module")
def scorer():
    return BiEncoderScorer(ModelSpec(backend="bi-encoder", source=MINILM_SOURCE, cache_entries=3))


def counting(scorer, monkeypatch):
    embedded = []
    original = scorer._embed

    def spy(texts):
        embedded.extend(texts)
        return original(texts)

    monkeypatch.setattr(scorer, "_embed", spy)
    return embedded


def test_each_document_is_embedded_once_across_queries(scorer, monkeypatch):
    scorer._cache.clear()
    embedded = counting(scorer, monkeypatch)
    first = scorer.score("vitamin d", DOCS)
    second = scorer.score("vitamin d", DOCS)
    assert first == pytest.approx(second, abs=1e-6)
    assert first[0] == pytest.approx(first[3], abs=1e-6)
    # the query, the new documents once each (the duplicate too), then only the query again on the second call
    assert embedded == ["vitamin d", "Vitamin D and bone density.", "Smoking causes lung cancer.", "A short one.",
                        "vitamin d"]


def test_cached_scores_equal_uncached_ones_and_the_cache_is_bounded(scorer):
    scorer._cache.clear()
    cold = scorer.score("lung cancer", DOCS)
    warm = scorer.score("lung cancer", DOCS)
    assert cold == pytest.approx(warm, abs=1e-6)
    scorer.score("x", [f"document {i}" for i in range(10)])
    assert len(scorer._cache) == 3
