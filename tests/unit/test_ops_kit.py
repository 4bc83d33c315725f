"""The operations kit under docker/: the Grafana dashboard, the Prometheus alert rules and their unit tests, the
scrape config and the compose `ops` profile that wires them together.

Every metric a dashboard panel, a dashboard variable or an alert names must be one the proxy exports: the names are
read from prometheus_client's registry after importing proxy.metrics and rerank.metrics, as GET
/_rerank_proxy/metrics serves it. promtool (built from the Go module proxy, tests/gotool.py) checks the rules,
runs alerts_test.yml, checks prometheus.yml, and parses every panel's PromQL. Without Go the promtool tests skip,
except under CI, where they fail.
"""
from __future__ import annotations

import json
import os
import re
import subprocess
from collections.abc import Iterator
from pathlib import Path, PurePosixPath
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml
from prometheus_client import REGISTRY

import proxy.metrics
import rerank.metrics
from proxy.admin import ADMIN_PREFIX
from tests.gotool import go_binary

ROOT = Path(__file__).resolve().parent.parent.parent
DOCKER = ROOT / "docker"
DASHBOARD = DOCKER / "grafana" / "rerank-proxy.json"
ALERTS = DOCKER / "prometheus" / "alerts.yml"
ALERTS_TEST = DOCKER / "prometheus" / "alerts_test.yml"
PROMETHEUS_CONFIG = DOCKER / "prometheus" / "prometheus.yml"
COMPOSE = DOCKER / "compose.yaml"

PROMTOOL_PACKAGE = "github.com/prometheus/prometheus/cmd/promtool"
PROMTOOL_VERSION = "v0.316.0"  # the Go module of Prometheus 3.16 (module versions are v0.3MM.P for v3.MM.P)
# A first build takes about 10 minutes on two busy cores, past the suite's 900 s per-test timeout; the test that
# happens to build it gets longer.
PROMTOOL_BUILD_S = 1800
needs_promtool = pytest.mark.timeout(PROMTOOL_BUILD_S + 300)

# Series Prometheus records itself for every scrape target: an alert may name these, though the proxy does not export
# them.
SCRAPE_SERIES = frozenset({"up"})

# --- PromQL: which metric names an expression reads -----------------------------------------------------------------

