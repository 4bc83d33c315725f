"""config.yaml, typed and validated.

Everything the proxy does per index comes from here. A bad file is rejected as a whole with messages that name the
key (`indices.0.window: ...`), so a reload can never leave the proxy half-configured.
"""
from __future__ import annotations

import fnmatch
import importlib.util
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal

import yaml
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError, create_model, model_validator
from pydantic.fields import FieldInfo

from rerank.chunking import Chunking
from rerank.ranking import Fusion
from rerank.spec import Languages, ModelSpec
from rerank.text import TextConfig


class ConfigError(ValueError):
    """The config file cannot be used; the message names each bad key."""


def _as_list(value: Any) -> Any:
    return [value] if isinstance(value, str) else value


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class TemplateParams(_Strict):
    """Which search-template params carry the query text and the page (for `_search/template`)."""

    query: str = "query_string"
    from_: str = Field("from", alias="from")
    size: str = "size"



class Shadow(_Strict):
    """A second model that scores a sample of the reranked searches' windows after their answers have gone, so its
    agreement with the served order is measured on live traffic before it serves anyone."""

    model: str = Field(description="a key of `models`")
    sample: float = Field(0.1, ge=0, le=1, description="the share of reranked searches scored again")
    timeout_ms: int = Field(30_000, gt=0, description="the shadow model's time per search before it is given up")


class RerankSettings(_Strict):
    """The knobs a search is reranked with: `defaults`, overridden by an index rule, overridden by a variant."""

    enabled: bool = True
    model: str | None = Field(None, description="a key of `models`; default: the first model")
    window: int = Field(50, ge=1, le=10_000, description="top hits fetched and reranked")
    text: TextConfig = TextConfig()
    query_path: str | None = Field(None, description="dot path in the request body holding the query text")
    template_params: TemplateParams = TemplateParams()
    timeout_ms: int = Field(5_000, gt=0, description="model time budget per search before falling back")
    fusion: Fusion = Fusion()
    chunking: Chunking | None = Field(None, description="score long documents by their best chunk")
    language_gate: bool = Field(
        True, description="leave a search in the cluster's order (skipped; reason=language) when its query text is "
        "confidently in a language the model does not serve"
    )
    languages: Languages | None = Field(
        None, description="the query languages reranked here (ISO 639-1 codes, or any); default: the model's"
    )
    shadow: Shadow | None = Field(None, description="score a sample of these searches with a second model as well")
    capture_sample: float | None = Field(None, ge=0, le=1, description="share of these searches captured; default: "
                                         "capture.sample")


def _all_optional(model: type[BaseModel]) -> dict[str, Any]:
    """`model`'s fields for create_model, each optional with default None (`None` = not set here) and the rest of
    its definition kept: constraints, validators, description."""
    fields: dict[str, Any] = {}
    for name, info in model.model_fields.items():
        annotation: Any = info.annotation
        fields[name] = (annotation | None, FieldInfo.merge_field_infos(info, default=None))
    return fields


if TYPE_CHECKING:
    _SettingsFields = _Strict
else:
    # Every RerankSettings field, optional: a new setting needs adding there alone.
    _SettingsFields = create_model("_SettingsFields", __base__=_Strict, **_all_optional(RerankSettings))


class SettingsOverride(_SettingsFields):
    """Any subset of RerankSettings; unset fields inherit."""

    if TYPE_CHECKING:  # the fields come from RerankSettings, each `T | None`: out of the type checker's sight
        def __getattr__(self, name: str) -> Any: ...

    def apply_to(self, base: RerankSettings) -> RerankSettings:
        changes = {k: getattr(self, k) for k in self.model_fields_set if k in RerankSettings.model_fields}
        return base.model_copy(update=changes)


class IndexRule(SettingsOverride):
    match: Annotated[list[str], BeforeValidator(_as_list)] = Field(
        min_length=1, description="index names or patterns (`logs-*`); aliases resolve to their indices"
    )

    def matches(self, index: str) -> bool:
        return any(fnmatch.fnmatchcase(index, pattern) for pattern in self.match)


