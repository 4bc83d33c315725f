"""Typed model configuration: what to load and how to run it."""
from __future__ import annotations

from collections.abc import Mapping
from typing import Annotated, Any, Literal, Self, TypeAlias
from urllib.parse import urlsplit

from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field, create_model, model_validator

# Padded tokens and pairs per model call by default. On a CPU, bigger calls are no cheaper per token (MiniLM-L6 on a
# 2-core EPYC: 8-11% slower in one ~5,000-token call per search than in calls of 2,048), and small calls let the
# engine finish searches one by one: at 32 concurrent searches p50 fell from 35 s to 21 s. A GPU wants big calls,
# and there the token budget alone should cut them: on an H200 (bf16, 32 searches x 100 pairs of ~440 tokens), calls
# of 32,768 tokens beat 16,384 by 7% (base-v2) and 3% (large-v2), and capping calls at 32 pairs cost 13-15%.
CPU_BATCH_TOKENS = 2_048
ACCELERATOR_BATCH_TOKENS = 32_768
CPU_BATCH_PAIRS = 32
ACCELERATOR_BATCH_PAIRS = 1_024

# ISO 639-1, the two-letter codes a model or an index names its languages with (`any`: every language).
_ISO_639_1 = """
aa ab ae af ak am an ar as av ay az ba be bg bh bi bm bn bo br bs ca ce ch co cr cs cu cv cy da de dv dz ee el en
eo es et eu fa ff fi fj fo fr fy ga gd gl gn gu gv ha he hi ho hr ht hu hy hz ia id ie ig ii ik io is it iu ja jv ka
kg ki kj kk kl km kn ko kr ks ku kv kw ky la lb lg li ln lo lt lu lv mg mh mi mk ml mn mr ms mt my na nb nd ne ng nl
nn no nr nv ny oc oj om or os pa pi pl ps pt qu rm rn ro ru rw sa sc sd se sg si sk sl sm sn so sq sr ss st su sv sw
ta te tg th ti tk tl tn to tr ts tt tw ty ug uk ur uz ve vi vo wa wo xh yi yo za zh zu
"""
ISO_639_1 = frozenset(_ISO_639_1.split())
ANY_LANGUAGE = "any"


def _language_codes(codes: list[str]) -> list[str]:
    bad = [code for code in codes if code != ANY_LANGUAGE and code not in ISO_639_1]
    if bad:
        raise ValueError(f"not an ISO 639-1 language code (two lowercase letters, e.g. en) or 'any': "
                         f"{', '.join(map(repr, bad))}")
    if ANY_LANGUAGE in codes and len(codes) > 1:
        raise ValueError("'any' already covers every language: list it alone")
    if len(set(codes)) != len(codes):
        raise ValueError(f"a language is listed twice: {codes}")
    return codes


# The languages a model serves, or an index's searches are in: ISO 639-1 codes, or ["any"].
Languages = Annotated[
    list[str], BeforeValidator(lambda v: [v] if isinstance(v, str) else v), Field(min_length=1),
    AfterValidator(_language_codes),
]


class CircuitSettings(BaseModel):
    """A model's circuit breaker (rerank/circuit.py): after `failures` consecutive failed searches (the model raised,
    or the deadline passed with nothing or only part scored) searches fall back at once for `open_s` seconds, then
    one trial search decides whether the model serves again."""

    model_config = ConfigDict(extra="forbid")

    enabled: bool = True
    failures: int = Field(5, ge=1, description="consecutive failed searches that open the circuit")
    # Short: under a burst of load an open circuit sheds it (searches answered at once in the cluster's order),
    # and reranking should be back soon after the burst.
    open_s: float = Field(10.0, gt=0, description="seconds the circuit stays open before a trial search")


# What a model entry's `backend` may be: each names a spec type of its own (below).
Backend: TypeAlias = Literal["bi-encoder", "cross-encoder", "remote", "mxbai-v2"]


