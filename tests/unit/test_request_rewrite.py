from proxy.decide import Page
from proxy.request_rewrite import rewrite_search


def test_window_is_fetched_from_rank_zero_and_the_page_is_kept_for_later():
    upstream, view = rewrite_search({"query": {}, "from": 10, "size": 5}, [], window=50, needed_fields=["title"])
    assert (upstream.body["from"], upstream.body["size"]) == (0, 50)
    assert view.page == Page(10, 5)


def test_a_page_reaching_past_the_window_fetches_up_to_its_end():
    upstream, _ = rewrite_search({"from": 40, "size": 30}, [], window=50, needed_fields=None)
    assert upstream.body["size"] == 70


def test_url_page_and_view_parameters_move_to_the_body_and_the_view():
    params = [("from", "3"), ("size", "4"), ("filter_path", "hits.hits._id"), ("typed_keys", "true"),
              ("_source_includes", "title")]
    upstream, view = rewrite_search({}, params, window=20, needed_fields=["text"])
    assert upstream.params == [("typed_keys", "true")]
    assert (upstream.body["from"], upstream.body["size"]) == (0, 20)
    assert view.page == Page(3, 4) and view.filter_path == "hits.hits._id"
    assert upstream.body["_source"] == {"includes": ["text", "title"]}


def test_full_source_requests_are_left_alone():
    upstream, view = rewrite_search({"query": {}}, [], window=10, needed_fields=["title"])
    assert "_source" not in upstream.body and not view.source_widened


def test_source_false_is_widened_to_the_rerank_fields_and_remembered():
    upstream, view = rewrite_search({"_source": False}, [], window=10, needed_fields=["title", "text"])
    assert upstream.body["_source"] == {"includes": ["text", "title"]}
    assert view.source_widened and not view.source.enabled


def test_excludes_need_the_whole_source_upstream():
    upstream, _ = rewrite_search({"_source": {"excludes": ["text"]}}, [], window=10, needed_fields=["title"])
    assert upstream.body["_source"] is True


def test_flattening_the_whole_source_widens_to_everything():
    upstream, _ = rewrite_search({"_source": ["title"]}, [], window=10, needed_fields=None)
    assert upstream.body["_source"] is True


def test_the_clients_body_is_not_mutated():
    body = {"from": 5, "size": 5, "_source": False}
    rewrite_search(body, [], window=10, needed_fields=["t"])
    assert body == {"from": 5, "size": 5, "_source": False}
