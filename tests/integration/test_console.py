"""The console in a real browser (headless Chromium) against the real proxy in front of the real clusters: the page
loads clean, a query shows the cluster's order and each variant's reranked order, and these are the orders the
cluster and the proxy serve for the same search; the experiments tab shows the verdicts and charts the eval file.
Its API is an admin endpoint: refused on the data port without the token."""
from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest

from tests.integration.conftest import WINDOW, proxy_config, raw
from tests.proxyrunner import RunningProxy
from tests.rawhttp import exchange

pytestmark = pytest.mark.integration

CHROMIUM = os.environ.get("RERANK_TEST_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
QUERY = "vitamin D deficiency and bone density"
EXPERIMENT = "bm25-vs-minilm"
EVAL = {
    "scifact": {"bm25": {"ndcg@10": 0.6647, "mrr@10": 0.6312, "recall@100": 0.9076},
                "reranked": {"ndcg@10": 0.6841, "mrr@10": 0.6489, "recall@100": 0.9076}},
    "medline": {"bm25": {"ndcg@10": 0.3245, "mrr@10": 0.5123, "recall@100": 0.2466},
                "reranked": {"ndcg@10": 0.3611, "mrr@10": 0.5567, "recall@100": 0.2466}},
}
TOKEN = "console-admin-token"


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    """Debian's Chromium, driven by Playwright (the test extra): missing, the browser tests skip, and fail under CI."""
    missing = None
    try:
        from playwright import sync_api
    except ImportError:
        missing = "playwright is not installed (pip install playwright: the test extra)"
    if missing is None and not Path(CHROMIUM).is_file():
        missing = f"no Chromium at {CHROMIUM}: apt-get install chromium, or set RERANK_TEST_CHROMIUM"
    if missing is not None:
        if os.environ.get("CI"):
            pytest.fail(missing)
        pytest.skip(missing)
    with sync_api.sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        yield launched
        launched.close()


@pytest.fixture(scope="module", params=["elasticsearch", "opensearch"])
def console(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory):
    url = request.getfixturevalue("scifact_es" if request.param == "elasticsearch" else "scifact_os")
    eval_json = tmp_path_factory.mktemp("eval") / "eval.json"
    eval_json.write_bytes(orjson.dumps(EVAL))
    config = proxy_config(url, experiments={EXPERIMENT: {"a": "no-rerank", "b": "control", "indices": ["scifact"]}},
                          console={"eval_json": str(eval_json)})
    with RunningProxy(config) as running:
        yield url, running


@pytest.fixture
def page(browser: Any, console: Any) -> Iterator[Any]:
    """A fresh page on the console, with every console error, page error and failed request it sees."""
    _, running = console
    context = browser.new_context(viewport={"width": 1280, "height": 800})
    opened = context.new_page()
    opened.problems = []
    opened.on("console", lambda m: opened.problems.append(f"console {m.type}: {m.text}") if m.type == "error" else None)
    opened.on("pageerror", lambda e: opened.problems.append(f"page error: {e}"))
    opened.on("requestfailed", lambda r: opened.problems.append(f"request failed: {r.url}"))
    opened.on("response", lambda r: opened.problems.append(f"HTTP {r.status}: {r.url}") if r.status >= 400 else None)
    opened.goto(f"{running.admin_url}/_rerank_proxy/ui")
    opened.wait_for_selector('#index option[value="scifact"]', state="attached")
    yield opened
    context.close()


def _search_body(size: int) -> dict[str, Any]:
    """What the console sends for QUERY: the scifact rule's text fields (title, text) in a multi_match."""
    return {"query": {"multi_match": {"query": QUERY, "fields": ["title", "text"], "lenient": True}}, "size": size}


def _served(url: str, headers: dict[str, str] | None = None, size: int = 10) -> tuple[list[str], Any]:
    reply = raw("POST", f"{url}/scifact/_search", orjson.dumps(_search_body(size)), headers)
    assert reply.status == 200, reply.body
    return [hit["_id"] for hit in orjson.loads(reply.body)["hits"]["hits"]], reply.headers


def _column_ids(page: Any, key: str) -> list[str]:
    return page.eval_on_selector_all(f'[data-column="{key}"] li.hit', "rows => rows.map(r => r.dataset.id)")


def _compare(page: Any, *variants: str) -> None:
    page.select_option("#index", "scifact")
    for variant in variants:
        page.check(f'#variants input[value="{variant}"]')
    page.fill("#query", QUERY)
    page.click("#search")
    for variant in ("control", *variants):  # control is checked from the start
        page.wait_for_selector(f'[data-column="variant:{variant}"] li.hit')


def test_the_console_loads_with_no_errors_and_offers_the_indices_and_variants(page, console):
    _, running = console
    assert page.title() == "rerank-proxy console"
    offered = page.eval_on_selector_all("#index option", "options => options.map(o => o.value)")
    assert "scifact" in offered and not any(name.startswith(".") for name in offered)
    variants = page.eval_on_selector_all("#variants input", "boxes => boxes.map(b => [b.value, b.checked])")
    assert variants == [["control", True], ["small", False], ["no-rerank", False], ["fused", False]]
    assert page.get_by_label("Query").is_visible() and page.get_by_role("button", name="Search").is_enabled()
    answer = raw("GET", f"{running.admin_url}/_rerank_proxy/ui")
    assert answer.headers["Content-Security-Policy"].startswith("default-src 'self'")
    assert page.problems == []


def test_a_query_shows_the_cluster_order_and_the_orders_the_proxy_serves(page, console):
    direct, running = console
    _compare(page, "fused", "no-rerank")
    cluster, _ = _served(direct)
    assert _column_ids(page, "cluster") == cluster
    for variant in ("control", "fused", "no-rerank"):
        headers = {"X-Rerank-Variant": variant, **({} if variant == "no-rerank" else {"X-Rerank": "on"})}
        served, answer = _served(running.url, headers)
        assert _column_ids(page, f"variant:{variant}") == served, variant
        status = page.text_content(f'#summary .status[data-variant="{variant}"]')
        assert status == f"{variant}: X-Rerank-Status: {answer['X-Rerank-Status']}"
    assert _column_ids(page, "variant:control") != cluster, "the model must move something for the test to show"
    assert _column_ids(page, "variant:no-rerank") == cluster
    assert page.problems == []


def test_each_reranked_hit_shows_its_movement_scores_and_the_text_the_model_read(page, console):
    direct, _ = console
    _compare(page)
    window, _ = _served(direct, size=WINDOW)  # the cluster's ranks within the window the proxy reranks
    rows = page.eval_on_selector_all('[data-column="variant:control"] li.hit', """rows => rows.map(r => ({
        id: r.dataset.id, rank: Number(r.querySelector('.rank').textContent),
        badge: r.querySelector('.badge').className, label: r.querySelector('.badge').getAttribute('aria-label'),
        scores: r.querySelector('.scores').textContent, title: r.querySelector('.title').textContent}))""")
    assert [row["rank"] for row in rows] == list(range(1, 11))
    for row in rows:
        was = window.index(row["id"]) + 1
        kind = "new" if was > 10 else "up" if was > row["rank"] else "down" if was < row["rank"] else "same"
        assert row["badge"] == f"badge {kind}", row
        if kind in ("up", "down"):
            assert row["label"] == f"moved {kind} {abs(was - row['rank'])} from cluster rank {was}"
        assert "model " in row["scores"] and "model —" not in row["scores"] and row["title"]
    first = page.locator('[data-column="variant:control"] li.hit').first
    first.locator("details summary").click()
    read = first.locator("pre.read")
    read.wait_for()
    assert read.text_content().startswith(rows[0]["title"])  # the scifact rule reads the title, then the text
    meta = page.eval_on_selector_all('[data-column="variant:control"] .meta', "ps => ps.map(p => p.textContent)")
    assert meta[0] == "status: reranked" and "cluster " in meta[1] and "model " in meta[1]
    assert page.problems == []


def test_the_results_tab_shows_the_experiments_and_charts_the_eval_file(page):
    page.get_by_role("tab", name="Experiments & eval").click()
    row = page.wait_for_selector(f'#experiments tbody tr[data-experiment="{EXPERIMENT}"]')
    cells = row.eval_on_selector_all("th, td", "cells => cells.map(c => c.textContent)")
    assert cells[:3] == [EXPERIMENT, "no-rerank", "control"]
    page.wait_for_selector("#eval-chart svg rect.bar")
    bars = page.eval_on_selector_all("#eval-chart rect.bar", """bars => bars.map(b => [b.dataset.dataset,
        b.dataset.run, Number(b.dataset.value), Number(b.getAttribute('height'))])""")
    expected = sorted((d, r, m["ndcg@10"]) for d, runs in EVAL.items() for r, m in runs.items())
    assert sorted((d, r, v) for d, r, v, _ in bars) == expected
    heights = {(d, r): h for d, r, _, h in bars}
    ratio = heights[("scifact", "reranked")] / heights[("medline", "bm25")]
    assert ratio == pytest.approx(EVAL["scifact"]["reranked"]["ndcg@10"] / EVAL["medline"]["bm25"]["ndcg@10"], rel=1e-3)
    assert page.is_visible("#view-results") and not page.is_visible("#view-compare")
    assert page.problems == []


def test_the_compare_api_answers_json_for_each_variant(console):
    _, running = console
    request = {"index": "scifact", "query": QUERY, "variants": ["control", "small"], "size": 5}
    answer = raw("POST", f"{running.admin_url}/_rerank_proxy/ui/api/compare", orjson.dumps(request))
    assert answer.status == 200, answer.body
    result = orjson.loads(answer.body)
    assert result["request"] == _search_body(5)
    control, small = result["variants"]
    assert control["headers"] == {"X-Rerank-Variant": "control", "X-Rerank": "on"}
    assert (control["window"], small["window"]) == (WINDOW, 5)
    assert all(len(v["hits"]) == 5 and v["status"] == "reranked" for v in (control, small))
    assert set(control["took_ms"]) == {"cluster", "cluster_took", "model"}


@pytest.mark.parametrize(("method", "path"), [
    ("GET", "/_rerank_proxy/ui"), ("GET", "/_rerank_proxy/ui/console.js"), ("GET", "/_rerank_proxy/ui/api/indices"),
    ("POST", "/_rerank_proxy/ui/api/compare"), ("GET", "/_rerank_proxy/ui/api/eval"),
])
def test_the_console_is_refused_on_the_data_port_without_the_token(scifact_es, monkeypatch, method, path):
    monkeypatch.setenv("RERANK_TEST_CONSOLE_TOKEN", TOKEN)
    config = proxy_config(scifact_es, admin={"listen": None, "token_env": "RERANK_TEST_CONSOLE_TOKEN"})
    body = orjson.dumps({"index": "scifact", "query": QUERY}) if method == "POST" else None
    with RunningProxy(config) as running:
        refused = exchange(running.url, method, path, [("Content-Type", "application/json")], body)
        assert refused.status == 401 and refused.header("WWW-Authenticate") == b'Bearer realm="rerank-proxy"'
        allowed = exchange(running.url, method, path,
                           [("Content-Type", "application/json"), ("Authorization", f"Bearer {TOKEN}")], body)
        assert allowed.status == 200, allowed.body


def test_with_its_own_admin_listener_the_data_port_shows_no_console(scifact_es):
    with RunningProxy(proxy_config(scifact_es)) as running:
        direct = exchange(scifact_es, "GET", "/_rerank_proxy/ui")
        proxied = exchange(running.url, "GET", "/_rerank_proxy/ui")
        assert (proxied.status, proxied.body) == (direct.status, direct.body) and proxied.status >= 400
