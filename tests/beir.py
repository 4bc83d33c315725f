"""Readers for the BEIR-format test collections in ../shared/data (provenance in SOURCES.md there).

Each collection is a folder with `corpus.jsonl` (`{"_id", "title", "text"}`), `queries.jsonl` (`{"_id", "text"}`)
and `qrels/<split>.tsv` (header `query-id corpus-id score`); all ids are strings. Multilingual sets nest one
level deeper, so a name is a relative path: `scifact`, `xquad-r/en`.
"""
from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

from rerank_proxy_tools.beir import CORPUS, QUERIES, iter_corpus, read_qrels, read_queries

REPO_ROOT = Path(__file__).resolve().parents[1]


def data_root() -> Path:
    """$RERANK_DATA_DIR, else `<repo>/../shared/data`."""
    env = os.environ.get("RERANK_DATA_DIR")
    return Path(env).expanduser() if env else REPO_ROOT.parent / "shared" / "data"


def collection_dir(name: str) -> Path:
    path = data_root() / name
    if not (path / CORPUS).is_file():
        raise FileNotFoundError(f"no BEIR collection {name!r} at {path} (set RERANK_DATA_DIR to the data folder)")
    return path


def load_beir_corpus(name: str) -> Iterator[dict[str, str]]:
    """Documents in file order, each `{"_id", "title", "text"}` (title may be empty)."""
    return iter_corpus(collection_dir(name) / CORPUS)


def corpus_size(name: str) -> int:
    return sum(1 for _ in iter_corpus(collection_dir(name) / CORPUS))


def load_beir_qrels(name: str, split: str = "test") -> dict[str, dict[str, int]]:
    """query id -> {doc id: relevance grade}."""
    return read_qrels(collection_dir(name) / "qrels" / f"{split}.tsv")


def load_beir_queries(name: str, split: str = "test", *, judged_only: bool = True) -> dict[str, str]:
    """query id -> text, in file order.

    By default only queries with judgments in `split`, as BEIR's own loader does: some sets (CISI) list
    queries nobody judged, and scoring them would drag every metric down equally.
    """
    queries = read_queries(collection_dir(name) / QUERIES)
    if not judged_only:
        return queries
    judged = load_beir_qrels(name, split)
    return {qid: text for qid, text in queries.items() if qid in judged}