class BaseSpec(BaseModel):
    """What every entry of the `models:` section has, whatever its backend: the engine's and the proxy's knobs.

    `source` is a Hugging Face hub id (`BAAI/bge-reranker-base`), a local folder, or `package:NAME` for a model
    folder shipped inside an installed Python package (found with importlib, works offline).
    For backend `remote` it is the base URL of an HTTP reranking service (`http://rerank-gpu:7997`).
    Each backend is a type of its own (below, one per `backend`), with only the fields that mean something for it.
    """

    model_config = ConfigDict(extra="forbid")

    backend: Backend  # each type narrows it to its own name, its default
    source: str = Field(min_length=1)
    batch_size: int | None = Field(
        None, gt=0, le=4096, description=f"pairs per model call; default {CPU_BATCH_PAIRS} on CPU, "
        f"{ACCELERATOR_BATCH_PAIRS:,} otherwise (where the token budget decides)"
    )
    max_wait_ms: float = Field(2.0, ge=0, le=1000, description="engine: how long a batch waits for more searches")
    max_batch_tokens: int | None = Field(
        None, gt=0, description="padded tokens per model call (longest x pairs), for the engine's micro-batches and "
        f"the backend's own calls; default {CPU_BATCH_TOKENS:,} on CPU, {ACCELERATOR_BATCH_TOKENS:,} otherwise"
    )
    score_cache_entries: int = Field(50_000, ge=0, description="engine: (query, document) scores kept (LRU); 0 = off")
    max_queue: int | None = Field(None, gt=0, description="engine: searches queued per model before falling back")
    load_retry_s: float = Field(
        1.0, gt=0, description="engine: wait before retrying a model that failed to load, doubled for each next "
        "attempt (with a little jitter) up to load_retry_max_s; retried until it loads"
    )
    load_retry_max_s: float = Field(60.0, gt=0, description="engine: longest wait between load attempts")
    circuit: CircuitSettings = Field(default_factory=CircuitSettings)
    languages: Languages = Field(
        [ANY_LANGUAGE], description="ISO 639-1 codes of the query languages the model ranks well; a search whose "
        "query is confidently in another one is not reranked (skipped; reason=language); any = every language"
    )

    def batch_tokens(self, device_type: str | None) -> int:
        """`max_batch_tokens`, or the default for a model running on `device_type` (torch's: cpu, cuda, mps; None
        for one that runs elsewhere, behind `remote`: an accelerator's)."""
        if self.max_batch_tokens is not None:
            return self.max_batch_tokens
        return CPU_BATCH_TOKENS if device_type == "cpu" else ACCELERATOR_BATCH_TOKENS

    def batch_pairs(self, device_type: str | None) -> int:
        """`batch_size`, or the default for a model running on `device_type` (as in `batch_tokens`)."""
        if self.batch_size is not None:
            return self.batch_size
        return CPU_BATCH_PAIRS if device_type == "cpu" else ACCELERATOR_BATCH_PAIRS

    @model_validator(mode="before")
    @classmethod
    def _fields_fit_backend(cls, data: Any) -> Any:
        """A key another backend has is a config mistake named as one (`retries: only valid with backend 'remote',
        not 'cross-encoder'`), not as an unknown key; and the backend always counts as set, so a spec built in code
        (`RemoteSpec(source=...)`) dumps with it (`Config.with_overrides` re-parses the dump)."""
        backend = cls.model_fields["backend"]
        if backend.is_required() or not isinstance(data, Mapping):  # not one of the backends' own types
            return data
        misplaced: dict[str, list[str]] = {}
        for key in sorted(k for k in data if isinstance(k, str) and k not in cls.model_fields):
            owners = frozenset(name for name, spec in SPEC_TYPES.items() if key in spec.model_fields)
            if owners:
                where = "a local backend" if owners == LOCAL_BACKENDS else "backend " + " or ".join(
                    map(repr, sorted(owners)))
                misplaced.setdefault(where, []).append(key)
        if misplaced:
            raise ValueError("; ".join(f"{', '.join(keys)}: only valid with {where}, not {backend.default!r}"
                                       for where, keys in misplaced.items()))
        return {"backend": backend.default, **data}

    @model_validator(mode="after")
    def _load_retry_order(self) -> Self:
        if self.load_retry_max_s < self.load_retry_s:
            raise ValueError(f"load_retry_max_s ({self.load_retry_max_s}) must not be below load_retry_s "
                             f"({self.load_retry_s})")
        return self


class LocalSpec(BaseSpec):
    """A model this process loads and runs itself (with torch): the fields of every local backend."""

    device: str = Field("cpu", description="cpu, cuda, cuda:N, mps or auto")
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"
    max_length: int = Field(512, gt=8, le=32768, description="tokens per (query, document) input")
    threads: int | None = Field(None, gt=0, description="torch CPU threads; default: torch's own choice")
    compile: bool | Literal["auto"] = Field(
        "auto", description="run the model's transformer blocks through torch.compile (inductor), compiled at load; "
        "auto = on a CUDA GPU only (on a CPU it needs a C++ compiler, takes tens of seconds per model and gains "
        "little)"
    )

    def compiles(self, device_type: str) -> bool:
        """Whether a local model on `device_type` (torch's: cpu, cuda, mps) is compiled: `compile`, or with "auto"
        on CUDA alone, where it pays most (an H200 scored base-v2 in 78 ms per search of 100 pairs compiled, 107 ms
        not; benchmarks/gpu_bench.py), while a CPU gains 1-19% for tens of seconds at start."""
        return device_type == "cuda" if self.compile == "auto" else self.compile


