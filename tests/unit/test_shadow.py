"""Shadow scoring: a second model scores a sample of the served windows after the answer, never in a client's way.

The served model and the shadow are real engine workers over the test scorer (`tests/scorers.py`), which can hold
a call until released: a held shadow is a shadow model as slow as one likes, without a clock."""
import asyncio

import pytest
from prometheus_client import REGISTRY

from proxy.config import ConfigError, parse_config
from proxy.resolve import IndexResolver
from proxy.search import RequestOptions, finish, plan_search
from proxy.shadow import ShadowScoring
from rerank.engine import ScoringEngine
from tests.scorers import Overlap

OPTIONS = RequestOptions(force=None, variant="control", query_override=None, explain=False)


def config(sample=1.0, shadow_model="shadow"):
    return parse_config({
        "models": {"served": {"backend": "cross-encoder", "source": "x"},
                   shadow_model: {"backend": "cross-encoder", "source": "y"}},
        "defaults": {"window": 5, "fusion": {"mode": "replace"}, "text": {"fields": ["t"]},
                     "shadow": {"model": shadow_model, "sample": sample}},
    })


def response():
    words = ["alpha", "beta gamma", "alpha beta", "gamma", "alpha beta gamma"]
    return {"took": 1, "hits": {"hits": [{"_id": str(i), "_score": 5.0 - i, "_source": {"t": w}}
                                         for i, w in enumerate(words)]}}


async def no_aliases(name):
    return []


class Setup:
    def __init__(self, cfg, max_in_flight=2):
        self.cfg = cfg
        self.scorers = {name: Overlap() for name in cfg.models}
        self.engine = ScoringEngine(cfg.models, loader=lambda name, spec: self.scorers[name])
        self.shadows = ShadowScoring(max_in_flight)
        self.results = []

    async def start(self):
        await self.engine.start()
        self.resolver = IndexResolver(self.cfg, no_aliases)
        return self

    async def search(self):
        """One served search, its shadow offered as the endpoint offers it; whether the shadow started."""
        plan = await plan_search(self.cfg, self.resolver, "docs", {"query": {"match": {"t": "alpha beta"}}}, [],
                                 OPTIONS)
        outcome = await finish(plan, response(), self.engine, OPTIONS, opensearch=False)
        assert outcome.status == "reranked"
        return self.shadows.offer(self.engine, plan, outcome.scored, self.results.append)


def shadow_count(model, result):
    return REGISTRY.get_sample_value("rerank_proxy_shadow_searches_total", {"model": model, "result": result}) or 0


async def test_a_sampled_search_is_scored_by_the_shadow_and_its_agreement_recorded():
    setup = await Setup(config(shadow_model="shadow-a")).start()
    before = shadow_count("shadow-a", "scored")
    assert await setup.search()
    await setup.shadows.close_when_idle()
    assert shadow_count("shadow-a", "scored") == before + 1
    (result,) = setup.results
    assert result.model == "shadow-a" and sorted(result.order) == [0, 1, 2, 3, 4]
    assert result.agreement.kendall_tau == 1.0  # the same scorer: the same order
    await setup.engine.close()


async def test_clients_are_served_while_a_slow_shadow_is_still_scoring():
    setup = await Setup(config(shadow_model="shadow-slow"), max_in_flight=1).start()
    setup.scorers["shadow-slow"].hold()
    assert await setup.search()
    await setup.scorers["shadow-slow"].busy()  # the shadow is inside the model and stays there
    for _ in range(5):  # each client search is answered, the shadow still held
        await asyncio.wait_for(setup.search(), 10)
    assert setup.results == []
    setup.scorers["shadow-slow"].release()
    await setup.shadows.close_when_idle()
    assert len(setup.results) == 1
    await setup.engine.close()


async def test_shadow_work_over_the_limit_is_dropped_not_queued():
    setup = await Setup(config(shadow_model="shadow-full"), max_in_flight=1).start()
    setup.scorers["shadow-full"].hold()
    before = shadow_count("shadow-full", "dropped-full")
    assert await setup.search()
    await setup.scorers["shadow-full"].busy()
    assert [await setup.search() for _ in range(3)] == [False, False, False]
    assert shadow_count("shadow-full", "dropped-full") == before + 3
    assert setup.engine.in_flight() == 1  # the one shadow running, nothing waiting behind it
    setup.scorers["shadow-full"].release()
    await setup.shadows.close_when_idle()
    assert len(setup.results) == 1
    await setup.engine.close()


async def test_no_shadow_starts_while_a_client_search_waits_for_a_model():
    setup = await Setup(config(shadow_model="shadow-busy")).start()
    plan = await plan_search(setup.cfg, setup.resolver, "docs", {"query": {"match": {"t": "alpha"}}}, [], OPTIONS)
    served = await finish(plan, response(), setup.engine, OPTIONS, opensearch=False)
    setup.scorers["served"].hold()
    other = asyncio.create_task(setup.engine.score("served", "other client", ["x y"], 10))
    await setup.scorers["served"].busy()
    before = shadow_count("shadow-busy", "dropped-busy")
    assert not setup.shadows.offer(setup.engine, plan, served.scored)
    assert shadow_count("shadow-busy", "dropped-busy") == before + 1
    setup.scorers["served"].release()
    await other
    await setup.engine.close()


async def test_sample_zero_never_shadows_and_fallbacks_are_not_shadowed():
    setup = await Setup(config(sample=0.0, shadow_model="shadow-never")).start()
    assert not await setup.search()
    await setup.engine.close()
    broken = await Setup(config(shadow_model="shadow-after-fallback")).start()
    plan = await plan_search(broken.cfg, broken.resolver, "docs", {"query": {"match": {"t": "alpha"}}}, [], OPTIONS)
    broken.scorers["served"].fail_on.add("alpha")
    fell_back = await finish(plan, response(), broken.engine, OPTIONS, opensearch=False)
    assert fell_back.status.startswith("fallback")
    assert not broken.shadows.offer(broken.engine, plan, fell_back.scored)
    await broken.engine.close()


async def test_a_failing_shadow_is_counted_and_fails_nobody():
    setup = await Setup(config(shadow_model="shadow-broken")).start()
    setup.scorers["shadow-broken"].fail_on.add("alpha beta")
    before = shadow_count("shadow-broken", "failed")
    assert await setup.search()
    await setup.shadows.close_when_idle()
    assert shadow_count("shadow-broken", "failed") == before + 1 and setup.results == []
    await setup.engine.close()


def test_shadow_model_must_be_configured():
    with pytest.raises(ConfigError, match="defaults.shadow.model: unknown model 'nope'"):
        parse_config({"models": {"m": {"backend": "cross-encoder", "source": "x"}},
                      "defaults": {"shadow": {"model": "nope"}}})
