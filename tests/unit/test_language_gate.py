"""The language gate: a search whose query is confidently in a language the model does not serve is not reranked."""
import asyncio
import subprocess
import sys
from pathlib import Path

import pytest
from prometheus_client import REGISTRY

from proxy import metrics
from proxy.config import ConfigError, RerankSettings, parse_config
from proxy.decide import decide, served_languages
from proxy.resolve import IndexResolver
from proxy.search import Plan, RequestOptions, plan_search, plan_template
from rerank import language

REPO = Path(__file__).resolve().parents[2]

THAI = "ทีมรับของแพนเธอร์สยอมแพ้ที่คะแนนเท่าไร"
ARABIC = "كم نقطة تخلى عنها دفاع البانثرز؟"
CHINESE = "黑豹队的防守丢了多少分？"
SPANISH = "¿Cuántos puntos dejaron escapar en defensa los Panthers?"
ENGLISH = "How many points did the Panthers defense surrender?"
# Too little text to judge: one or two words, digits, codes, names; a CJK or Thai word of a character or two.
SHORT = ["iphone 15", "SKU-12345", "42", "RTX 4090", "Deutsche Bank", "déjà vu", "schadenfreude", "Müller", "黑豹",
         "東京", "ไทย", "Привет", "tesla model 3", "12/05/2024", "x86_64"]
# English searches made mostly of foreign names, long enough to be judged: the evidence is not strong enough.
NAMES = ["Nicolás Maduro Venezuela", "Galatasaray vs Fenerbahçe", "Gabriel García Márquez books",
         "Le Monde diplomatique", "la la land cast", "Bayern München transfer news"]

MODEL = {"backend": "bi-encoder", "source": "x"}
CONFIG = parse_config({
    "models": {"en": {**MODEL, "languages": ["en"]}, "multi": MODEL},
    "defaults": {"model": "en", "window": 4, "text": {"fields": ["t"]}},
    "indices": [
        {"match": "open-*", "language_gate": False},
        {"match": "es-*", "languages": ["en", "es"]},
        {"match": "all-*", "languages": ["any"]},
        {"match": "multi-*", "model": "multi"},
    ],
    "variants": {"ungated": {"language_gate": False}},
})
OPTIONS = RequestOptions(force=None, variant="control", query_override=None, explain=False)


async def no_aliases(name):
    return []


def plan(query, index="docs", options=OPTIONS) -> Plan:
    body = {"query": {"multi_match": {"query": query, "fields": ["t"]}}}
    return asyncio.run(plan_search(CONFIG, IndexResolver(CONFIG, no_aliases), index, body, [], options))


def status(query, index="docs", options=OPTIONS) -> str:
    p = plan(query, index, options)
    return "reranked" if p.decision.rerank else p.skip_status


DEFAULTS = RerankSettings()


def reason(query, languages=("en",), settings=DEFAULTS, force=None):
    d = decide({}, {}, settings, force=force, query_text=query, languages=languages)
    return None if d.rerank else d.reason


# The detector

@pytest.mark.parametrize("text,code", [(THAI, "th"), (ARABIC, "ar"), (CHINESE, "zh"), (SPANISH, "es")])
def test_thai_arabic_chinese_and_spanish_queries_are_detected_as_not_english(text, code):
    assert language.detect(text) == code
    assert language.outside(text, ["en"]) == code


def test_an_english_query_is_english():
    assert language.detect(ENGLISH) == "en"
    assert language.outside(ENGLISH, ["en"]) is None


@pytest.mark.parametrize("text", SHORT)
def test_short_or_ambiguous_text_is_never_judged(text):
    assert language.words(text) < language.MIN_WORDS
    assert language.detect(text) is None and language.outside(text, ["en"]) is None


@pytest.mark.parametrize("text", NAMES)
def test_english_queries_made_of_foreign_names_are_not_gated(text):
    assert language.outside(text, ["en"]) is None


def test_words_count_marks_with_their_letters_and_two_cjk_or_thai_characters_as_one():
    assert language.words("पैंथर्स डिफ़ेंस ने कितने अंक दिए?") == 6  # vowel signs do not split a Devanagari word
    assert language.words("黑豹队的") == 2 and language.words("ไทย") == 1.5
    assert language.words("a 1 2 3 b") == 0  # single letters and digits are no words


