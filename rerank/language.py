"""Which language a query is in, for the language gate: a model that ranks English well can make Thai search worse,
so a search whose query is confidently in a language the model does not serve is left in the cluster's order.

The detector is py3langid (langid.py's naive Bayes over byte n-grams, 140 labels, the model inside the wheel, no
download): 100-250 us for a query it has not seen (on this shared 2-core machine), about 1 us from the cache, which
is keyed by the query text; the first use loads it (0.6-1 s, about 85 MB). `benchmarks/language_detect.py` measures
it against the alternatives tried (pycld2, langdetect, lingua).

A query is gated only when the evidence is strong. Too little text (fewer than MIN_WORDS words: `iphone 15`,
`Deutsche Bank`, `SKU-12345`, `42`) is never judged. Otherwise the gate compares the most likely language outside the
served set with all the served ones together: it fires when that language is at least e^GATE_NATS (about 1,100)
times as likely. Summing "all other languages" instead would fire on no evidence at all: with 140 labels and a
short query the mass outside English is 0.93-0.99 by itself (`best pizza near me` 0.94).
"""
from __future__ import annotations

import math
import threading
from collections.abc import Iterable, Sequence
from typing import Any

import regex

from .lru import LRU

ANY = "any"

# The gate fires when log(P(best unserved language) / P(served languages)) reaches this. Measured on the BEIR query
# sets in shared/data (benchmarks/language_detect.py): at 7 no English query of SciFact, Medline, CoSQA, Cranfield,
# CISI, Vaswani, MetaTool or XQuAD-R/en is gated (the 1% of Gorilla gated are English instructions wrapped around a
# quoted French, Spanish, Swedish or Japanese passage), nor English queries made of foreign names (`Nicolás Maduro
# Venezuela` 5.5, `Galatasaray vs Fenerbahçe` 5.9); XQuAD-R ar, el, hi, th, zh are gated 99.7-100% and es, tr 96-97%.
GATE_NATS = 7.0
# Fewer words than this are too little to judge: names, brands, product codes, one-word queries. A word is a run of
# two or more letters (with their combining marks); in scripts written without spaces (Han, kana, Thai, Lao, Khmer,
# Myanmar) every two characters count as one.
MIN_WORDS = 3
CACHE_ENTRIES = 10_000

# Detector labels without an ISO 639-1 code of their own, folded into their macrolanguage's.
_LABEL_CODES = {"ary": "ar", "arz": "ar", "wuu": "zh", "yue": "zh", "uzs": "uz", "sdh": "ku", "gug": "gn"}
_NO_LANGUAGE = "zxx"  # langid's "no linguistic content" (digits, code, symbols): never a reason to gate
# Served codes the detector knows under another one (Norwegian Bokmål is langid's `no`).
_SERVED_CODES = {"nb": "no"}

_UNSPACED = regex.compile(r"[\p{Han}\p{Hiragana}\p{Katakana}\p{Thai}\p{Lao}\p{Khmer}\p{Myanmar}]")
_WORD = regex.compile(r"\p{L}[\p{L}\p{M}]+")


def words(text: str) -> float:
    """How many words `text` holds, as MIN_WORDS counts them."""
    unspaced = len(_UNSPACED.findall(text))
    return len(_WORD.findall(_UNSPACED.sub(" ", text) if unspaced else text)) + unspaced / 2


