"""BEIR-format test collections: reading and checking a folder before anything is sent to a cluster.

A collection is a folder with `corpus.jsonl` (`{"_id", "title", "text"}`), `queries.jsonl` (`{"_id", "text"}`) and
`qrels/test.tsv` (header `query-id<TAB>corpus-id<TAB>score`, integer grades). Ids are strings (integers are read as
their decimal text). A folder is checked as a whole and every problem is reported as `FILE:LINE: what`, so a typo
in line 90,000 stops the benchmark before it has created an index or loaded a model.
"""
from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

CORPUS = "corpus.jsonl"
QUERIES = "queries.jsonl"
DEFAULT_QRELS = Path("qrels") / "test.tsv"
MAX_PROBLEMS = 20  # enough to see a pattern; a broken file would otherwise print one line per record


class BeirError(ValueError):
    """The folder cannot be used; `problems` holds one `FILE:LINE: what` message each."""

    def __init__(self, problems: list[str]):
        self.problems = problems
        super().__init__("\n".join(problems))


class _Problems:
    """Collects messages up to MAX_PROBLEMS, then only counts."""

    def __init__(self) -> None:
        self.messages: list[str] = []
        self.dropped = 0

    def add(self, path: Path, line: int | None, message: str) -> None:
        if len(self.messages) < MAX_PROBLEMS:
            self.messages.append(f"{path}:{line}: {message}" if line else f"{path}: {message}")
        else:
            self.dropped += 1

    def raise_if_any(self) -> None:
        if self.messages:
            more = [f"... and {self.dropped} more problem(s)"] if self.dropped else []
            raise BeirError(self.messages + more)


@dataclass(frozen=True)
class Collection:
    """A checked collection. The corpus stays on disk (`iter_corpus`); only its ids are held."""

    path: Path
    doc_ids: frozenset[str]
    queries: dict[str, str]  # every query, file order
    qrels: dict[str, dict[str, int]]  # query id -> {doc id: grade}

    @property
    def name(self) -> str:
        return self.path.name

    @property
    def corpus_file(self) -> Path:
        return self.path / CORPUS

    def judged_queries(self, limit: int | None = None) -> dict[str, str]:
        """Queries with judgments, in file order (as BEIR evaluates: unjudged ones would score 0 for every run)."""
        judged = {qid: text for qid, text in self.queries.items() if qid in self.qrels}
        return dict(list(judged.items())[:limit]) if limit is not None else judged


def _id_of(record: dict[str, Any]) -> str | None:
    """The record's `_id` as a string; None when absent, empty or not a string/integer."""
    value = record.get("_id")
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        return None
    return str(value) if str(value) else None