class ABSplit(_Strict):
    """Traffic split when no `X-Rerank-Variant` header is sent; `control` is the un-varied settings."""

    sticky_header: str | None = Field(
        "X-Opaque-Id", description="requests with the same value of this header get the same variant"
    )
    weights: dict[str, float] = Field(min_length=1)

    @model_validator(mode="after")
    def _positive(self) -> ABSplit:
        if any(w < 0 for w in self.weights.values()) or sum(self.weights.values()) <= 0:
            raise ValueError("weights must be >= 0 and sum to more than 0")
        return self


class Experiment(_Strict):
    """An interleaved experiment: searches of `indices` (a `traffic` percent of them) are served one merged list of
    the rankings of variants `a` and `b`, and clicks on it say which ranking users prefer."""

    a: str = Field(description="a variant, or `control`")
    b: str = Field(description="a variant, or `control`")
    method: Literal["team-draft", "balanced"] = "team-draft"
    traffic: float = Field(100.0, ge=0, le=100, description="percent of the matching searches interleaved")
    indices: Annotated[list[str], BeforeValidator(_as_list)] = Field(
        min_length=1, description="index names or patterns (`docs-*`) as the search names them"
    )

    @model_validator(mode="after")
    def _two_sides(self) -> Experiment:
        if self.a == self.b:
            raise ValueError("a and b name the same variant: there is nothing to compare")
        return self

    def matches(self, index_expression: str | None) -> bool:
        """Every index the search names matches a pattern (a search of all indices matches only `*`)."""
        names = index_expression.split(",") if index_expression else ["*"]
        return all(any(fnmatch.fnmatchcase(name, p) for p in self.indices) for name in names)


class Events(_Strict):
    """Click events (`POST /_rerank_proxy/events`) and the served searches they are attributed to."""

    listener: Literal["admin", "data"] = Field(
        "admin", description="`data`: the data port also takes events, without the admin token (a browser beacon)"
    )
    credit_types: Annotated[list[str], BeforeValidator(_as_list)] = Field(
        ["click"], min_length=1, description="event types that count as a preference for the document"
    )
    ttl_s: float = Field(3600.0, gt=0, description="how long a served search takes events")
    max_searches: int = Field(50_000, gt=0, description="served searches held for events at most (oldest go)")
    sticky_header: str | None = Field(
        "X-Opaque-Id", description="the header naming one user's session: the same query under the same value is "
        "one merged list, so its pages agree"
    )
    max_body_bytes: int = Field(1024 * 1024, gt=0)


class Capture(_Strict):
    """A sample of the reranked searches written to rotating JSONL files (see proxy/capture.py)."""

    path: Path = Field(description="the JSONL file; rotated ones get .1, .2, ...")
    sample: float = Field(0.01, ge=0, le=1, description="share of reranked searches captured (per index or "
                          "variant: `capture_sample`)")
    documents: bool = Field(False, description="also write the texts the model read")
    hash_queries: bool = Field(False, description="write the query text's SHA-256 instead of the text")
    max_bytes: int = Field(100 * 1024 * 1024, gt=0, description="a file is rotated at this size")
    backups: int = Field(5, ge=0, description="rotated files kept")
    queue_records: int = Field(10_000, gt=0, description="records waiting for the writer at most; more are dropped")
    remember_searches: int = Field(100_000, gt=0, description="captured searches whose events are written")
    events_ttl_s: float = Field(3600.0, gt=0, description="how long a captured search's events are written")


class Console(_Strict):
    """The web console (`/_rerank_proxy/ui` on the admin listener)."""

    eval_json: Path | None = Field(
        None, description="the `rerank-proxy eval --json` file whose results the console charts (read on each view)"
    )