def test_served_languages_are_the_ones_a_query_may_be_in():
    assert language.outside(SPANISH, ["en", "es"]) is None
    assert language.outside(THAI, ["en", "es"]) == "th"
    assert language.outside(CHINESE, ["zh"]) is None
    assert language.outside(THAI, ["any"]) is None


def test_a_served_language_the_detector_cannot_recognise_keeps_the_gate_open():
    # Sichuan Yi is not among langid's languages: its queries would all look foreign, so nothing is gated.
    assert language.outside(THAI, ["en", "ii"]) is None


def test_norwegian_bokmal_is_the_detectors_norwegian():
    text = "Hvor mange poeng ga Panthers-forsvaret bort i kampen?"
    assert language.outside(text, ["nb"]) is None and language.outside(text, ["en"]) == "no"


def test_detection_is_cached_by_query_text(monkeypatch):
    language.load()
    calls = []
    detector = language._get()
    real = detector.probabilities
    monkeypatch.setattr(detector, "probabilities", lambda text: calls.append(text) or real(text))
    language.clear_cache()
    text = "Quantos pontos a defesa dos Panthers entregou no jogo?"
    assert [language.outside(text, ["en"]) for _ in range(3)] == ["pt"] * 3
    assert language.detect(text) == "pt" and language.outside(text, ["en", "pt"]) is None
    assert calls == [text]


def test_evidence_is_the_log_ratio_the_threshold_applies_to():
    code, nats = language.evidence(SPANISH, ["en"])
    assert code == "es" and nats >= language.GATE_NATS
    assert language.evidence(ENGLISH, ["en"])[1] < 0
    assert language.evidence("iphone 15", ["en"]) is None and language.evidence(THAI, ["any"]) is None


# The decision

@pytest.mark.parametrize("text", [THAI, ARABIC, CHINESE])
def test_non_english_searches_are_skipped_with_reason_language(text):
    assert reason(text) == "language"
    assert status(text) == "skipped; reason=language"


def test_english_search_is_reranked():
    assert reason(ENGLISH) is None
    p = plan(ENGLISH)
    assert p.decision.rerank and p.model == "en" and p.query == ENGLISH


@pytest.mark.parametrize("text", SHORT[:6])
def test_short_search_is_reranked_whatever_its_language(text):
    assert status(text) == "reranked"


def test_the_gate_comes_after_what_the_request_rules_out():
    d = decide({"sort": ["date"]}, {}, RerankSettings(), force=None, query_text=THAI, languages=["en"])
    assert d.reason == "sort"
    assert decide({}, {}, RerankSettings(), force=None, query_text=None, languages=["en"]).reason == "no-query-text"


def test_per_index_override_turns_the_gate_off():
    assert status(THAI, index="open-1") == "reranked"
    assert reason(THAI, settings=RerankSettings(language_gate=False)) is None


def test_per_index_languages_replace_the_models():
    assert status(SPANISH, index="es-1") == "reranked"
    assert status(SPANISH) == "skipped; reason=language"
    assert status(THAI, index="es-1") == "skipped; reason=language"


def test_languages_any_never_gates():
    for index in ("all-1", "multi-1"):  # the index's `languages: [any]`; a model without languages (default any)
        assert status(THAI, index=index) == status(CHINESE, index=index) == "reranked"
    assert reason(THAI, languages=["any"]) is None


def test_a_variant_can_switch_the_gate_off():
    options = RequestOptions(force=None, variant="ungated", query_override=None, explain=False)
    assert status(THAI, options=options) == "reranked"


def test_rerank_on_header_overrides_the_gate_and_off_still_wins():
    forced = RequestOptions(force="on", variant="control", query_override=None, explain=False)
    assert status(THAI, options=forced) == "reranked"
    off = RequestOptions(force="off", variant="control", query_override=None, explain=False)
    assert status(THAI, options=off) == "skipped; reason=header-off"


def test_the_query_header_is_the_text_judged():
    options = RequestOptions(force=None, variant="control", query_override=THAI, explain=False)
    assert status(ENGLISH, options=options) == "skipped; reason=language"


