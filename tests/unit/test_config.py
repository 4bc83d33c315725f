from pathlib import Path

import pytest

from proxy.config import ConfigError, IndexRule, RerankSettings, SettingsOverride, load_config, parse_config
from rerank.spec import BiEncoderSpec, MxbaiV2Spec, RemoteSpec

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


# ---- each backend's own spec type --------------------------------------------------------------------------------
REMOTE = {"backend": "remote", "source": "http://rerank-gpu:7997"}


@pytest.mark.parametrize(
    "model,message",
    [
        ({**REMOTE, "device": "cuda", "dtype": "float16"}, "models.m: device, dtype: only valid with a local backend, "
                                                          "not 'remote'"),
        ({"backend": "cross-encoder", "source": "x", "cache_entries": 5}, "models.m: cache_entries: only valid with "
                                                                         "backend 'bi-encoder', not 'cross-encoder'"),
        ({**REMOTE, "instruction": "Prefer causes."}, "models.m: instruction: only valid with backend 'mxbai-v2', "
                                                     "not 'remote'"),
        # a variant's own field errors are located at the entry's keys, with no backend tag in between
        ({**REMOTE, "retries": 99}, "models.m.retries: Input should be less than or equal to 10"),
        ({"source": "x"}, "models.m.backend: Field required"),
    ],
)
def test_a_model_takes_only_its_backends_keys(model, message):
    with pytest.raises(ConfigError) as err:
        parse_config({"models": {"m": model}})
    assert message in str(err.value)


def test_each_backend_parses_to_its_own_spec_type():
    config = parse_config({"models": {"r": REMOTE, "b": {"backend": "bi-encoder", "source": "x"},
                                      "x": {"backend": "mxbai-v2", "source": "x", "instruction": "Be brief."}}})
    assert (type(config.models["r"]), type(config.models["b"]), type(config.models["x"])) == (
        RemoteSpec, BiEncoderSpec, MxbaiV2Spec)
    assert not hasattr(config.models["b"], "retries") and config.models["x"].instruction == "Be brief."


def test_a_spec_built_in_code_survives_the_command_line_overrides():
    # with_overrides re-parses the config's dump of what was set: the backend of RemoteSpec(...) counts as set
    config = parse_config({"models": {"r": RemoteSpec(source="http://r:7997", retries=0)}})
    assert config.with_overrides(listen="0.0.0.0:1").models == {"r": RemoteSpec(source="http://r:7997", retries=0)}


# ---- overrides: RerankSettings, every field optional --------------------------------------------------------------
def test_an_override_has_every_rerank_setting_unset_by_default_with_its_constraints():
    assert list(SettingsOverride.model_fields) == list(RerankSettings.model_fields)
    assert all(value is None for value in SettingsOverride().model_dump().values())
    assert set(IndexRule.model_fields) == {*RerankSettings.model_fields, "match"}
    with pytest.raises(ConfigError, match="variants.v.window: Input should be greater than or equal to 1"):
        parse_config({"models": MODELS, "variants": {"v": {"window": 0}}})
    with pytest.raises(ConfigError, match="variants.v.languages: not an ISO 639-1 language code"):
        parse_config({"models": MODELS, "variants": {"v": {"languages": "xx"}}})
    assert SettingsOverride(languages="en").apply_to(RerankSettings(window=9)) == RerankSettings(window=9,
                                                                                                 languages=["en"])