class AccessLogOptions(_Strict):
    """One JSON line per data-port request (see proxy/access_log.py): never a body, a credential or a query string."""

    enabled: bool = False
    sample: float = Field(1.0, ge=0, le=1, description="the share of requests logged")
    always_log_errors: bool = Field(
        True, description="log every error whatever `sample` says: a status of 500 or more, a cluster the proxy could "
        "not reach or that broke off, a search that fell back to the cluster's order"
    )
    destination: str = Field(
        "stderr", min_length=1, description="`stderr`, `stdout`, or a file path (appended to; reopened when moved "
        "away, as logrotate does)"
    )
    queue_records: int = Field(10_000, gt=0, description="lines waiting for the writer thread at most; more are "
                               "dropped and counted")


# What `tracing` needs installed: the extra `rerank-proxy[tracing]` (module, the package that provides it).
TRACING_PACKAGES = (("opentelemetry.trace", "opentelemetry-api"), ("opentelemetry.sdk.trace", "opentelemetry-sdk"))
OTLP_PACKAGE = ("opentelemetry.exporter.otlp.proto.http.trace_exporter", "opentelemetry-exporter-otlp-proto-http")


def _installed(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except ModuleNotFoundError:  # a parent package is missing
        return False


class TracingOptions(_Strict):
    """OpenTelemetry spans (see proxy/tracing.py): a server span per data-port request, with child spans for the
    cluster call, the engine's queue, the model and the response rewrite."""

    enabled: bool = False
    service_name: str = Field("rerank-proxy", min_length=1, description="the `service.name` resource attribute")
    exporter: Literal["otlp", "console", "none"] = Field(
        "otlp", description="`otlp`: OTLP over HTTP (protobuf) to `otlp_endpoint`; `console`: JSON on stdout; "
        "`none`: spans are made (and propagated) but not exported"
    )
    otlp_endpoint: str | None = Field(
        None, description="the collector's traces URL; default: OTEL_EXPORTER_OTLP_TRACES_ENDPOINT or "
        "OTEL_EXPORTER_OTLP_ENDPOINT, else http://localhost:4318/v1/traces"
    )
    sample_ratio: float = Field(1.0, ge=0, le=1, description="the share of new traces recorded; a request that "
                                "arrives with a `traceparent` follows its caller's sampling decision")

    @model_validator(mode="after")
    def _packages_installed(self) -> TracingOptions:
        if not self.enabled:
            return self
        needed = [*TRACING_PACKAGES, *([OTLP_PACKAGE] if self.exporter == "otlp" else [])]
        missing = [package for module, package in needed if not _installed(module)]
        if missing:
            otlp_only = missing == [OTLP_PACKAGE[1]]
            raise ValueError(
                f"enabled: needs {', '.join(missing)}, not installed here: pip install 'rerank-proxy[tracing]'"
                + (" (or set `exporter: console` or `none`)" if otlp_only else "")
            )
        return self


class MetricsOptions(_Strict):
    """What the metrics may be labelled with."""

    index_labels: Annotated[list[str], BeforeValidator(_as_list)] = Field(
        [], description="index names or patterns that get an `index` label of their own on the search metrics "
        "(a pattern labels its indices with the pattern); any other index is `_other`, a search of all indices `_all`"
    )


class UpstreamTLS(_Strict):
    verify: bool = True
    ca_file: Path | None = None
    client_cert: Path | None = None
    client_key: Path | None = None


class UpstreamOptions(_Strict):
    tls: UpstreamTLS = UpstreamTLS()
    connect_timeout_s: float = Field(5.0, gt=0, description="a node that accepts no connection within: the next")
    # Generous: a proxy must not cut off a slow `_forcemerge` or a big aggregation the client is still waiting for;
    # a client that gives up first hangs up, and its upstream request is cancelled then.
    response_timeout_s: float = Field(300.0, gt=0, description="from request sent to the answer's head: else 504")
    idle_timeout_s: float = Field(60.0, gt=0, description="longest pause inside an answer's body: else cut off")
    pool_size: int = Field(256, gt=0, description="connections open to each cluster URL at most (others wait)")
    pool_idle_timeout_s: float = Field(60.0, gt=0, description="a pooled connection unused this long is closed")
    retry_down_after_s: float = Field(5.0, ge=0, description="how long a failed upstream is tried last")
    alias_cache_ttl_s: float = Field(60.0, ge=0)


def _listen(value: str) -> str:
    host, sep, port = value.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) < 65536:
        raise ValueError(f"expected HOST:PORT, got {value!r}")
    return value


