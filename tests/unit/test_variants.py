import random

import pytest

from proxy.config import parse_config
from proxy.variants import UnknownVariant, apply_variant, choose_variant

BASE = {"models": {"m": {"backend": "bi-encoder", "source": "x"}}, "variants": {"small": {"window": 5}}}


def config(**extra):
    return parse_config({**BASE, **extra})


def test_header_picks_the_variant_and_its_settings_override():
    cfg = config()
    choice = choose_variant(cfg, {"X-Rerank-Variant": "small"})
    assert (choice.name, choice.how) == ("small", "header")
    assert apply_variant(cfg, cfg.defaults, choice.name).window == 5
    assert apply_variant(cfg, cfg.defaults, "control") == cfg.defaults


def test_unknown_variant_header_is_an_error_naming_the_known_ones():
    with pytest.raises(UnknownVariant, match=r"\[nope\].*control, small"):
        choose_variant(config(), {"X-Rerank-Variant": "nope"})


def test_without_a_split_everyone_is_control():
    assert choose_variant(config(), {}).name == "control"


def test_sticky_split_gives_one_user_the_same_variant_and_follows_the_weights():
    cfg = config(ab={"sticky_header": "X-User", "weights": {"control": 50, "small": 50}})
    first = [choose_variant(cfg, {"X-User": f"user-{i}"}).name for i in range(2000)]
    again = [choose_variant(cfg, {"X-User": f"user-{i}"}).name for i in range(2000)]
    assert first == again
    assert 850 < first.count("small") < 1150


def test_split_without_the_sticky_header_is_random_by_weight():
    cfg = config(ab={"weights": {"control": 0, "small": 1}})
    assert {choose_variant(cfg, {}, random.Random(1)).name for _ in range(50)} == {"small"}
