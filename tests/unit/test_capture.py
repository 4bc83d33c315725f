"""Capture: sampled searches, their shadow results and events as JSONL, off the event loop, bounded, rotated."""
import threading
from datetime import UTC, datetime

import orjson
from prometheus_client import REGISTRY

from proxy.capture import CaptureLog, RotatingJsonl, search_record
from proxy.config import Capture
from proxy.search import Scored
from rerank.ranking import RankedHit

AT = datetime(2026, 12, 2, 12, 0, 0, 123000, tzinfo=UTC)


def scored():
    # the cluster's 0,1,2; the model served 2,0,1; a hit past the window (3) kept the cluster's place
    ranking = [RankedHit(2, 0.9, 0.9), RankedHit(0, 0.5, 0.5), RankedHit(1, 0.1, 0.1), RankedHit(3, None, None)]
    return Scored(ranking, "reranked", 12.5, None, ["t0", "t1", "t2"], [3.0, 2.0, 1.0, 0.5],
                  [("docs", "a"), ("docs", "b"), ("docs", "c")])


def lines(path):
    return [orjson.loads(line) for line in path.read_bytes().splitlines()]


def started(tmp_path, **options):
    return CaptureLog(Capture(path=tmp_path / "capture.jsonl", **options), clock=lambda: AT)


def test_a_search_record_holds_the_window_the_served_order_and_the_model_scores(tmp_path):
    log = started(tmp_path)
    record = search_record(scored(), index="docs", variant="control", model="m", took_ms=20.0)
    log.search("s1", record, "what is vitamin d", ["t0", "t1", "t2"])
    log.close()
    (line,) = lines(tmp_path / "capture.jsonl")
    assert line["type"] == "search" and line["time"] == "2026-12-02T12:00:00.123Z" and line["search_id"] == "s1"
    assert line["query"] == "what is vitamin d" and "documents" not in line
    assert line["served"] == [2, 0, 1] and line["model_scores"] == [0.5, 0.1, 0.9]
    assert line["window"][0] == {"index": "docs", "id": "a", "cluster_score": 3.0}
    assert line["timings"] == {"model_ms": 12.5, "total_ms": 20.0}


def test_queries_can_be_hashed_and_documents_written_only_when_asked(tmp_path):
    log = started(tmp_path, hash_queries=True, documents=True)
    log.search("s1", {}, "secret query", ["t0"])
    log.close()
    (line,) = lines(tmp_path / "capture.jsonl")
    assert "query" not in line and len(line["query_sha256"]) == 64 and b"secret" not in (
        tmp_path / "capture.jsonl").read_bytes()
    assert line["documents"] == ["t0"]


def test_events_are_written_for_captured_searches_only(tmp_path):
    log = started(tmp_path)
    log.search("s1", {}, "q", [])
    log.event("s1", "a", "click", None)
    log.event("other", "a", "click", None)
    log.shadow("s1", {"model": "m2", "order": [0, 1]})
    log.close()
    assert [(line["type"], line["search_id"]) for line in lines(tmp_path / "capture.jsonl")] == [
        ("search", "s1"), ("event", "s1"), ("shadow", "s1")]


def test_sampling_follows_the_rate_and_a_per_index_rate_wins(tmp_path):
    draws = iter([0.2, 0.2, 0.2])
    log = CaptureLog(Capture(path=tmp_path / "c.jsonl", sample=0.1), rng=lambda: next(draws))
    assert not log.sampled(None) and log.sampled(0.5) and not log.sampled(0.0)
    log.close()


class HeldWriter(RotatingJsonl):
    """Writes only once released: the writer thread stuck on a slow disk."""

    def __init__(self, path):
        super().__init__(path, 1 << 20, 1)
        self.gate = threading.Event()
        self.entered = threading.Event()

    def write(self, line):
        self.entered.set()
        self.gate.wait(10)
        super().write(line)


def captured(type_, result):
    return REGISTRY.get_sample_value("rerank_proxy_capture_records_total", {"type": type_, "result": result}) or 0


def test_a_full_queue_drops_and_counts_records_and_never_blocks(tmp_path):
    writer = HeldWriter(tmp_path / "held.jsonl")
    log = CaptureLog(Capture(path=tmp_path / "held.jsonl", queue_records=2), writer=writer)
    before = captured("search", "dropped")
    log.search("s0", {}, "q", [])
    assert writer.entered.wait(10)  # the first record is in the writer's hands; two fit in the queue
    for i in range(1, 6):
        log.search(f"s{i}", {}, "q", [])
    assert captured("search", "dropped") == before + 3
    writer.gate.set()
    log.close()
    assert [line["search_id"] for line in lines(tmp_path / "held.jsonl")] == ["s0", "s1", "s2"]


def test_files_rotate_at_max_bytes_and_keep_the_backups(tmp_path):
    path = tmp_path / "r.jsonl"
    writer = RotatingJsonl(path, max_bytes=100, backups=2)
    for i in range(10):
        writer.write(b"x" * 45 + f"{i}\n".encode())
    writer.close()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r.jsonl", "r.jsonl.1", "r.jsonl.2"]
    assert path.read_bytes().endswith(b"9\n") and all(p.stat().st_size <= 100 for p in tmp_path.iterdir())