def _upstream_url(value: str) -> str:
    if not (value.startswith("http://") or value.startswith("https://")):
        raise ValueError(f"expected an http:// or https:// URL, got {value!r}")
    return value.rstrip("/")


class ListenerTLS(_Strict):
    """TLS on a listener: the server's certificate chain and key, and optionally client certificates verified
    against a CA (mutual TLS)."""

    cert_file: Path
    key_file: Path
    client_ca_file: Path | None = Field(None, description="verify client certificates against this CA bundle")
    client_auth: Literal["required", "optional"] = Field(
        "required", description="with client_ca_file: whether a client without a certificate is refused"
    )


class AdminOptions(_Strict):
    """Where the proxy's own endpoints (`/_rerank_proxy/...`) answer. On their own listener (loopback by default),
    the data port serves only the cluster's API; without one (`listen: null`) they answer on the data port, and
    only to requests carrying the bearer token."""

    listen: Annotated[str, BeforeValidator(_listen)] | None = "127.0.0.1:9202"
    token_env: str | None = Field(
        None, pattern=r"^[A-Za-z_][A-Za-z0-9_]*$",
        description="environment variable holding the bearer token admin requests must carry",
    )
    tls: ListenerTLS | None = None

    @model_validator(mode="after")
    def _guarded(self) -> AdminOptions:
        if self.listen is None and self.token_env is None:
            raise ValueError("listen: null puts the admin endpoints on the data port, which needs token_env")
        if self.listen is None and self.tls is not None:
            raise ValueError("tls: the admin endpoints share the data port's TLS when listen is null")
        return self


class RerankApiOptions(_Strict):
    """The rerank API on the admin listener: Cohere's `POST /v1/rerank` and `/v2/rerank`, TEI's `POST /rerank`,
    scored by the proxy's own engine (its queues, batching, deadlines, score cache)."""

    enabled: bool = True
    token_env: str | None = Field(
        None, pattern=r"^[A-Za-z_][A-Za-z0-9_]*$",
        description="environment variable holding the bearer token API calls must carry; default: the admin token, "
        "when there is one",
    )
    default_model: str | None = Field(None, description="the model for calls that name none (TEI's never do); "
                                      "default: the first of `models`")
    max_documents: int = Field(1000, gt=0, description="documents per call at most")
    max_query_chars: int = Field(8192, gt=0)
    max_body_bytes: int = Field(32 * 1024 * 1024, gt=0)
    max_tokens_per_doc: int = Field(4096, gt=0, description="each document's text budget (pieces, about tokens) "
                                    "when the call gives none")
    chunking: Chunking | None = Field(None, description="score long documents by their best chunk")
    timeout_ms: int = Field(30_000, gt=0, description="the model's time per call; past it, a 504")


