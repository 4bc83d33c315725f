from pathlib import Path

import pytest

from proxy.config import ConfigError, load_config, parse_config

MODELS = {"m": {"backend": "bi-encoder", "source": "x"}}
REPO = Path(__file__).resolve().parents[2]


def test_the_shipped_config_is_valid_and_reranks_every_user_index():
    config = load_config(REPO / "config.yaml")
    assert config.defaults.enabled
    assert config.rule_for("anything") is None
    assert config.rule_for(".kibana").enabled is False


@pytest.mark.parametrize(
    "data,message",
    [
        ({"models": MODELS, "defaults": {"windw": 5}}, "defaults.windw: Extra inputs are not permitted"),
        ({"models": MODELS, "defaults": {"window": 0}}, "defaults.window: Input should be greater than or equal to 1"),
        ({"models": MODELS, "listen": "nope"}, "listen: expected HOST:PORT"),
        ({"models": MODELS, "upstreams": ["ftp://x"]}, "upstreams.0: expected an http:// or https:// URL"),
        ({"models": MODELS, "indices": [{"match": "a", "model": "other"}]}, "indices.0.model: unknown model 'other'"),
        ({"models": MODELS, "ab": {"weights": {"ghost": 1}}}, "ab.weights: unknown variant(s) ghost"),
        ({"models": {}}, "models: Dictionary should have at least 1 item"),
        ({"models": {"m": {"backend": "gpu-magic", "source": "x"}}}, "models.m.backend"),
    ],
)
def test_bad_config_names_the_key_and_the_problem(data, message):
    with pytest.raises(ConfigError) as err:
        parse_config(data)
    assert message in str(err.value)


def test_unreadable_yaml_is_a_config_error(tmp_path):
    bad = tmp_path / "c.yaml"
    bad.write_text("models: [unclosed")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(bad)


def test_index_rule_overrides_only_what_it_sets():
    config = parse_config({"models": MODELS, "defaults": {"window": 30}, "indices": [{"match": "p-*", "window": 7}]})
    rule = config.rule_for("p-1")
    merged = rule.apply_to(config.defaults)
    assert (merged.window, merged.timeout_ms) == (7, config.defaults.timeout_ms)


def test_command_line_overrides_replace_listen_and_upstreams():
    config = parse_config({"models": MODELS}).with_overrides(listen="0.0.0.0:1", upstreams=["http://h:9"])
    assert (config.listen, config.upstreams) == ("0.0.0.0:1", ["http://h:9"])