def test_search_templates_are_gated_too():
    body = {"id": "tpl", "params": {"query_string": ARABIC, "from": 0, "size": 2}}
    p = asyncio.run(plan_template(CONFIG, IndexResolver(CONFIG, no_aliases), "docs", body, [], OPTIONS))
    assert p.skip_status == "skipped; reason=language"


def test_served_languages_index_first_then_model():
    assert served_languages(RerankSettings(), ["en"]) == ["en"]
    assert served_languages(RerankSettings(languages=["de"]), ["en"]) == ["de"]
    assert served_languages(RerankSettings(language_gate=False, languages=["de"]), ["en"]) == ("any",)
    assert served_languages(None, ["en"]) == ("any",)


def test_the_skip_is_counted_with_its_reason():
    def count():
        return REGISTRY.get_sample_value(
            "rerank_proxy_searches_total",
            {"outcome": "skipped", "reason": "language", "variant": "control", "index": "_other"},
        ) or 0.0

    before = count()
    metrics.record_search(plan(THAI).skip_status, "control")
    assert count() == before + 1


def test_no_detector_is_loaded_when_no_model_declares_languages():
    script = """
import asyncio
from proxy.config import parse_config
from proxy.resolve import IndexResolver
from proxy.search import RequestOptions, plan_search
from rerank import language

config = parse_config({"models": {"m": {"backend": "bi-encoder", "source": "x"}}})
async def no_aliases(name):
    return []
body = {"query": {"match": {"t": "ทีมรับของแพนเธอร์สยอมแพ้ที่คะแนนเท่าไร"}}}
options = RequestOptions(force=None, variant="control", query_override=None, explain=False)
p = asyncio.run(plan_search(config, IndexResolver(config, no_aliases), "docs", body, [], options))
assert p.decision.rerank, p.decision
assert not language.loaded()
import sys
assert "py3langid" not in sys.modules
"""
    subprocess.run([sys.executable, "-c", script], cwd=REPO, check=True, timeout=120)


# The configuration

def test_model_languages_default_to_any_and_the_shipped_models_are_english():
    assert parse_config({"models": {"m": MODEL}}).models["m"].languages == ["any"]
    from proxy.config import load_config

    assert load_config(REPO / "config.yaml").models["minilm"].languages == ["en"]


def test_a_single_code_is_a_list_of_one():
    config = parse_config({"models": {"m": {**MODEL, "languages": "en"}}, "indices": [{"match": "x", "languages": "de"}]})
    assert config.models["m"].languages == ["en"] and config.indices[0].languages == ["de"]


@pytest.mark.parametrize(
    "data,key",
    [
        ({"models": {"m": {**MODEL, "languages": ["EN"]}}}, "models.m.languages"),
        ({"models": {"m": {**MODEL, "languages": ["eng"]}}}, "models.m.languages"),
        ({"models": {"m": {**MODEL, "languages": ["xx"]}}}, "models.m.languages"),
        ({"models": {"m": {**MODEL, "languages": []}}}, "models.m.languages"),
        ({"models": {"m": {**MODEL, "languages": ["any", "en"]}}}, "models.m.languages"),
        ({"models": {"m": {**MODEL, "languages": ["en", "en"]}}}, "models.m.languages"),
        ({"models": {"m": MODEL}, "indices": [{"match": "x", "languages": ["english"]}]}, "indices.0.languages"),
        ({"models": {"m": MODEL}, "indices": [{"match": "x", "language_gate": "maybe"}]}, "indices.0.language_gate"),
        ({"models": {"m": MODEL}, "defaults": {"languages": ["e1"]}}, "defaults.languages"),
        ({"models": {"m": MODEL}, "variants": {"v": {"languages": ["EN"]}}}, "variants.v.languages"),
        ({"models": {"m": MODEL}, "defaults": {"language": ["en"]}}, "defaults.language"),
    ],
)
def test_bad_language_settings_are_rejected_naming_the_key(data, key):
    with pytest.raises(ConfigError) as err:
        parse_config(data, origin="config.yaml")
    assert f"config.yaml: {key}" in str(err.value)
