"""`POST /_rerank_proxy/events`: what users did with a served page, attributed to the experiment that served it.

The body is one JSON object, a JSON array of them, or NDJSON (one per line), as a front end's beacon or a log
shipper sends it: `{"search_id": "...", "doc_id": "...", "type": "click", "index": "..."}` (`type` defaults to
click, `index` is needed only when one page holds the same id from two indices; other keys are ignored). A batch is
taken whole or refused whole (400, naming the first bad event), so a retried batch is never half counted.
"""
from __future__ import annotations

from typing import Any

import orjson
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from . import metrics
from .capture import CaptureLog
from .config import Events
from .errors import es_error_reply
from .experiments import ExperimentBook
from .wire import Reply, json_reply

MAX_EVENTS = 10_000  # in one batch


class Event(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)

    search_id: str = Field(min_length=1, max_length=128)
    doc_id: str = Field(min_length=1, max_length=512)
    type: str = Field("click", min_length=1, max_length=64)
    index: str | None = Field(None, max_length=255)


class EventError(ValueError):
    pass


def parse_events(body: bytes) -> list[Event]:
    text = body.strip()
    if not text:
        raise EventError("the body holds no event")
    try:
        if text.startswith(b"["):
            items: list[Any] = orjson.loads(text)
        else:
            items = [orjson.loads(line) for line in text.splitlines() if line.strip()]
    except orjson.JSONDecodeError as err:
        raise EventError(f"not JSON or NDJSON: {err}") from None
    if len(items) > MAX_EVENTS:
        raise EventError(f"{len(items)} events in one batch; at most {MAX_EVENTS}")
    events = []
    for number, item in enumerate(items, start=1):
        try:
            events.append(Event.model_validate(item))
        except ValidationError as err:
            problem = err.errors()[0]
            where = ".".join(str(p) for p in problem["loc"]) or "(event)"
            raise EventError(f"event {number}: {where}: {problem['msg']}") from None
    return events


def record_events(events: list[Event], book: ExperimentBook, options: Events,
                  capture: CaptureLog | None = None) -> dict[str, int]:
    results = {"accepted": len(events), "attributed": 0, "unknown_search": 0, "not_served": 0, "not_credited": 0}
    for event in events:
        if capture is not None:
            capture.event(event.search_id, event.doc_id, event.type, event.index)
        if event.type in options.credit_types:
            result = book.credit(event.search_id, event.doc_id, event.index)
        else:
            result = "not-credited"  # kept apart, so a new event type can be seen arriving before it counts
        results[result.replace("-", "_")] += 1
        metrics.EVENTS.inc(event.type if event.type in options.credit_types else "other", result)
    return results


def events_reply(body: bytes | None, book: ExperimentBook, options: Events,
                 capture: CaptureLog | None = None) -> Reply:
    """`body` None: it was larger than `options.max_body_bytes`."""
    if body is None:
        return es_error_reply(413, "rerank_proxy_events_exception",
                              f"an events batch is at most {options.max_body_bytes} bytes")
    try:
        events = parse_events(body)
    except EventError as err:
        return es_error_reply(400, "rerank_proxy_events_exception", str(err))
    return json_reply(200, orjson.dumps(record_events(events, book, options, capture)))
