import os

import pytest

from rerank.bi_encoder import BiEncoderScorer
from rerank.spec import BiEncoderSpec
from rerank_proxy_tools.models import MINILM_SOURCE

os.environ["HF_HUB_OFFLINE"] = "1"
DOCS = ["Vitamin D and bone density.", "Smoking causes lung cancer.", "A short one.", "Vitamin D and bone density."]


@pytest.fixture(scope="module")
def scorer():
    return BiEncoderScorer(BiEncoderSpec(source=MINILM_SOURCE, cache_entries=3))


@pytest.fixture(scope="module")
def roomy():
    return BiEncoderScorer(BiEncoderSpec(source=MINILM_SOURCE, cache_entries=100))


def counting(scorer, monkeypatch):
    embedded = []
    original = scorer._embed

    def spy(inputs):
        embedded.extend(scorer.tokenizer.decode(i.input_ids, skip_special_tokens=True) for i in inputs)
        return original(inputs)

    monkeypatch.setattr(scorer, "_embed", spy)
    return embedded


def test_each_text_query_or_document_is_embedded_once_across_searches(roomy, monkeypatch):
    embedded = counting(roomy, monkeypatch)
    first = roomy.score("vitamin d", DOCS)
    again = roomy.score("vitamin d", DOCS)
    other = roomy.score("smoking", DOCS[1:3])
    assert first == pytest.approx(again, abs=1e-6)
    assert first[0] == pytest.approx(first[3], abs=1e-6)
    # the query and the new documents once each (the duplicate too), then nothing, then only the new query
    assert embedded == ["vitamin d", "vitamin d and bone density.", "smoking causes lung cancer.", "a short one.",
                        "smoking"]
    assert other == pytest.approx(roomy.score_pairs(["smoking"] * 2, DOCS[1:3]), abs=1e-6)


def test_cached_scores_equal_uncached_ones_and_the_cache_is_bounded(scorer):
    scorer._cache.clear()
    cold = scorer.score("lung cancer", DOCS)
    warm = scorer.score("lung cancer", DOCS)
    assert cold == pytest.approx(warm, abs=1e-6)
    scorer.score("x", [f"document {i}" for i in range(10)])
    assert len(scorer._cache) == 3


def test_a_text_cached_when_encoded_but_evicted_before_scoring_is_embedded_then(scorer):
    scorer._cache.clear()
    cold = scorer.score("vitamin d", DOCS[:2])
    pairs = scorer.encode_pairs(["vitamin d"] * 2, DOCS[:2])
    assert [pair.doc.tokenized for pair in pairs] == [None, None] and [pair.tokens for pair in pairs] == [0, 0]
    scorer._cache.clear()  # evicted meanwhile by other searches
    assert scorer.score_encoded(pairs) == pytest.approx(cold, abs=1e-6)