class Config(_Strict):
    listen: Annotated[str, BeforeValidator(_listen)] = "127.0.0.1:9201"
    upstreams: Annotated[list[Annotated[str, BeforeValidator(_upstream_url)]], BeforeValidator(_as_list)] = Field(
        ["http://127.0.0.1:9200"], min_length=1
    )
    tls: ListenerTLS | None = Field(None, description="TLS on the data port")
    admin: AdminOptions = AdminOptions()
    shutdown_grace_s: float = Field(
        30.0, ge=0, description="on SIGTERM: how long requests in flight may take to finish before the exit"
    )
    shadow_max_in_flight: int = Field(
        2, gt=0, description="shadow searches scored at once at most; more are dropped, as is any while searches of "
        "clients wait for a model"
    )
    max_search_body_bytes: int = Field(
        100 * 1024 * 1024, gt=0, description="a search body larger than this is answered 413 (the clusters' own "
        "`http.max_content_length` is 100 MB)"
    )
    upstream: UpstreamOptions = UpstreamOptions()
    models: dict[str, ModelSpec] = Field(min_length=1)
    defaults: RerankSettings = RerankSettings()
    indices: list[IndexRule] = []
    variants: dict[str, SettingsOverride] = {}
    ab: ABSplit | None = None
    experiments: dict[str, Experiment] = {}
    events: Events = Events()
    capture: Capture | None = None
    rerank_api: RerankApiOptions = RerankApiOptions()
    console: Console = Console()
    access_log: AccessLogOptions = AccessLogOptions()
    tracing: TracingOptions = TracingOptions()
    metrics: MetricsOptions = MetricsOptions()

    @model_validator(mode="after")
    def _references_exist(self) -> Config:
        def check_model(where: str, name: str | None) -> None:
            if name is not None and name not in self.models:
                raise ValueError(f"{where}.model: unknown model {name!r} (models: {', '.join(self.models)})")

        def check_models(where: str, settings: SettingsOverride | RerankSettings) -> None:
            check_model(where, settings.model)
            if settings.shadow is not None:
                check_model(f"{where}.shadow", settings.shadow.model)

        check_models("defaults", self.defaults)
        api_model = self.rerank_api.default_model
        if api_model is not None and api_model not in self.models:
            known = ", ".join(self.models)
            raise ValueError(f"rerank_api.default_model: unknown model {api_model!r} (models: {known})")
        for i, rule in enumerate(self.indices):
            check_models(f"indices.{i}", rule)
        for name, variant in self.variants.items():
            check_models(f"variants.{name}", variant)
            if name == "control":
                raise ValueError("variants.control: `control` is reserved for the un-varied settings")
        if self.ab:
            unknown = [n for n in self.ab.weights if n != "control" and n not in self.variants]
            if unknown:
                raise ValueError(f"ab.weights: unknown variant(s) {', '.join(unknown)}")
        for name, experiment in self.experiments.items():
            for side in ("a", "b"):
                variant = getattr(experiment, side)
                if variant != "control" and variant not in self.variants:
                    raise ValueError(f"experiments.{name}.{side}: unknown variant {variant!r}")
        return self

    def model_name(self, settings: RerankSettings) -> str:
        return settings.model or next(iter(self.models))

    def rule_for(self, index: str) -> IndexRule | None:
        return next((rule for rule in self.indices if rule.matches(index)), None)

    def with_overrides(
        self, *, listen: str | None = None, upstreams: list[str] | None = None, admin_listen: str | None = None
    ) -> Config:
        data = self.model_dump(by_alias=True, exclude_unset=True)
        if listen:
            data["listen"] = listen
        if upstreams:
            data["upstreams"] = upstreams
        if admin_listen:
            data["admin"] = {**data.get("admin", {}), "listen": admin_listen}
        return parse_config(data, origin="command line")


def _format_errors(err: ValidationError, origin: str) -> str:
    lines = []
    for e in err.errors():
        loc = ".".join(str(p) for p in e["loc"]) or "(top level)"
        msg = e["msg"].removeprefix("Value error, ")
        lines.append(f"{origin}: {loc}: {msg}" + (f" (got {e['input']!r})" if e["type"] == "extra_forbidden" else ""))
    return "\n".join(lines)


def parse_config(data: Any, origin: str = "config") -> Config:
    if not isinstance(data, dict):
        raise ConfigError(f"{origin}: expected a mapping at the top level")
    try:
        return Config.model_validate(data)
    except ValidationError as err:
        raise ConfigError(_format_errors(err, origin)) from None


def load_config(path: str | Path) -> Config:
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as err:
        raise ConfigError(f"{path}: cannot read: {err.strerror}") from None
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML: {err}") from None
    return parse_config(data if data is not None else {}, origin=str(path))