class BiEncoderSpec(LocalSpec):
    """backend `bi-encoder` (rerank/bi_encoder.py): embedding cosine."""

    backend: Literal["bi-encoder"] = "bi-encoder"
    cache_entries: int = Field(
        20_000, ge=0, description="document embeddings kept (LRU), so a document is embedded once"
    )


class CrossEncoderSpec(LocalSpec):
    """backend `cross-encoder` (rerank/cross_encoder.py): a sequence-classification model."""

    backend: Literal["cross-encoder"] = "cross-encoder"


class MxbaiV2Spec(LocalSpec):
    """backend `mxbai-v2` (rerank/mxbai.py): max_length is its query + document budget, 8192 when unset, and dtype
    defaults to bfloat16 when the device is a GPU (`rerank.mxbai.backend_defaults`)."""

    backend: Literal["mxbai-v2"] = "mxbai-v2"
    instruction: str | None = Field(
        None, min_length=1, description="instruction put before every query (e.g. what counts as relevant)"
    )


class RemoteSpec(BaseSpec):
    """backend `remote` (rerank/remote.py): an HTTP reranking service at `source`."""

    backend: Literal["remote"] = "remote"
    api: Literal["cohere", "tei"] = Field(
        "cohere", description="cohere = POST {source}/v1/rerank (Cohere, Jina, vLLM, Infinity); "
        "tei = POST {source}/rerank (text-embeddings-inference)"
    )
    remote_model: str | None = Field(None, min_length=1, description="model name sent to the service")
    api_key_env: str | None = Field(
        None, pattern=r"^[A-Za-z_][A-Za-z0-9_]*$",
        description="name of the environment variable holding a bearer token (the token never goes in config)",
    )
    timeout_s: float = Field(10.0, gt=0, le=300, description="seconds one HTTP attempt may take")
    retries: int = Field(2, ge=0, le=10, description="extra attempts after a connection error, 429 or 5xx")
    retry_backoff_s: float = Field(
        0.2, ge=0, le=30, description="wait before the first retry, doubled for each next one, with jitter"
    )
    max_texts_per_call: int = Field(
        32, gt=0, le=10_000, description="documents per HTTP call; more are split into concurrent calls "
        "(TEI refuses more than 32 by default)"
    )
    max_concurrency: int = Field(4, gt=0, le=256, description="HTTP calls in flight at once for this model")

    @property
    def compile(self) -> Literal["auto"]:
        """A remote model has no `compile` setting (its service decides; setting one is refused): it reads as the
        local backends' default."""
        return "auto"

    @model_validator(mode="after")
    def _source_is_a_base_url(self) -> Self:
        url = urlsplit(self.source)
        if url.scheme not in ("http", "https") or not url.netloc or url.query or url.fragment:
            raise ValueError(f"source: backend 'remote' needs the service's base URL (http[s]://host:port), "
                             f"got {self.source!r}")
        return self


# The backends, each a spec type of its own (rerank/registry.py maps the same names to the scorers that load them).
_Spec: TypeAlias = BiEncoderSpec | CrossEncoderSpec | MxbaiV2Spec | RemoteSpec
SPEC_TYPES: dict[str, type[_Spec]] = {
    "bi-encoder": BiEncoderSpec, "cross-encoder": CrossEncoderSpec, "remote": RemoteSpec, "mxbai-v2": MxbaiV2Spec,
}
LOCAL_BACKENDS = frozenset(name for name, spec in SPEC_TYPES.items() if issubclass(spec, LocalSpec))

# The `backend` key alone, to explain an entry whose backend names no type above; named for its messages ("Input
# should be a valid dictionary or instance of ModelSpec").
_Backend = create_model("ModelSpec", __config__=ConfigDict(extra="ignore"), backend=(Backend, ...))


def _as_its_backend(data: Any) -> Any:
    """A `models:` entry validated as the type its `backend` names, and by it alone: its errors are located at the
    entry's own keys (`models.m.source`), where pydantic's tagged union would put the tag in them
    (`models.m.remote.source`)."""
    backend = data.get("backend") if isinstance(data, Mapping) else None
    spec = SPEC_TYPES.get(backend) if isinstance(backend, str) else None
    if spec is None:
        return data if isinstance(data, BaseSpec) else _Backend.model_validate(data)
    return spec.model_validate(data)


# One entry of the `models:` section: the type its `backend` names (code that needs a backend's own fields asks
# with isinstance). Built in code by its type: `RemoteSpec(source=...)`, `SPEC_TYPES[backend](source=...)`.
ModelSpec: TypeAlias = Annotated[_Spec, Field(discriminator="backend"), BeforeValidator(_as_its_backend)]
