"""The rerank API's steps without a network: requests validated into engine calls, results ranked and shaped as
Cohere and TEI shape them, and every failure in the API's own error dialect."""
import asyncio

import orjson
import pytest

from proxy.config import parse_config
from proxy.rerank_api import (
    ApiError,
    CohereRequest,
    TeiRequest,
    cohere_body,
    cohere_call,
    ranked,
    resolve_model,
    score_call,
    tei_body,
    tei_call,
)
from rerank.engine import ModelLoading, Overloaded

MODELS = {"small": {"backend": "bi-encoder", "source": "org/small-model"},
          "large": {"backend": "bi-encoder", "source": "org/large-model"}}
CONFIG = parse_config({"models": MODELS, "rerank_api": {"max_documents": 3, "max_tokens_per_doc": 4}})


def cohere(**fields):
    return CohereRequest.model_validate({"query": "q", "documents": ["a"], **fields})


def test_a_model_is_named_by_its_key_or_by_the_source_it_loads():
    assert resolve_model(CONFIG, "large") == "large"
    assert resolve_model(CONFIG, "org/large-model") == "large"


def test_a_call_that_names_no_model_gets_the_default_or_the_first():
    assert resolve_model(CONFIG, None) == "small"
    config = parse_config({"models": MODELS, "rerank_api": {"default_model": "large"}})
    assert resolve_model(config, None) == "large"


def test_an_unknown_model_is_a_404_that_lists_the_served_ones():
    with pytest.raises(ApiError) as err:
        resolve_model(CONFIG, "rerank-v3.5")
    assert err.value.status == 404 and "small, large" in err.value.message


def test_a_default_model_that_does_not_exist_stops_the_config():
    with pytest.raises(Exception, match="rerank_api.default_model: unknown model 'nope'"):
        parse_config({"models": MODELS, "rerank_api": {"default_model": "nope"}})


def test_documents_are_strings_or_objects_read_by_text_or_by_rank_fields():
    call = cohere_call(CONFIG, cohere(documents=["one two", {"text": "three", "id": 7}]))
    assert call.texts == ["one two", "three"]
    call = cohere_call(CONFIG, cohere(documents=[{"title": "T", "body": "B", "x": 1}], rank_fields=["title", "body"]))
    assert call.texts == ["T\nB"]


def test_an_object_without_text_or_rank_fields_is_a_400_naming_it():
    with pytest.raises(ApiError) as err:
        cohere_call(CONFIG, cohere(documents=["fine", {"title": "no text"}]))
    assert err.value.status == 400 and "documents[1]" in err.value.message


def test_each_text_is_cut_to_max_tokens_per_doc_or_the_configured_budget():
    assert cohere_call(CONFIG, cohere(documents=["a b c d e f"])).texts == ["a b c d"]
    assert cohere_call(CONFIG, cohere(documents=["a b c d e f"], max_tokens_per_doc=2)).texts == ["a b"]


def test_tei_truncation_direction_left_keeps_the_end_of_each_text():
    request = TeiRequest.model_validate({"query": "q", "texts": ["a b c d e f"], "truncation_direction": "Left"})
    assert tei_call(CONFIG, request).texts == ["c d e f"]


@pytest.mark.parametrize("query, documents, status", [
    ("  ", ["a"], 400),
    ("q", [], 400),
    ("q", ["a", "b", "c", "d"], 413),
])
def test_empty_queries_no_documents_and_too_many_documents_are_refused(query, documents, status):
    with pytest.raises(ApiError) as err:
        cohere_call(CONFIG, cohere(query=query, documents=documents))
    assert err.value.status == status


def test_max_chunks_per_doc_turns_chunking_on_with_that_many_chunks():
    call = cohere_call(CONFIG, cohere(max_chunks_per_doc=2))
    assert call.chunking is not None and call.chunking.max_chunks == 2
    assert cohere_call(CONFIG, cohere()).chunking is None


