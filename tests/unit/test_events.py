"""The events endpoint's body: one event, a JSON array or NDJSON, taken whole or refused whole."""
import orjson
import pytest

from proxy.config import Events
from proxy.events import MAX_EVENTS, EventError, events_reply, parse_events, record_events
from proxy.experiments import ExperimentBook
from proxy.interleaving import team_draft


def book_with_search():
    book = ExperimentBook(Events())
    book.served("s1", "e", team_draft([("i", "1"), ("i", "2")], [("i", "2"), ("i", "1")], seed=3))
    return book


def test_one_object_an_array_and_ndjson_are_read_alike():
    one = b'{"search_id": "s1", "doc_id": "1"}'
    assert parse_events(one) == parse_events(b"[" + one + b"]") == parse_events(one + b"\n\n")
    assert len(parse_events(one + b"\n" + one + b"\r\n" + one)) == 3


def test_type_defaults_to_click_and_extra_keys_are_ignored():
    event = parse_events(b'{"search_id": "s1", "doc_id": "1", "position": 3, "ts": 123}')[0]
    assert (event.type, event.index) == ("click", None)


@pytest.mark.parametrize("body, message", [
    (b"", "no event"),
    (b"not json", "not JSON"),
    (b'{"search_id": "s1"}', "event 1: doc_id"),
    (b'{"search_id": "s1", "doc_id": "1"}\n{"doc_id": 2}', "event 2: search_id"),
    (b'[1]', "event 1"),
])
def test_a_bad_event_refuses_the_batch_naming_it(body, message):
    with pytest.raises(EventError, match=message):
        parse_events(body)


def test_a_batch_has_a_size_limit():
    line = b'{"search_id": "s", "doc_id": "1"}\n'
    with pytest.raises(EventError, match="at most"):
        parse_events(line * (MAX_EVENTS + 1))


def test_only_credited_types_are_attributed():
    book = book_with_search()
    events = parse_events(b'{"search_id": "s1", "doc_id": "1", "type": "view"}\n'
                          b'{"search_id": "s1", "doc_id": "1"}\n{"search_id": "s9", "doc_id": "1"}')
    assert record_events(events, book, Events()) == {
        "accepted": 3, "attributed": 1, "unknown_search": 1, "not_served": 0, "not_credited": 1}
    assert book.tallies["e"].clicked_searches == 1
    assert record_events(events[:1], book_with_search(), Events(credit_types=["view"]))["attributed"] == 1


def test_reply_is_an_es_style_error_for_a_bad_or_oversized_batch():
    bad = events_reply(b"{", book_with_search(), Events())
    assert bad.status == 400 and orjson.loads(bad.body)["error"]["type"] == "rerank_proxy_events_exception"
    assert events_reply(None, book_with_search(), Events()).status == 413
    ok = events_reply(b'{"search_id": "s1", "doc_id": "2"}', book_with_search(), Events())
    assert ok.status == 200 and orjson.loads(ok.body)["attributed"] == 1
