
from proxy.config import parse_config
from proxy.resolve import IndexResolver

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