def test_results_are_best_first_and_equal_scores_keep_the_documents_order():
    assert ranked([0.1, 0.9, 0.5, 0.9], None) == [(1, 0.9), (3, 0.9), (2, 0.5), (0, 0.1)]
    assert ranked([0.1, 0.9, 0.5], 2) == [(1, 0.9), (2, 0.5)]


def test_the_cohere_answer_carries_index_score_documents_when_asked_and_the_api_version():
    request = cohere(documents=["plain", {"text": "rich", "id": 7}], return_documents=True)
    body = orjson.loads(cohere_body("cohere-v1", request, [(1, 0.75), (0, 0.25)], 2))
    assert body["results"] == [
        {"index": 1, "relevance_score": 0.75, "document": {"text": "rich", "id": 7}},
        {"index": 0, "relevance_score": 0.25, "document": {"text": "plain"}},
    ]
    assert body["meta"] == {"api_version": {"version": "1"}, "billed_units": {"search_units": 1}}
    assert isinstance(body["id"], str) and len(body["id"]) == 36
    v2 = orjson.loads(cohere_body("cohere-v2", cohere(), [(0, 0.5)], 1))
    assert v2["results"] == [{"index": 0, "relevance_score": 0.5}] and v2["meta"]["api_version"]["version"] == "2"


def test_the_tei_answer_is_a_list_of_ranks_with_text_when_asked():
    request = TeiRequest.model_validate({"query": "q", "texts": ["x", "y"], "return_text": True})
    assert orjson.loads(tei_body(request, [(1, 2.0), (0, 1.0)])) == [
        {"index": 1, "score": 2.0, "text": "y"}, {"index": 0, "score": 1.0, "text": "x"}]


def test_the_tei_request_and_answer_have_the_fields_of_teis_openapi_schema():
    """TEI's published OpenAPI (docs/openapi.json, 1.6): RerankRequest requires query (string) and texts (array of
    string), and has raw_scores, return_text, truncate (booleans, default false) and truncation_direction ("Left",
    "Right"; default "Right"); its answer is an array of Rank: index (integer >= 0) and score (number) required,
    text (nullable string) when return_text; errors are ErrorResponse {error, error_type}."""
    fields = TeiRequest.model_fields
    assert set(fields) == {"query", "texts", "raw_scores", "return_text", "truncate", "truncation_direction"}
    assert fields["query"].is_required() and fields["texts"].is_required()
    assert all(fields[name].default is False for name in ("raw_scores", "return_text", "truncate"))
    assert fields["truncation_direction"].default == "Right"
    TeiRequest.model_validate({"query": "q", "texts": ["t"], "truncation_direction": "Left"})
    plain = orjson.loads(tei_body(TeiRequest.model_validate({"query": "q", "texts": ["t"]}), [(0, 1.5)]))
    assert plain == [{"index": 0, "score": 1.5}]


class Engine:
    def __init__(self, result):
        self.result = result

    async def score(self, model, query, texts, timeout_s):
        if isinstance(self.result, BaseException):
            raise self.result
        return self.result[: len(texts)]


CALL = cohere_call(CONFIG, cohere(documents=["a", "b"]))


@pytest.mark.parametrize("result, status, kind", [
    (Overloaded("full"), 429, "overloaded"),
    (ModelLoading("loading"), 503, "unhealthy"),
    (TimeoutError(), 504, "backend"),
    ([0.5, None], 504, "backend"),
    (RuntimeError("boom"), 500, "backend"),
])
def test_a_call_is_all_or_nothing_and_model_trouble_has_its_own_status(result, status, kind):
    with pytest.raises(ApiError) as err:
        asyncio.run(score_call(Engine(result), CALL, 1.0))
    assert (err.value.status, err.value.kind) == (status, kind)


def test_every_document_scored_gives_every_score_in_order():
    assert asyncio.run(score_call(Engine([0.5, 0.25]), CALL, 1.0)) == [0.5, 0.25]