AGGREGATIONS = frozenset({
    "sum", "min", "max", "avg", "group", "stddev", "stdvar", "count", "count_values", "bottomk", "topk", "quantile",
    "limitk", "limit_ratio",
})
FUNCTIONS = frozenset({
    "abs", "absent", "absent_over_time", "acos", "acosh", "asin", "asinh", "atan", "atanh", "avg_over_time", "ceil",
    "changes", "clamp", "clamp_max", "clamp_min", "cos", "cosh", "count_over_time", "day_of_month", "day_of_week",
    "day_of_year", "days_in_month", "deg", "delta", "deriv", "exp", "floor", "histogram_avg", "histogram_count",
    "histogram_fraction", "histogram_quantile", "histogram_stddev", "histogram_stdvar", "histogram_sum", "hour",
    "idelta", "increase", "irate", "label_join", "label_replace", "last_over_time", "ln", "log10", "log2",
    "mad_over_time", "max_over_time", "min_over_time", "minute", "month", "pi", "predict_linear",
    "present_over_time", "quantile_over_time", "rad", "rate", "resets", "round", "scalar", "sgn", "sin", "sinh",
    "sort", "sort_by_label", "sort_by_label_desc", "sort_desc", "sqrt", "stddev_over_time", "stdvar_over_time",
    "sum_over_time", "tan", "tanh", "time", "timestamp", "vector", "year",
})
KEYWORDS = frozenset({
    "by", "without", "on", "ignoring", "group_left", "group_right", "bool", "and", "or", "unless", "offset", "atan2",
    "inf", "nan",
})
AT_MODIFIERS = frozenset({"start", "end"})  # `x @ start()`
_STRING = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`')
_GROUPING = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^()]*\)", re.IGNORECASE)
_TOKEN = re.compile(
    r"(?P<number>(?:0x[0-9a-fA-F]+|(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?)(?:ms|[smhdwy])*)"
    r"|(?P<ident>[a-zA-Z_:][a-zA-Z0-9_:]*)"
    r"|(?P<other>\S)"
)


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression selects. Strings, label matchers (`{...}`), ranges and subqueries
    (`[...]`) and grouping label lists (`by (...)`, `on (...)`, ...) are dropped first; of the identifiers left,
    one followed by `(` must be a function or aggregation (ValueError otherwise), keywords are skipped, and every
    other one is a metric name. A name given as `{__name__="..."}` is refused: write the name itself."""
    if "__name__" in expr:
        raise ValueError(f"select metrics by name, not by __name__: {expr!r}")
    text = _STRING.sub('""', expr)
    text = re.sub(r"\{[^{}]*\}", " ", text)
    text = re.sub(r"\[[^\[\]]*\]", " ", text)
    text = _GROUPING.sub(" ", text)
    names: set[str] = set()
    tokens = [(m.lastgroup, m.group()) for m in _TOKEN.finditer(text)]
    for i, (kind, value) in enumerate(tokens):
        if kind != "ident":
            continue
        called = i + 1 < len(tokens) and tokens[i + 1][1] == "("
        if called:
            if value not in FUNCTIONS | AGGREGATIONS | AT_MODIFIERS:
                raise ValueError(f"unknown PromQL function {value!r} in {expr!r}")
        elif value.lower() not in KEYWORDS:
            names.add(value)
    return names


def selectors(expr: str) -> Iterator[tuple[str, str]]:
    """(metric name, label matchers between its braces) for each `name{...}` in an expression."""
    for match in re.finditer(r"([a-zA-Z_:][a-zA-Z0-9_:]*)\{([^{}]*)\}", _STRING.sub(_keep_braces_out, expr)):
        yield match.group(1), match.group(2)


def _keep_braces_out(match: re.Match[str]) -> str:
    return match.group().replace("{", "(").replace("}", ")")  # a `{` inside a matcher's string is not a selector


# --- what the proxy exports ------------------------------------------------------------------------------------------

_SUFFIXES = {
    "counter": ("_total", "_created"),
    "gauge": ("",),
    "histogram": ("_bucket", "_sum", "_count", "_created"),
    "gaugehistogram": ("_bucket", "_gsum", "_gcount"),
    "summary": ("", "_sum", "_count", "_created"),
    "info": ("_info",),
    "stateset": ("",),
    "unknown": ("",),
}


def exported_metrics() -> set[str]:
    """Every sample name the proxy's registry serves: the samples present now, and for families with no samples yet
    (labelled metrics nothing has touched) the names their type gives them."""
    assert proxy.metrics.REQUESTS and rerank.metrics.MODEL_UP  # both modules registered their metrics
    names: set[str] = set()
    for family in REGISTRY.collect():
        names.update(sample.name for sample in family.samples)
        names.update(family.name + suffix for suffix in _SUFFIXES[family.type])
    return names


def unknown_metrics(exprs: dict[str, str], exported: set[str]) -> dict[str, set[str]]:
    """Where (the key) which names an expression reads that are not exported."""
    return {where: missing for where, expr in exprs.items() if (missing := metric_names(expr) - exported)}


@pytest.fixture(scope="module")
def exported() -> set[str]:
    return exported_metrics()


# --- the extractor and the check themselves ---------------------------------------------------------------------------

def test_metric_names_finds_every_selected_name_and_nothing_else() -> None:
    expr = ('histogram_quantile(0.95, sum by (le, model) (rate(a_bucket{model=~"$model", le!="up{x}", '
            'job="rate(b)"}[$__rate_interval]))) / on (model) group_left (kind) b:recorded offset 5m + 1e-9 '
            '* sum(rate(c_total[5m:30s])) without (instance) > bool 0.5 and d unless ignoring (x) e{} or vector(0)')
    assert metric_names(expr) == {"a_bucket", "b:recorded", "c_total", "d", "e"}
    assert metric_names("up == 0") == {"up"}
    assert metric_names("rate(x_total[5m] @ end()) > 0") == {"x_total"}
    assert metric_names("sum(rate(x_total[5m])) by (job)") == {"x_total"}


def test_metric_names_refuses_what_it_cannot_read() -> None:
    with pytest.raises(ValueError, match="unknown PromQL function"):
        metric_names("rerank_model_up (1)")
    with pytest.raises(ValueError, match="__name__"):
        metric_names('{__name__="rerank_model_up"}')


def test_a_metric_the_proxy_does_not_export_is_reported(exported: set[str]) -> None:
    exprs = {
        "real": 'sum(rate(rerank_proxy_searches_total{outcome="fallback"}[5m]))',
        "typo": 'sum(rate(rerank_proxy_search_total{outcome="fallback"}[5m]))',
        "no suffix": "rate(rerank_proxy_rerank_seconds[5m])",  # a histogram is read as _bucket, _sum or _count
        "tally without _total": "rerank_proxy_requests",
    }
    assert unknown_metrics(exprs, exported) == {
        "typo": {"rerank_proxy_search_total"},
        "no suffix": {"rerank_proxy_rerank_seconds"},
        "tally without _total": {"rerank_proxy_requests"},
    }


def test_exported_names_follow_each_metric_type(exported: set[str]) -> None:
    """A Counter and a Tally named `x_total` export `x_total`; a Histogram `_bucket`, `_sum`, `_count`; a Gauge
    its name, whether or not anything has touched them yet."""
    assert {"rerank_proxy_requests_total", "rerank_proxy_fallbacks_total", "rerank_proxy_rerank_seconds_bucket",
            "rerank_queue_wait_seconds_count", "rerank_batch_fill_ratio_sum", "rerank_model_up",
            "rerank_proxy_experiment_p_value", "process_cpu_seconds_total"} <= exported
    assert not {"rerank_proxy_requests", "rerank_proxy_requests_total_total", "rerank_model_up_total"} & exported


# --- the dashboard ----------------------------------------------------------------------------------------------------

def _dashboard() -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return loaded


def _panels(panels: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    for panel in panels:
        yield panel
        yield from _panels(panel.get("panels", []))  # a collapsed row holds its panels


def _panel_exprs() -> dict[str, str]:
    exprs = {}
    for panel in _panels(_dashboard()["panels"]):
        for target in panel.get("targets", []):
            exprs[f"panel {panel['id']} {panel['title']!r} target {target['refId']}"] = target["expr"]
    return exprs


def _variable_queries() -> dict[str, str]:
    """The series selector inside each query variable's `label_values(SELECTOR, LABEL)`."""
    queries = {}
    for variable in _dashboard()["templating"]["list"]:
        if variable["type"] == "query":
            query = variable["query"]["query"] if isinstance(variable["query"], dict) else variable["query"]
            match = re.fullmatch(r"label_values\((.+),\s*([a-zA-Z_]\w*)\)", query)
            assert match, f"variable {variable['name']}: {query!r} is not label_values(selector, label)"
            queries[f"variable {variable['name']}"] = match.group(1)
    return queries


def test_every_dashboard_panel_reads_only_exported_metrics(exported: set[str]) -> None:
    exprs = _panel_exprs()
    assert len(exprs) >= 30
    assert unknown_metrics(exprs, exported) == {}
    assert unknown_metrics(_variable_queries(), exported) == {}


def test_dashboard_covers_what_on_call_needs() -> None:
    used = set().union(*(metric_names(expr) for expr in _panel_exprs().values()))
    assert {
        "rerank_proxy_requests_total", "rerank_proxy_searches_total", "rerank_proxy_fallbacks_total",
        "rerank_proxy_rerank_seconds_bucket", "rerank_queue_searches", "rerank_queue_wait_seconds_bucket",
        "rerank_batch_fill_ratio_bucket", "rerank_model_up", "rerank_model_circuit_state",
        "rerank_proxy_upstream_errors_total", "rerank_score_cache_total", "rerank_proxy_api_requests_total",
        "rerank_proxy_api_seconds_bucket", "rerank_proxy_shadow_searches_total", "rerank_proxy_experiment_searches",
        "rerank_rejected_total", "rerank_model_batch_seconds_bucket",
    } <= used


def test_dashboard_is_templated_on_datasource_job_and_instance() -> None:
    dashboard = _dashboard()
    assert 36 <= dashboard["schemaVersion"] <= 41
    assert dashboard["uid"] and dashboard["title"] == "rerank-proxy"
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource" and variables["datasource"]["query"] == "prometheus"
    for name in ("job", "instance", "model"):
        assert variables[name]["type"] == "query"
        assert variables[name]["datasource"] == {"type": "prometheus", "uid": "${datasource}"}
    panels = list(_panels(dashboard["panels"]))
    ids = [panel["id"] for panel in panels]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    for panel in panels:
        grid = panel["gridPos"]
        assert grid["x"] >= 0 and grid["w"] > 0 and grid["x"] + grid["w"] <= 24, panel["title"]
        if panel["type"] == "row":
            continue
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, panel["title"]
        assert panel["targets"], f"panel {panel['title']!r} has no query"
        for target in panel["targets"]:
            assert target["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, panel["title"]
    # Panels do not overlap: each grid cell belongs to one panel.
    cells: dict[tuple[int, int], str] = {}
    for panel in panels:
        grid = panel["gridPos"]
        for x in range(grid["x"], grid["x"] + grid["w"]):
            for y in range(grid["y"], grid["y"] + grid["h"]):
                assert (x, y) not in cells, f"{panel['title']!r} overlaps {cells[(x, y)]!r}"
                cells[(x, y)] = panel["title"]


def test_every_panel_selector_follows_the_job_and_instance_variables() -> None:
    for where, expr in _panel_exprs().items():
        found = list(selectors(expr))
        assert found, f"{where}: no selector with label matchers"
        for name, matchers in found:
            assert 'job=~"$job"' in matchers and 'instance=~"$instance"' in matchers, f"{where}: {name}{{{matchers}}}"
        assert {name for name, _ in found} == metric_names(expr), f"{where}: a metric without the variables"


def test_quantiles_aggregate_buckets_by_le() -> None:
    quantiles = 0
    for where, expr in _panel_exprs().items():
        for call in re.finditer(r"histogram_quantile\(\s*0?\.\d+,\s*sum by \(([^)]*)\) \(rate\(([a-z_]+)\{", expr):
            quantiles += 1
            assert "le" in [label.strip() for label in call.group(1).split(",")], where
            assert call.group(2).endswith("_bucket"), where
        assert expr.count("histogram_quantile(") == len(re.findall(r"histogram_quantile\(\s*0?\.\d+,\s*sum by", expr))
    assert quantiles >= 12


# --- the alert rules --------------------------------------------------------------------------------------------------

REQUIRED_ALERTS = {
    "RerankProxyDown", "RerankProxyFallbackRateHigh", "RerankProxyDeadlineRateHigh", "RerankQueueFull",
    "RerankQueueBacklog", "RerankProxyUpstreamErrors", "RerankModelDown", "RerankModelCircuitOpen",
}


def _rules() -> list[dict[str, Any]]:
    groups = yaml.safe_load(ALERTS.read_text())["groups"]
    return [rule for group in groups for rule in group["rules"]]


def test_every_alert_reads_only_exported_metrics(exported: set[str]) -> None:
    exprs = {rule["alert"]: rule["expr"] for rule in _rules()}
    assert unknown_metrics(exprs, exported | SCRAPE_SERIES) == {}
    scrape_job = yaml.safe_load(PROMETHEUS_CONFIG.read_text())["scrape_configs"][0]["job_name"]
    for alert, expr in exprs.items():
        if metric_names(expr) & SCRAPE_SERIES:  # `up` is every target's: it must name the proxy's job
            assert {("up", f'job="{scrape_job}"')} <= set(selectors(expr)), alert


def test_alert_rules_are_complete() -> None:
    rules = _rules()
    names = [rule["alert"] for rule in rules]
    assert len(names) == len(set(names))
    assert REQUIRED_ALERTS <= set(names)
    for rule in rules:
        assert re.fullmatch(r"\d+[smh]", rule["for"]), rule["alert"]
        assert rule["labels"]["severity"] in ("critical", "warning"), rule["alert"]
        assert {"summary", "description", "runbook"} <= set(rule["annotations"]), rule["alert"]
        runbook = rule["annotations"]["runbook"]
        assert '"Operations kit"' in runbook and rule["alert"] in runbook, rule["alert"]
    readme = (ROOT / "README.md").read_text()
    for name in names:  # the README says what each alert means
        assert f"`{name}`" in readme, f"README does not explain {name}"


def test_alert_unit_tests_fire_every_alert_and_a_healthy_case_fires_none() -> None:
    spec = yaml.safe_load(ALERTS_TEST.read_text())
    assert spec["rule_files"] == ["alerts.yml"]
    fired: set[str] = set()
    healthy_checks: set[str] = set()
    for case in spec["tests"]:
        for check in case.get("alert_rule_test", []):
            if check.get("exp_alerts"):
                fired.add(check["alertname"])
            elif "healthy" in case.get("name", ""):
                healthy_checks.add(check["alertname"])
    every = {rule["alert"] for rule in _rules()}
    assert fired == every, f"no test that fires {every - fired}"
    assert healthy_checks == every, f"the healthy case does not check {every - healthy_checks}"


# --- promtool ---------------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def promtool() -> Path:
    """promtool from $RERANK_TEST_PROMTOOL, else built once into .cache/bin (minutes the first time)."""
    prebuilt = os.environ.get("RERANK_TEST_PROMTOOL")
    if prebuilt:
        return Path(prebuilt)
    try:
        return go_binary(PROMTOOL_PACKAGE, PROMTOOL_VERSION, "promtool", timeout_s=PROMTOOL_BUILD_S)
    except RuntimeError as err:
        reason = f"promtool could not be built: {err}"
        if os.environ.get("CI"):
            pytest.fail(reason)
        pytest.skip(reason)


def _promtool(promtool: Path, *args: str, cwd: Path = DOCKER / "prometheus") -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(promtool), *args], cwd=cwd, capture_output=True, text=True, timeout=120)


@needs_promtool
def test_promtool_checks_the_rules_and_the_config(promtool: Path) -> None:
    checked = _promtool(promtool, "check", "rules", "alerts.yml")
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert f"SUCCESS: {len(_rules())} rules found" in checked.stdout
    config = _promtool(promtool, "check", "config", "--syntax-only", "prometheus.yml")
    assert config.returncode == 0, config.stdout + config.stderr


@needs_promtool
def test_promtool_unit_tests_pass(promtool: Path) -> None:
    tested = _promtool(promtool, "test", "rules", "alerts_test.yml")
    assert tested.returncode == 0, tested.stdout + tested.stderr
    assert "SUCCESS" in tested.stdout


@needs_promtool
def test_promtool_unit_tests_catch_a_broken_rule(promtool: Path, tmp_path: Path) -> None:
    """The unit tests can fail: with the fallback threshold raised out of reach, the case that expects the alert
    does not get it."""
    spec = yaml.safe_load(ALERTS.read_text())
    [rule] = [rule for group in spec["groups"] for rule in group["rules"] if rule["alert"] == "RerankProxyFallbackRateHigh"]
    assert rule["expr"].rstrip().endswith("> 0.05")
    rule["expr"] = rule["expr"].rstrip().removesuffix("> 0.05") + "> 0.5"
    (tmp_path / "alerts.yml").write_text(yaml.safe_dump(spec))
    (tmp_path / "alerts_test.yml").write_text(ALERTS_TEST.read_text())
    tested = _promtool(promtool, "test", "rules", "alerts_test.yml", cwd=tmp_path)
    assert tested.returncode != 0
    assert "RerankProxyFallbackRateHigh" in tested.stdout + tested.stderr


@needs_promtool
def test_promtool_parses_every_dashboard_query(promtool: Path, tmp_path: Path) -> None:
    """Each panel's PromQL, with Grafana's variables given values, as a recording rule: `check rules` parses it."""
    values = {"$__rate_interval": "1m", "$job": "rerank-proxy", "$instance": ".*", "$model": ".*"}
    rules = []
    for i, expr in enumerate(_panel_exprs().values()):
        for variable, value in values.items():
            expr = expr.replace(variable, value)
        assert "$" not in expr, expr
        rules.append({"record": f"dashboard:query_{i}", "expr": expr})
    (tmp_path / "dashboard.yml").write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    checked = _promtool(promtool, "check", "rules", "dashboard.yml", cwd=tmp_path)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert f"SUCCESS: {len(rules)} rules found" in checked.stdout


# --- compose, scrape config, Grafana provisioning ---------------------------------------------------------------------

def _compose() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load(COMPOSE.read_text())
    return loaded


def _mounts(service: dict[str, Any]) -> dict[PurePosixPath, Path]:
    """Container path -> host path of a service's bind mounts (sources relative to docker/)."""
    mounts = {}
    for volume in service.get("volumes", []):
        source, target = volume.split(":")[:2]
        if source.startswith("."):
            mounts[PurePosixPath(target)] = (DOCKER / source).resolve()
    return mounts


def _host_path(mounts: dict[PurePosixPath, Path], path: str) -> Path:
    """Where a container path lies on the host, through the bind mount that holds it."""
    inside = PurePosixPath(path)
    for target, source in sorted(mounts.items(), key=lambda item: -len(item[0].parts)):
        if inside == target or target in inside.parents:
            return source.joinpath(*inside.relative_to(target).parts)
    raise AssertionError(f"{path} is not in a bind mount: {sorted(map(str, mounts))}")


def _flag(command: list[str], name: str) -> str:
    values = [arg.split("=", 1)[1] for arg in command if arg.startswith(f"--{name}=")]
    assert len(values) == 1, f"--{name} in {command}"
    return values[0]


def test_compose_ops_profile_wires_prometheus_and_grafana() -> None:
    services = _compose()["services"]
    prometheus, grafana = services["prometheus"], services["grafana"]
    assert prometheus["profiles"] == ["ops"] and grafana["profiles"] == ["ops"]
    for name, service in services.items():  # the profile leaves the default stack as it was
        if name not in ("prometheus", "grafana"):
            assert "ops" not in service.get("profiles", []), name
    for service in (prometheus, grafana):
        for source in _mounts(service).values():
            assert source.exists(), source
    # Prometheus: its config and rule files through its mounts.
    mounts = _mounts(prometheus)
    config_file = _host_path(mounts, _flag(prometheus["command"], "config.file"))
    assert config_file == PROMETHEUS_CONFIG.resolve()
    config = yaml.safe_load(config_file.read_text())
    container_dir = PurePosixPath(_flag(prometheus["command"], "config.file")).parent
    for rule_file in config["rule_files"]:
        assert _host_path(mounts, str(container_dir / rule_file)) == ALERTS.resolve()
    # It shares the proxy's network: the proxy publishes its UI port, Grafana reaches it by the proxy's name.
    assert prometheus["network_mode"] == "service:proxy"
    assert "ports" not in prometheus
    port = urlsplit("//" + _flag(prometheus["command"], "web.listen-address")).port
    assert any(str(mapping).endswith(f":{port}:{port}") for mapping in services["proxy"]["ports"])
    datasource = _grafana_datasource_url(grafana)
    assert (datasource.hostname, datasource.port) == ("proxy", port)


def _grafana_datasource_url(grafana: dict[str, Any]) -> Any:
    mounts = _mounts(grafana)
    provisioning = _host_path(mounts, "/etc/grafana/provisioning")
    sources = [source for path in sorted((provisioning / "datasources").glob("*.yaml"))
               for source in yaml.safe_load(path.read_text())["datasources"]]
    assert [source["type"] for source in sources] == ["prometheus"]
    return urlsplit(sources[0]["url"])


def test_scrape_config_reaches_the_admin_listeners_metrics() -> None:
    config = yaml.safe_load(PROMETHEUS_CONFIG.read_text())
    [job] = config["scrape_configs"]
    assert job["metrics_path"] == ADMIN_PREFIX + "metrics"
    # Sharing the proxy container's network namespace, Prometheus reaches the admin listener where
    # docker/config.yaml puts it: the container's loopback.
    admin_listen = yaml.safe_load((DOCKER / "config.yaml").read_text())["admin"]["listen"]
    assert job["static_configs"][0]["targets"] == [admin_listen]
    assert config["rule_files"] == ["alerts.yml"]


def test_grafana_provisioning_points_at_files_that_exist() -> None:
    grafana = _compose()["services"]["grafana"]
    mounts = _mounts(grafana)
    provisioning = _host_path(mounts, "/etc/grafana/provisioning")
    assert provisioning == (DOCKER / "grafana" / "provisioning").resolve()
    datasources = sorted((provisioning / "datasources").glob("*.yaml"))
    providers = [provider for path in sorted((provisioning / "dashboards").glob("*.yaml"))
                 for provider in yaml.safe_load(path.read_text())["providers"]]
    assert datasources and providers
    for provider in providers:
        folder = PurePosixPath(provider["options"]["path"])
        served = [source for target, source in mounts.items() if folder in target.parents and target.suffix == ".json"]
        assert served, f"no dashboard mounted under {folder}"
        for source in served:
            assert source.is_file() and json.loads(source.read_text())["uid"]
    assert DASHBOARD.resolve() in mounts.values()
    home = grafana["environment"]["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"]
    assert _host_path(mounts, home) == DASHBOARD.resolve()
    # The dashboard's datasource variable offers the provisioned source's type.
    variables = {v["name"]: v for v in _dashboard()["templating"]["list"]}
    assert _grafana_datasource_url(grafana).scheme == "http"
    assert variables["datasource"]["query"] == "prometheus"
