import pytest

from proxy.config import RerankSettings
from proxy.decide import Page, decide, requested_page, template_order_ruled_out

SETTINGS = RerankSettings(window=50)


def reason(body=None, params=None, settings=SETTINGS, force=None, query="q"):
    d = decide(body, params or {}, settings, force=force, query_text=query)
    return None if d.rerank else d.reason


def test_plain_search_is_reranked():
    assert reason({"query": {"match": {"t": "x"}}}) is None


@pytest.mark.parametrize(
    "body,params,expected",
    [
        ({"size": 0}, {}, "size-0"),
        ({}, {"size": "0"}, "size-0"),
        ({"sort": [{"date": "desc"}]}, {}, "sort"),
        ({"sort": ["_score", "date"]}, {}, "sort"),
        ({"sort": [{"_score": {"order": "asc"}}]}, {}, "sort"),
        ({}, {"sort": "date:asc"}, "sort"),
        ({}, {"scroll": "1m"}, "scroll"),
        ({"search_after": [1]}, {}, "search-after"),
        ({"pit": {"id": "x"}}, {}, "pit"),
        ({"from": 50}, {}, "page-past-window"),
        ({"from": "x"}, {}, "bad-page"),
        ({"rescore": {"query": {"rescore_query": {"match_all": {}}}}}, {}, "rescore"),
        ({"explain": True}, {}, "explain"),
        ({}, {"explain": ""}, "explain"),  # `?explain` alone means true to the cluster
        ({"profile": True}, {}, "profile"),
        ({"stored_fields": "_none_"}, {}, "stored-fields-none"),
        ({"stored_fields": ["_none_"]}, {}, "stored-fields-none"),
        ({}, {"stored_fields": "_none_"}, "stored-fields-none"),
    ],
)
def test_searches_reranking_would_change_are_skipped_with_a_reason(body, params, expected):
    assert reason(body, params) == expected


@pytest.mark.parametrize("sort", ["_score", ["_score"], [{"_score": "desc"}], [{"_score": {"order": "desc"}}]])
def test_an_explicit_score_sort_is_still_reranked(sort):
    assert reason({"sort": sort}) is None


def test_header_off_wins_over_everything():
    assert reason({}, force="off") == "header-off"


def test_header_on_overrides_a_disabled_index_but_not_semantics():
    disabled = RerankSettings(enabled=False)
    assert reason({}, settings=disabled) == "disabled"
    assert reason({}, settings=disabled, force="on") is None
    assert reason({"size": 0}, settings=disabled, force="on") == "size-0"


def test_no_query_text_is_skipped():
    assert reason({}, query=None) == "no-query-text"


def test_url_page_parameters_win_over_the_body_as_in_elasticsearch():
    assert requested_page({"from": 5, "size": 3}, {"size": "7"}) == Page(5, 7)
    assert requested_page({}, {}) == Page(0, 10)


@pytest.mark.parametrize("value", [2**31, 10**20, 1e20, "2147483648"])
def test_a_page_value_past_a_java_int_is_a_bad_page(value):
    assert requested_page({"size": value}, {}) is None
    assert requested_page({}, {"from": str(value)}) is None
    assert requested_page({"size": 2**31 - 1}, {}) == Page(0, 2**31 - 1)


@pytest.mark.parametrize("body,params", [
    ({"explain": False, "profile": False, "rescore": []}, {}),
    ({"explain": True}, {"explain": "false"}),  # the URL wins, as on the cluster
    ({"stored_fields": ["title"]}, {}),
])
def test_options_that_leave_the_order_to_relevance_are_still_reranked(body, params):
    assert reason(body, params) is None


@pytest.mark.parametrize("source,expected", [
    ({"query": {"match": {"t": "{{q}}"}}, "sort": [{"n": "asc"}]}, "sort"),
    ({"query": {"match": {"t": "{{q}}"}}, "sort": ["_score"]}, None),
    ('{"query":{"match":{"t":"{{q}}"}},"rescore":{"query":{}}}', "rescore"),  # a JSON string, read as JSON
    ('{"query":{"match":{"t":"{{q}}"}}{{#s}},"sort":["_score"]{{/s}}}', "sort"),  # mustache: any sort it names
    ('{"query":{"match":{"t":"{{q}}"}}{{#a}},"search_after":{{a}}{{/a}}}', "search-after"),
    ('{"query":{"match":{"t":"{{q}}"}}{{#x}},"size":{{x}}{{/x}}}', None),
    (None, None),  # a stored template (`id`): not the proxy's to read
])
def test_an_inline_templates_own_options_rule_reranking_out(source, expected):
    assert template_order_ruled_out(source) == expected