def _records(path: Path, problems: _Problems) -> Iterator[tuple[int, dict[str, Any]]]:
    """(line number, object) for each non-blank line that holds a JSON object; the others become problems."""
    with open(path, encoding="utf-8") as handle:
        for number, line in enumerate(handle, 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as err:
                problems.add(path, number, f"malformed JSON ({err.msg} at column {err.colno})")
                continue
            if not isinstance(record, dict):
                problems.add(path, number, f"expected a JSON object, got {type(record).__name__}")
                continue
            yield number, record


def _check_records(
    path: Path, problems: _Problems, text_keys: tuple[str, ...], required: tuple[str, ...]
) -> Iterator[tuple[int, str, dict[str, Any]]]:
    """(line, id, record) for records with a usable, unique `_id` and string-valued text keys."""
    first_line: dict[str, int] = {}
    for number, record in _records(path, problems):
        doc_id = _id_of(record)
        if doc_id is None:
            problems.add(path, number, "missing `_id` (a non-empty string)")
            continue
        if doc_id in first_line:
            problems.add(path, number, f"duplicate `_id` {doc_id!r} (first on line {first_line[doc_id]})")
            continue
        first_line[doc_id] = number
        bad = [k for k in text_keys if record.get(k) is not None and not isinstance(record[k], str)]
        bad += [k for k in required if k not in record]
        if bad:
            problems.add(path, number, f"`{bad[0]}` must be a string")
            continue
        yield number, doc_id, record


def read_qrels(path: str | Path) -> dict[str, dict[str, int]]:
    """query id -> {doc id: grade} of a qrels TSV; BeirError names each bad line."""
    problems = _Problems()
    qrels = _read_qrels(Path(path), problems)
    problems.raise_if_any()
    return qrels


def _read_qrels(path: Path, problems: _Problems) -> dict[str, dict[str, int]]:
    """A first line whose score is not a number is the header (BEIR's `query-id corpus-id score`)."""
    qrels: dict[str, dict[str, int]] = {}
    lines: dict[tuple[str, str], int] = {}
    with open(path, encoding="utf-8", newline="") as handle:
        for number, raw in enumerate(handle, 1):
            line = raw.rstrip("\r\n")
            if not line.strip():
                continue
            columns = line.split("\t")
            if len(columns) != 3:
                problems.add(path, number, f"expected 3 tab-separated columns (query-id, corpus-id, score), "
                                           f"got {len(columns)}")
                continue
            qid, doc_id, grade = (c.strip() for c in columns)
            try:
                score = int(grade)
            except ValueError:
                if number == 1:
                    continue  # the header
                problems.add(path, number, f"score {grade!r} is not an integer")
                continue
            if not qid or not doc_id:
                problems.add(path, number, "empty query-id or corpus-id")
                continue
            if (qid, doc_id) in lines:
                problems.add(path, number, f"duplicate judgment of ({qid}, {doc_id}) (first on line "
                                           f"{lines[qid, doc_id]})")
                continue
            lines[qid, doc_id] = number
            qrels.setdefault(qid, {})[doc_id] = score
    return qrels


def _qrels_lines(path: Path) -> Iterator[tuple[int, str, str]]:
    """(line, query id, doc id) of the data lines of a qrels file already read without problems."""
    with open(path, encoding="utf-8", newline="") as handle:
        for number, raw in enumerate(handle, 1):
            columns = raw.rstrip("\r\n").split("\t")
            if len(columns) == 3:
                try:
                    int(columns[2])
                except ValueError:
                    continue
                yield number, columns[0].strip(), columns[1].strip()


def load_collection(folder: str | Path, qrels: str | Path | None = None, *, structured: bool = False) -> Collection:
    """Reads and checks a whole collection; raises BeirError listing every problem (up to MAX_PROBLEMS).

    `qrels` is another judgments file (e.g. `qrels/test_sample.tsv`); default `qrels/test.tsv` in the folder.
    `structured`: every document's `text` must hold a JSON object (see `document_source`)."""
    folder = Path(folder)
    qrels_path = Path(qrels) if qrels is not None else folder / DEFAULT_QRELS
    problems = _Problems()
    if not folder.is_dir():
        problems.add(folder, None, "not a folder")
        problems.raise_if_any()
    paths = (folder / CORPUS, folder / QUERIES, qrels_path)
    for path in paths:
        if not path.is_file():
            problems.add(path, None, "missing file")
    problems.raise_if_any()

    documents = _check_records(paths[0], problems, ("title", "text"), ())
    if structured:
        documents = _check_structured(documents, paths[0], problems)
    doc_ids = frozenset(doc_id for _, doc_id, _ in documents)
    queries = {qid: q["text"] for _, qid, q in _check_records(paths[1], problems, ("text",), ("text",))}
    judgments = _read_qrels(qrels_path, problems)
    if not problems.messages:  # ids are only worth checking against files that were read whole
        for number, qid, doc_id in _qrels_lines(qrels_path):
            if qid not in queries:
                problems.add(qrels_path, number, f"query-id {qid!r} is not in {QUERIES}")
            if doc_id not in doc_ids:
                problems.add(qrels_path, number, f"corpus-id {doc_id!r} is not in {CORPUS}")
        if not judgments and not problems.messages:
            problems.add(qrels_path, None, "no judgments")
    problems.raise_if_any()
    return Collection(folder, doc_ids, queries, judgments)


def _check_structured(
    documents: Iterator[tuple[int, str, dict[str, Any]]], path: Path, problems: _Problems
) -> Iterator[tuple[int, str, dict[str, Any]]]:
    """The documents whose `text` is a JSON object (with no `title` key of its own); the others become problems."""
    for number, doc_id, record in documents:
        try:
            fields = json.loads(record.get("text") or "")
        except json.JSONDecodeError as err:
            problems.add(path, number, f"`text` is not JSON ({err.msg}); a structured corpus holds one JSON "
                                       "object per text")
            continue
        if not isinstance(fields, dict) or "title" in fields:
            problems.add(path, number, "`text` must hold a JSON object without a `title` key")
            continue
        yield number, doc_id, record


def document_source(doc: dict[str, str], structured: bool) -> dict[str, Any]:
    """The `_source` indexed for one corpus document: title and text, or with `structured` the title beside the
    fields of the JSON object `text` holds (so the cluster maps them and the proxy sees them as structure)."""
    if structured:
        return {"title": doc["title"], **json.loads(doc["text"])}
    return {"title": doc["title"], "text": doc["text"]}


def iter_corpus(path: str | Path) -> Iterator[dict[str, str]]:
    """Documents of a corpus.jsonl in file order, each `{"_id", "title", "text"}` (missing text reads as "")."""
    with open(path, encoding="utf-8") as handle:
        for line in handle:
            if line.strip():
                doc = json.loads(line)
                yield {"_id": str(doc["_id"]), "title": doc.get("title") or "", "text": doc.get("text") or ""}


def read_queries(path: str | Path) -> dict[str, str]:
    """query id -> text of a queries.jsonl, in file order."""
    with open(path, encoding="utf-8") as handle:
        return {str(q["_id"]): q["text"] for q in (json.loads(line) for line in handle if line.strip())}
