"""Experiments, the state side: which searches they take, and how clicks on served pages become their tallies."""
import pytest

from proxy.config import ConfigError, Events, parse_config
from proxy.experiments import ExperimentBook, assign, search_id, session_key
from proxy.interleaving import Outcome, team_draft

MODELS = {"m": {"backend": "bi-encoder", "source": "x"}}


def config(**experiments):
    return parse_config({"models": MODELS, "variants": {"model": {"enabled": True}},
                         "experiments": experiments})


class Clock:
    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now


def served_list():
    """A team-draft page whose first document A picked (seed chosen so), then B's, ..."""
    return team_draft([("i", "1"), ("i", "2"), ("i", "3")], [("i", "3"), ("i", "2"), ("i", "1")], seed=1)


def test_experiment_must_name_known_variants_and_two_different_ones():
    with pytest.raises(ConfigError, match="experiments.e.b: unknown variant 'nope'"):
        config(e={"a": "control", "b": "nope", "indices": ["*"]})
    with pytest.raises(ConfigError, match="same variant"):
        config(e={"a": "model", "b": "model", "indices": ["*"]})
    with pytest.raises(ConfigError, match="indices"):
        config(e={"a": "control", "b": "model"})


def test_experiment_matches_only_searches_whose_every_index_it_names():
    experiment = config(e={"a": "control", "b": "model", "indices": ["docs-*"]}).experiments["e"]
    assert experiment.matches("docs-1") and experiment.matches("docs-1,docs-2")
    assert not experiment.matches("docs-1,logs") and not experiment.matches(None)
    assert config(e={"a": "control", "b": "model", "indices": "*"}).experiments["e"].matches(None)


def test_session_key_ignores_paging_and_tells_sessions_and_queries_apart():
    body = {"query": {"match": {"t": "x"}}}
    page1 = session_key("docs", {**body, "from": 0, "size": 10}, [("size", "10")], "user-1")
    page2 = session_key("docs", {**body, "from": 10, "size": 10}, [("from", "10")], "user-1")
    assert page1 == page2
    assert session_key("docs", body, [], "user-2") != page1
    assert session_key("docs", {"query": {"match": {"t": "y"}}}, [], "user-1") != page1
    assert session_key("other", body, [], "user-1") != page1


def test_traffic_share_is_what_the_config_says():
    cfg = config(e={"a": "control", "b": "model", "indices": ["*"], "traffic": 30})
    taken = sum(assign(cfg, "docs", session_key("docs", {"q": i}, [], None)) == "e" for i in range(4000))
    assert 1080 < taken < 1320  # 30% of 4000, within 5 standard deviations


def test_overlapping_experiments_share_the_traffic_in_config_order():
    cfg = config(first={"a": "control", "b": "model", "indices": ["*"], "traffic": 50},
                 second={"a": "model", "b": "control", "indices": ["*"], "traffic": 50})
    names = [assign(cfg, "docs", session_key("docs", {"q": i}, [], None)) for i in range(2000)]
    assert set(names) == {"first", "second"}
    assert 850 < names.count("first") < 1150


def test_zero_traffic_takes_nothing():
    cfg = config(e={"a": "control", "b": "model", "indices": ["*"], "traffic": 0})
    assert all(assign(cfg, "docs", str(i)) is None for i in range(200))


def test_search_id_keeps_a_well_formed_client_id_and_makes_new_ones_otherwise():
    assert search_id("abcdef12-34") == "abcdef12-34"
    assert search_id("short") != "short" and search_id("x y z 1 2 3 4 5") != "x y z 1 2 3 4 5"
    assert len({search_id(None) for _ in range(100)}) == 100


def test_a_click_on_a_teams_document_makes_that_team_win_and_a_second_can_make_it_a_tie():
    book = ExperimentBook(Events())
    merged = served_list()
    assert book.served("s1", "e", merged)
    first, second = merged.docs[0], next(d for d, t in zip(merged.docs, merged.teams) if t != merged.teams[0])
    assert book.credit("s1", first[1], None) == "attributed"
    tally = book.tallies["e"]
    assert (tally.searches, tally.wins_a + tally.wins_b, tally.ties) == (1, 1, 0)
    assert book.credit("s1", second[1], "i") == "attributed"
    assert (book.tallies["e"].ties, book.tallies["e"].clicked_searches) == (1, 1)


def test_clicks_on_unknown_searches_or_unserved_documents_change_nothing():
    book = ExperimentBook(Events())
    book.served("s1", "e", served_list().page(0, 1))
    assert book.credit("nope", "1", None) == "unknown-search"
    assert book.credit("s1", "missing", None) == "not-served"
    assert book.credit("s1", book.searches["s1"].interleaving.docs[0][1], "other-index") == "not-served"
    assert book.tallies["e"].clicked_searches == 0


def test_a_further_page_of_a_served_search_is_not_counted_again_but_its_documents_take_clicks():
    book = ExperimentBook(Events())
    merged = served_list()
    assert book.served("s1", "e", merged.page(0, 1))
    assert not book.served("s1", "e", merged.page(0, 3))
    assert book.tallies["e"].searches == 1
    assert book.credit("s1", merged.docs[2][1], None) == "attributed"


def test_served_searches_expire_after_their_ttl_and_the_outcome_stays_counted():
    clock = Clock()
    book = ExperimentBook(Events(ttl_s=60), clock=clock)
    merged = served_list()
    book.served("s1", "e", merged)
    book.credit("s1", merged.docs[0][1], None)
    clock.now = 61
    assert book.credit("s1", merged.docs[1][1], None) == "unknown-search"
    assert book.tallies["e"].clicked_searches == 1


def test_the_book_holds_at_most_max_searches():
    book = ExperimentBook(Events(max_searches=3))
    for i in range(10):
        book.served(f"s{i}", "e", served_list())
    assert len(book.searches) == 3 and book.tallies["e"].searches == 10
    assert book.credit("s0", "1", None) == "unknown-search"


def test_summary_shows_each_configured_experiment_and_its_verdict():
    cfg = config(e={"a": "control", "b": "model", "indices": ["docs"], "method": "balanced"})
    book = ExperimentBook(cfg.events)
    summary = book.summary(cfg)
    assert summary["experiments"]["e"]["method"] == "balanced"
    assert summary["experiments"]["e"]["searches"] == 0 and summary["experiments"]["e"]["p_value"] == 1.0
    book.served("s1", "gone", served_list())
    assert book.summary(cfg)["experiments"]["gone"]["configured"] is False
    assert book.summary(cfg)["served_searches"] == {"searches": 1, "max_searches": 50_000, "ttl_s": 3600.0}


def test_outcome_is_none_until_a_credited_click():
    book = ExperimentBook(Events())
    book.served("s1", "e", served_list())
    assert book.searches["s1"].outcome is Outcome.NONE
