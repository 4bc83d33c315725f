
import asyncio

from proxy.config import parse_config
from proxy.resolve import IndexResolver, ResultWindows, smallest_result_window

CONFIG = parse_config(
    {
        "models": {"m": {"backend": "bi-encoder", "source": "x"}},
        "defaults": {"window": 10},
        "indices": [{"match": ["products", "products-*"], "window": 99}, {"match": ".*", "enabled": False}],
    }
)


class Aliases:
    def __init__(self, table):
        self.table, self.calls = table, []

    async def __call__(self, name):
        self.calls.append(name)
        return self.table.get(name, [])


async def resolve(expr, table=None):
    return await IndexResolver(CONFIG, Aliases(table or {})).resolve(expr)


async def test_name_and_pattern_match_their_rule():
    assert (await resolve("products")).settings.window == 99
    assert (await resolve("products-2024")).rule == "indices.0"


async def test_unknown_index_gets_the_defaults():
    r = await resolve("other")
    assert (r.rule, r.settings.window, r.explicit) == ("defaults", 10, False)


async def test_alias_resolves_through_the_cluster_to_its_indices_rule():
    assert (await resolve("shop", {"shop": ["products-1", "products-2"]})).rule == "indices.0"


async def test_comma_list_with_one_rule_resolves_and_mixed_rules_do_not():
    assert (await resolve("products,products-9")).rule == "indices.0"
    mixed = await resolve("products,other")
    assert mixed.settings is None and mixed.rule == "mixed"


async def test_alias_lookups_are_cached():
    aliases = Aliases({"shop": ["products"]})
    resolver = IndexResolver(CONFIG, aliases)
    for _ in range(3):
        await resolver.resolve("shop")
    assert aliases.calls == ["shop"]


async def test_failed_alias_lookup_resolves_by_name():
    async def broken(name):
        raise ConnectionError

    assert (await IndexResolver(CONFIG, broken).resolve("shop")).rule == "defaults"


# ---- index.max_result_window ----

class Windows:
    """Stands in for the cluster's settings API: a fixed answer, or an error, per index expression."""

    def __init__(self, table):
        self.table, self.calls = table, []

    async def __call__(self, expression):
        self.calls.append(expression)
        value = self.table.get(expression)
        if isinstance(value, Exception):
            raise value
        return value


async def test_result_window_lookups_are_cached_per_expression_for_the_ttl():
    lookup = Windows({"products": 5, "_all": 100})
    windows = ResultWindows(lookup, ttl_s=60)
    for _ in range(3):
        assert await windows.limit("products") == 5
        assert await windows.limit(None) == 100
    assert lookup.calls == ["products", "_all"]


async def test_concurrent_searches_on_a_cold_entry_share_one_lookup():
    started, release = asyncio.Event(), asyncio.Event()

    async def slow(expression):
        calls.append(expression)
        started.set()
        await release.wait()
        return 7

    calls = []
    windows = ResultWindows(slow, ttl_s=60)
    searches = [asyncio.ensure_future(windows.limit("shop")) for _ in range(5)]
    await started.wait()
    release.set()
    assert await asyncio.gather(*searches) == [7] * 5
    assert calls == ["shop"]


async def test_an_unknown_window_is_cached_but_a_failed_lookup_is_asked_again():
    lookup = Windows({"missing": None, "down": ConnectionError()})
    windows = ResultWindows(lookup, ttl_s=60)
    for _ in range(2):
        assert await windows.limit("missing") is None
        assert await windows.limit("down") is None
    assert lookup.calls == ["missing", "down", "down"]


async def test_an_expired_entry_is_asked_again():
    lookup = Windows({"products": 5})
    windows = ResultWindows(lookup, ttl_s=0)
    await windows.limit("products")
    await windows.limit("products")
    assert lookup.calls == ["products", "products"]


async def test_the_cache_holds_a_bounded_number_of_expressions():
    lookup = Windows({})
    windows = ResultWindows(lookup, ttl_s=60, max_entries=3)
    for i in range(10):
        await windows.limit(f"index-{i}")
    assert len(windows._cache) <= 3 and "index-9" in windows._cache


def test_the_smallest_window_of_the_settings_answer_counts_index_settings_before_defaults():
    answer = {
        "small": {"settings": {"index.max_result_window": "5"}, "defaults": {}},
        "large": {"settings": {}, "defaults": {"index.max_result_window": "10000"}},
    }
    assert smallest_result_window(answer) == 5
    assert smallest_result_window({"large": answer["large"]}) == 10000
    assert smallest_result_window({}) is None
    assert smallest_result_window({"error": "x", "status": 404}) is None
    assert smallest_result_window({"odd": {"settings": {"index.max_result_window": "many"}}}) is None
