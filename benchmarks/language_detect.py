"""Language detectors on real queries: accuracy per language, what the language gate does, and the time per query.

    .venv/bin/python -m benchmarks.language_detect                 # every detector installed; py3langid at least
    .venv/bin/python -m benchmarks.language_detect --limit 300 --detectors py3langid
    .venv/bin/python -m benchmarks.language_detect --lingua-high   # lingua's high-accuracy mode (1.3 GB, ~18 s load)

Query sets (from ../shared/data, or --data): XQuAD-R's 1,190 questions in each of ar, el, en, es, hi, th, tr, zh,
and the English query sets SciFact, Medline, CoSQA, Gorilla, Cranfield, CISI, Vaswani and MetaTool (at most
--limit queries a set, default 2,000), plus two small built-in English sets the gate must leave alone: searches
made of foreign names (`Nicolás Maduro Venezuela`) and short or ambiguous ones (`iphone 15`, `SKU-12345`).

Per detector and set:
- `acc`: the detector's top language is the set's (no length floor; a detector's "don't know" counts wrong);
- `gated` (py3langid, the proxy's): share of searches the proxy's gate (`rerank/language.py`) skips for a model
  serving `[en]`: what should be 0 on the English sets and 1 elsewhere;
- `us cold`: microseconds per query, first sight of each distinct text (the detector runs; for py3langid the whole
  gate: length floor, detection, decision);
- `us cached`: the same texts again, answered by the LRU cache (`rerank/lru.py`) keyed by the text.
Then the gate's share of gated searches at other thresholds (GATE_NATS), which is how 7 was chosen.

Detectors tried, each only if installed: py3langid (the proxy's), pycld2, langdetect (seeded: deterministic), lingua
(low-accuracy mode unless --lingua-high). Its load time and the memory it added (RSS) are printed too.
"""
from __future__ import annotations

import argparse
import gc
import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from rerank import language
from rerank.lru import LRU

REPO = Path(__file__).resolve().parents[1]

XQUAD = ("ar", "el", "en", "es", "hi", "th", "tr", "zh")
ENGLISH = ("scifact", "medline", "cosqa", "gorilla-hf", "cranfield", "cisi", "vaswani", "metatool")
# English searches that are mostly foreign names: the gate must not take them for another language.
NAMES = """Deutsche Bank annual report|la la land cast|deja vu song lyrics|Volkswagen Golf GTI review|Sagrada Familia
opening hours|Real Madrid vs Barcelona|El Niño weather pattern|Hagia Sophia history|Tour de France winners|Coca Cola
Zero Zucker|Dolce & Gabbana perfume|Ludwig van Beethoven symphonies|Frida Kahlo paintings for sale|pain au chocolat
recipe|Crème brûlée without torch|Müller Milch protein|Jägermeister cocktail recipes|Häagen-Dazs ice cream flavors|Bayern
München transfer news|Gabriel García Márquez books|Paris Saint-Germain jersey|Shinkansen Tokyo Osaka ticket|Sao Paulo
Brazil population|Hyundai Santa Fe 2023|Galatasaray vs Fenerbahçe|Istanbul Grand Bazaar|Mercedes-Benz S-Klasse|Café
del Mar playlist|Que sera sera lyrics|Carpe diem meaning|Nicolás Maduro Venezuela|Angela Merkel biography|Louis
Vuitton Neverfull MM|Zara Home Las Palmas|Porsche Cayenne Turbo|Emmanuel Macron pension reform|La Liga top
scorers|Bon Appétit magazine|Le Monde diplomatique|Die Zeit newspaper|Cinco de Mayo|Las Vegas hotels|Los Angeles
Lakers|Ikea Kallax shelf|Lego Technic Porsche|Peugeot 208 GTi|Lamborghini Aventador|Cervantes Don Quixote|Dostoevsky
Crime and Punishment|Tchaikovsky Swan Lake|Hokusai Great Wave|Jalapeño poppers|Pokémon Scarlet Violet|Huawei Mate 60
Pro|Xiaomi Redmi Note|PyTorch DataLoader num_workers|kubectl get pods -n kube-system|numpy einsum ijk|git rebase
--onto""".replace("\n", " ").split("|")
# Short or ambiguous searches: too little text to judge, never gated whatever the detector thinks.
SHORT = """iphone 15|SKU-12345|42|café|tokyo|bmw x5|A4 paper|x86_64|RTX 4090|pizza|jalapeño|Mercedes Benz|covid-19|HbA1c|
p53|de niro|van gogh|el nino|schadenfreude|déjà vu|tapas bar|Müller|José|Deutsche Bank|tesla model 3|ABC-123-XYZ|
12/05/2024|DNA|ssh-keygen|npm install|Moskau|Estambul|黑豹|東京|ไทย|Привет|Ελλάδα""".replace("\n", "").split("|")
SWEEP = (5.0, 6.0, 7.0, 8.0, 10.0)


@dataclass
class QuerySet:
    name: str
    lang: str
    texts: list[str]


def query_sets(data: Path, limit: int) -> list[QuerySet]:
    def read(path: Path) -> list[str]:
        with path.open(encoding="utf-8") as f:
            return [json.loads(line)["text"] for line in f if line.strip()][:limit]

    sets = [QuerySet(f"xquad-r/{lang}", lang, read(data / "xquad-r" / lang / "queries.jsonl")) for lang in XQUAD]
    sets += [QuerySet(name, "en", read(data / name / "queries.jsonl")) for name in ENGLISH]
    sets += [QuerySet("names (en)", "en", NAMES), QuerySet("short (en)", "en", SHORT)]
    return sets


def rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096 / 2**20


def py3langid_detector() -> Callable[[str], str | None]:
    language.load()
    detector = language._get()  # the proxy's own instance; the top label, without the gate's length floor

    def detect(text: str) -> str | None:
        return detector.codes[int(detector.probabilities(text).argmax())]

    return detect


def pycld2_detector() -> Callable[[str], str | None]:
    import pycld2

    def detect(text: str) -> str | None:
        try:
            _, _, details = pycld2.detect(text)
        except pycld2.error:
            return None
        code = details[0][1]
        return None if code == "un" else code.split("-")[0]

    return detect


def langdetect_detector() -> Callable[[str], str | None]:
    from langdetect import DetectorFactory, LangDetectException
    from langdetect import detect as ld_detect

    DetectorFactory.seed = 0

    def detect(text: str) -> str | None:
        try:
            return ld_detect(text).split("-")[0]
        except LangDetectException:
            return None

    return detect


def lingua_detector(high: bool) -> Callable[[], Callable[[str], str | None]]:
    def make() -> Callable[[str], str | None]:
        from lingua import LanguageDetectorBuilder

        builder = LanguageDetectorBuilder.from_all_languages()
        if not high:
            builder = builder.with_low_accuracy_mode()
        lingua = builder.with_preloaded_language_models().build()

        def detect(text: str) -> str | None:
            found = lingua.detect_language_of(text)
            return found.iso_code_639_1.name.lower() if found is not None else None

        return detect

    return make


def cached_by_text(detect: Callable[[str], str | None], size: int) -> Callable[[str], str | None]:
    """`detect` behind an LRU cache keyed by the text, as the proxy caches its own detector."""
    cache: LRU[str, tuple[str | None]] = LRU(size)

    def cached(text: str) -> str | None:
        hit = cache.get(text)
        if hit is None:
            hit = (detect(text),)
            cache.put(text, hit)
        return hit[0]

    return cached


def gate_en(text: str) -> str | None:
    """The proxy's gate for a model serving English."""
    return language.outside(text, ("en",))


def timed(fn: Callable[[str], object], texts: list[str]) -> float:
    """Microseconds per call over `texts`."""
    start = time.perf_counter()
    for text in texts:
        fn(text)
    return (time.perf_counter() - start) / max(len(texts), 1) * 1e6


def measure(name: str, make: Callable[[], Callable[[str], str | None]], sets: list[QuerySet]) -> list[str]:
    gc.collect()
    before, start = rss_mb(), time.perf_counter()
    try:
        detect = make()
    except ImportError as err:
        return [f"{name}: not installed ({err.name}); skipped", ""]
    load_s, added = time.perf_counter() - start, rss_mb() - before
    ours = name == "py3langid"  # the proxy's detector: its table has the gate's column, its timing the gate's path
    rows = [f"### {name}: loaded in {load_s:.2f} s, +{added:.0f} MB RSS", "",
            "| set | lang | queries | acc | " + ("gated | " if ours else "") + "us cold | us cached |",
            "|---|---|---:|---:|" + ("---:|" if ours else "") + "---:|---:|"]
    for qs in sets:
        distinct = list(dict.fromkeys(qs.texts))
        cached = cached_by_text(detect, len(distinct))
        if ours:  # the gate's length floor, detection, its cache, the served-language mask
            language.clear_cache()
            cold, warm = timed(gate_en, distinct), timed(gate_en, distinct)
        else:
            cold, warm = timed(cached, distinct), timed(cached, distinct)
        acc = sum(cached(text) == qs.lang for text in qs.texts) / len(qs.texts)
        gated = sum(gate_en(text) is not None for text in qs.texts) / len(qs.texts)
        rows.append(f"| {qs.name} | {qs.lang} | {len(qs.texts)} | {acc:.3f} | " + (f"{gated:.3f} | " if ours else "")
                    + f"{cold:.0f} | {warm:.1f} |")
    return rows + [""]


def sweep(sets: list[QuerySet]) -> list[str]:
    """The share of searches the gate skips (model serving `[en]`) at other thresholds; cached, so cheap."""
    rows = ["### py3langid gate: share of searches skipped by GATE_NATS", "",
            "| set | " + " | ".join(f"{t:g}" for t in SWEEP) + " |", "|---|" + "---:|" * len(SWEEP)]
    chosen = language.GATE_NATS
    for qs in sets:
        found = [language.evidence(text, ("en",)) for text in qs.texts]
        shares = [sum(f is not None and f[1] >= nats for f in found) / len(found) for nats in SWEEP]
        rows.append(f"| {qs.name} | " + " | ".join(f"{s:.3f}" for s in shares) + " |")
    note = (f"(the proxy uses {chosen:g}; a search with fewer than {language.MIN_WORDS} words is never judged, "
            "at any threshold)")
    return [*rows, "", note]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data")
    parser.add_argument("--limit", type=int, default=2000, help="queries per set at most")
    parser.add_argument("--detectors", default="py3langid,pycld2,langdetect,lingua")
    parser.add_argument("--lingua-high", action="store_true", help="lingua's high-accuracy mode (1.3 GB)")
    args = parser.parse_args()
    sets = query_sets(args.data, args.limit)
    makers = {"py3langid": py3langid_detector, "pycld2": pycld2_detector, "langdetect": langdetect_detector,
              "lingua": lingua_detector(args.lingua_high)}
    chosen = [d.strip() for d in args.detectors.split(",") if d.strip()]
    for name in chosen:
        print("\n".join(measure(name, makers[name], sets)), flush=True)
    print("\n".join(sweep(sets)))


if __name__ == "__main__":
    main()