class _Detector:
    """py3langid with normalised probabilities, and per label the ISO code it counts for."""

    def __init__(self) -> None:
        import numpy as np
        from py3langid.langid import MODEL_FILE, LanguageIdentifier

        self.np = np
        self.identifier = LanguageIdentifier.from_model_file(MODEL_FILE, norm_probs=True)
        self.labels: list[str] = self.identifier.labels
        self.position = {label: i for i, label in enumerate(self.labels)}
        self.codes = [_LABEL_CODES.get(label, label) for label in self.labels]
        self.known = frozenset(self.codes) - {_NO_LANGUAGE}
        self.masks: dict[tuple[str, ...], Any] = {}

    def probabilities(self, text: str) -> Any:
        """P(label | text), a float32 array in `labels` order."""
        probs = self.np.zeros(len(self.labels), dtype=self.np.float32)
        for label, p in self.identifier.rank(text):
            probs[self.position[label]] = p
        return probs

    def served_mask(self, languages: tuple[str, ...]) -> Any:
        """Which labels count as `languages`; None when one of them is a language the detector cannot recognise
        (its queries would all look foreign, so the gate must stay open)."""
        if languages not in self.masks:
            served = {_SERVED_CODES.get(code, code) for code in languages}
            known = served <= self.known
            self.masks[languages] = self.np.array([code in served for code in self.codes]) if known else None
        return self.masks[languages]

    def evidence(self, probs: Any, languages: tuple[str, ...]) -> tuple[str, float] | None:
        mask = self.served_mask(languages)
        if mask is None:
            return None
        others = self.np.where(mask, 0.0, probs)
        others[self.position[_NO_LANGUAGE]] = 0.0
        best = int(others.argmax())
        other, served = float(others[best]), float(probs[mask].sum())
        if other <= 0.0:
            return None
        return self.codes[best], math.log(other / served) if served > 0.0 else math.inf


class _Entry:
    """What is known about one query text: its language probabilities (None: too short to judge), and the evidence
    against each set of served languages asked about so far."""

    __slots__ = ("evidence", "probs")

    def __init__(self, probs: Any) -> None:
        self.probs = probs
        self.evidence: dict[tuple[str, ...], tuple[str, float] | None] = {}


_detector: _Detector | None = None
_loading = threading.Lock()
_cache: LRU[str, _Entry] = LRU(CACHE_ENTRIES)


def load() -> None:
    """Loads the detector (about 0.6 s, once per process); safe from any thread."""
    global _detector
    with _loading:
        if _detector is None:
            _detector = _Detector()


def loaded() -> bool:
    return _detector is not None


def clear_cache() -> None:
    global _cache
    _cache = LRU(CACHE_ENTRIES)


def _get() -> _Detector:
    if _detector is None:
        load()
    assert _detector is not None
    return _detector


def _entry(text: str) -> _Entry:
    entry = _cache.get(text)
    if entry is None:
        entry = _Entry(_get().probabilities(text) if words(text) >= MIN_WORDS else None)
        _cache.put(text, entry)
    return entry


def detect(text: str) -> str | None:
    """The language `text` is most likely in (an ISO 639-1 code where there is one, else langid's ISO 639-3
    label), or None when it is too short to tell or holds no language."""
    probs = _entry(text).probs
    if probs is None:
        return None
    code = _get().codes[int(probs.argmax())]
    return None if code == _NO_LANGUAGE else code


def gated(languages: Iterable[str]) -> bool:
    """Whether searches for a model or index serving `languages` are gated at all (no detector needed to tell)."""
    return ANY not in languages


def evidence(text: str, languages: Sequence[str]) -> tuple[str, float] | None:
    """The most likely language of `text` outside `languages`, and by how much it beats them: the natural log of
    P(that language) / P(any of `languages`) (inf when they are out of the question). None when there is nothing to
    weigh: `languages` holds `any` or a language the detector does not know, or the text is too short."""
    if not gated(languages):
        return None
    entry = _entry(text)
    if entry.probs is None:
        return None
    key = tuple(sorted(languages))
    if key not in entry.evidence:
        entry.evidence[key] = _get().evidence(entry.probs, key)
    return entry.evidence[key]


def outside(text: str, languages: Sequence[str]) -> str | None:
    """The language `text` is confidently in when that is none of `languages` (the gate closes: don't rerank);
    None when it is one of them, when the text is too short to judge, or when the evidence is not strong enough."""
    found = evidence(text, languages)
    return found[0] if found is not None and found[1] >= GATE_NATS else None
