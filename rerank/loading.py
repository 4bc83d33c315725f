"""Shared loading for the local transformers backends: where the weights are, which device, which dtype.

The local backends load a tokenizer plus a model the same way, tokenize ahead of scoring the same way and batch the
same way; that part lives here (`TransformersScorer`), so each backend only says how it encodes a pair and how it
turns model outputs into scores.
"""
from __future__ import annotations

import copy
import importlib.util
import json
import logging
import os
import threading
from abc import ABC, abstractmethod
from array import array
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Generic, TypeVar

import torch
from transformers import AutoTokenizer
from transformers.utils.hub import cached_file

from rerank.backend import Encoding, ModelLoadError
from rerank.batching import token_batches
from rerank.spec import LocalSpec

PACKAGE_PREFIX = "package:"
DTYPES: dict[str, torch.dtype] = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
_WEIGHT_GLOBS = ("*.safetensors", "pytorch_model*.bin")
_TRUTHY = {"1", "true", "yes", "on"}

log = logging.getLogger(__name__)

# transformers' from_pretrained switches weight init and tying off by swapping class attributes for the duration
# (transformers.initialization.no_init_weights / no_tie_weights) and puts back what it found: two loads at once in
# one process (the engine loads its models side by side) can leave them swapped for good, and every later load
# then keeps tied or missing weights on the meta device ("Cannot copy out of meta tensor"). One load at a time.
FROM_PRETRAINED_LOCK = threading.Lock()

E = TypeVar("E", bound=Encoding)


def resolve_source(source: str) -> str:
    """A spec's `source` as `from_pretrained` takes it: a package's model folder, a local folder, or a hub id."""
    if source.startswith(PACKAGE_PREFIX):
        return str(_package_model_dir(source[len(PACKAGE_PREFIX) :].strip(), source))
    path = Path(source).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise ModelLoadError(f"model source {source!r}: folder has no config.json")
        return str(path)
    # Anything path-shaped that is not a folder is a typo, not a hub id: say so instead of asking the hub.
    if path.exists() or path.is_absolute() or source.startswith((".", "~")):
        raise ModelLoadError(f"model source {source!r}: no such model folder")
    return source


def _package_model_dir(package: str, source: str) -> Path:
    try:
        found = importlib.util.find_spec(package) if package else None
    except (ImportError, ValueError):  # a dotted name whose parent package is missing
        found = None
    if found is None or not found.submodule_search_locations:
        raise ModelLoadError(f"model source {source!r}: no installed Python package named {package!r}")
    for root in found.submodule_search_locations:
        # Shallowest first; sentence-transformers folders also hold module configs (1_Pooling/config.json),
        # so the model folder is the one whose config.json sits beside weights.
        for config in sorted(Path(root).rglob("config.json"), key=lambda p: (len(p.parts), str(p))):
            if any(next(config.parent.glob(pattern), None) for pattern in _WEIGHT_GLOBS):
                return config.parent
    raise ModelLoadError(f"model source {source!r}: package {package!r} holds no model folder (config.json + weights)")


def pick_device(device: str) -> torch.device:
    """`auto` = the best accelerator present (cuda, then mps), else cpu; anything else as torch spells it."""
    if device == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        mps = getattr(torch.backends, "mps", None)
        return torch.device("mps" if mps is not None and mps.is_available() else "cpu")
    try:
        return torch.device(device)
    except RuntimeError as exc:
        raise ModelLoadError(f"device {device!r}: {exc}") from exc


def token_lengths(tokenizer: Any, texts: Sequence[str]) -> list[int]:
    """Tokens of each text alone, before truncation and without special tokens, in one tokenizer call."""
    if not texts:
        return []
    return [len(ids) for ids in tokenizer(list(texts), add_special_tokens=False, verbose=False)["input_ids"]]


def hub_offline() -> bool:
    """HF_HUB_OFFLINE read at call time: huggingface_hub reads it once at import, which may predate the setting."""
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in _TRUTHY


def read_json(path_or_id: str, filename: str) -> dict[str, Any] | None:
    """An optional side file of a model folder or hub repo (e.g. `1_Pooling/config.json`); None when absent."""
    found = cached_file(
        path_or_id,
        filename,
        local_files_only=hub_offline(),
        _raise_exceptions_for_missing_entries=False,
        _raise_exceptions_for_connection_errors=False,
    )
    return json.loads(Path(found).read_text(encoding="utf-8")) if found else None


@dataclass(frozen=True, slots=True)
class Tokenized:
    """One model input as the tokenizer gave it, unpadded: input_ids and, per model, token_type_ids; padding adds
    the attention mask. Held as arrays of 4-byte ints: queued searches keep theirs until their turn, and a list of
    Python ints takes about 9x the memory."""

    features: dict[str, array[int]]

    @classmethod
    def of(cls, features: dict[str, list[int]]) -> Tokenized:
        return cls({key: array("i", values) for key, values in features.items()})

    @property
    def tokens(self) -> int:
        return len(self.features["input_ids"])

    @property
    def input_ids(self) -> list[int]:
        return self.features["input_ids"].tolist()

    def unpadded(self) -> dict[str, list[int]]:
        """The features as `tokenizer.pad` takes them."""
        return {key: values.tolist() for key, values in self.features.items()}


def tokenize(tokenizer: Any, texts: Sequence[str], pairs: Sequence[str] | None = None, *, max_length: int,
             truncation: bool | str = True) -> list[Tokenized]:
    """The texts (or text pairs), special tokens added and cut to `max_length`, in one tokenizer call."""
    if not texts:
        return []
    encoded = tokenizer(list(texts), None if pairs is None else list(pairs), truncation=truncation,
                        max_length=max_length, return_attention_mask=False, verbose=False)
    columns = list(encoded.items())
    return [Tokenized.of({key: values[i] for key, values in columns}) for i in range(len(texts))]


def repeated_blocks(module: torch.nn.Module) -> torch.nn.ModuleList | None:
    """The module's stack of identical blocks (a transformer's layers): its longest ModuleList of one class."""
    stacks = [child for child in module.modules() if isinstance(child, torch.nn.ModuleList) and len(child) > 1
              and len({type(block) for block in child}) == 1]
    return max(stacks, key=len, default=None)


def compile_blocks(module: torch.nn.Module) -> Callable[[], None] | None:
    """Compile the module's repeated blocks in place with torch.compile (PyTorch's regional compilation) and return
    what undoes it; None when the module has no such stack.

    torch traces one block and reuses its graph for every other one of the stack, so compiling takes one block's
    time instead of the whole model's (cold, on a 2-core CPU: 22 s instead of 56 s for MiniLM-L6, 36 s instead of 264 s
    for mxbai base-v2's shape; benchmarks/compile_modes.py), while the fusions that
    pay (norms, activations, rotary embeddings) all happen inside a block. Dynamic shapes: one graph serves every
    batch size and length above one.
    """
    blocks = repeated_blocks(module)
    if blocks is None:
        return None
    originals = list(blocks)
    for i, block in enumerate(originals):
        blocks[i] = torch.compile(block, dynamic=True)  # type: ignore[assignment]  # a callable module in its place

    def uncompile() -> None:
        for i, block in enumerate(originals):
            blocks[i] = block

    return uncompile


class TransformersScorer(ABC, Generic[E]):
    """Tokenizer + model loaded once from a spec. A subclass says how it encodes pairs (`_encode`) and scores
    encodings (`score_encoded`); scoring text is the two in a row. The engine calls them apart (see
    rerank.backend.PairEncoder): `encode_pairs` on its tokenizer thread, with a tokenizer of its own."""

    def __init__(self, spec: LocalSpec, model_cls: Any, name: str | None = None) -> None:
        self.name = name or spec.source
        self.spec = spec
        if spec.threads:
            torch.set_num_threads(spec.threads)  # process-wide: torch has no per-model thread pool
        self.device = pick_device(spec.device)
        self.path = resolve_source(spec.source)
        offline = hub_offline()
        try:
            # Model first: its errors (missing weights, unknown architecture) say more than the tokenizer's.
            with FROM_PRETRAINED_LOCK:
                model = model_cls.from_pretrained(self.path, dtype=DTYPES[spec.dtype], local_files_only=offline)
                self.tokenizer = AutoTokenizer.from_pretrained(self.path, local_files_only=offline)
            self.model = model.to(self.device).eval()
        except Exception as exc:  # transformers raises OSError/ValueError/RuntimeError/...: one error type for callers
            where = "" if self.path == spec.source else f" (resolved to {self.path})"
            raise ModelLoadError(f"cannot load model {spec.source!r}{where}: {type(exc).__name__}: {exc}") from exc
        # encode_pairs and count_tokens run on the engine's tokenizer thread while the model thread scores, and one
        # tokenizer must not serve two threads at once: they get a copy of their own.
        self._side_tokenizer = copy.deepcopy(self.tokenizer)
        self.max_length = self._max_length()
        self.max_batch_tokens = spec.batch_tokens(self.device.type)
        self.batch_size = spec.batch_pairs(self.device.type)
        # What the backends call. With `compile`, its blocks are compiled by torch on first use of each shape it
        # tells apart: `warm_up`.
        self.forward = self.module = self._module()
        compiles = spec.compiles(self.device.type)
        self._uncompile = compile_blocks(self.module) if compiles else None
        if compiles and self._uncompile is None:
            log.warning("model %s: compile: no stack of repeated blocks in %s, running uncompiled", self.name,
                        type(self.module).__name__)

    @property
    def compiled(self) -> bool:
        """Whether the model runs compiled (`compile`), until a failed compile at warm-up turns it back."""
        return self._uncompile is not None

    def warm_up(self) -> None:
        """Compile the model before the first search, when `compile` is on (an uncompiled one needs nothing), then
        log how it runs.

        torch.compile builds a graph for a batch of one and another for every bigger batch; building either during
        a search would stall it for seconds, so a single pair and then two are scored here. A model that fails to
        compile (no C++ compiler, an operator inductor cannot lower) runs uncompiled: slower, but it serves.
        """
        uncompile = self._uncompile
        if uncompile is not None:
            try:
                self.score_pairs(["warm up"], ["warm up"])
                # Documents not seen before: the bi-encoder would take a known one from its cache, not the model.
                self.score_pairs(["warm up"] * 2, ["a first document", "a second document, a little longer"])
            except Exception as exc:
                log.warning("model %s: torch.compile failed, running uncompiled: %s: %s", self.name,
                            type(exc).__name__, exc)
                uncompile()
                self._uncompile = None
        log.info("model %s: ready on %s, %s, %s", self.name, self.device, str(self.model.dtype).removeprefix("torch."),
                 "compiled" if self.compiled else "not compiled")

    def score(self, query: str, docs: Sequence[str]) -> list[float]:
        return self.score_pairs([query] * len(docs), docs)

    def score_pairs(self, queries: Sequence[str], docs: Sequence[str]) -> list[float]:
        if len(queries) != len(docs):
            raise ValueError(f"{len(queries)} queries for {len(docs)} documents")
        return self.score_encoded(self._encode(self.tokenizer, queries, docs)) if docs else []

    def encode_pairs(self, queries: Sequence[str], docs: Sequence[str]) -> list[E]:
        """The pairs as the model will read them; safe beside a scoring call (a tokenizer of its own)."""
        if len(queries) != len(docs):
            raise ValueError(f"{len(queries)} queries for {len(docs)} documents")
        return self._encode(self._side_tokenizer, queries, docs)

    @abstractmethod
    def _encode(self, tokenizer: Any, queries: Sequence[str], docs: Sequence[str]) -> list[E]:
        """One encoding per pair (queries[i], docs[i]), with this tokenizer; each distinct query tokenized once."""

    @abstractmethod
    def score_encoded(self, pairs: Sequence[E]) -> list[float]:
        """One score per encoding, equal to what `score_pairs` gives the pair it encodes; `warm_up` scores
        through it."""

    def _module(self) -> torch.nn.Module:
        """The part of the model `forward` runs (and compiles): all of it, unless a backend reads an inner part."""
        module: torch.nn.Module = self.model
        return module

    def _max_length(self) -> int:
        # Never feed more than the tokenizer or the position embeddings allow, whatever the config asks for.
        limits = [self.spec.max_length, self.tokenizer.model_max_length]
        limits.append(getattr(self.model.config, "max_position_embeddings", None) or self.spec.max_length)
        return int(min(limits))

    def count_tokens(self, texts: Sequence[str]) -> list[int]:
        """Tokens of each text alone, before truncation and without special tokens (what budgets need)."""
        return token_lengths(self._side_tokenizer, texts)

    def _forward(self, inputs: Sequence[Tokenized]) -> Iterator[tuple[list[int], Any, torch.Tensor]]:
        """Tokenized inputs through the model in calls cut by `token_batches`: for each call, the positions it
        holds, the model's output and the attention mask. Call under `torch.inference_mode()`."""
        for rows in token_batches([row.tokens for row in inputs], self.batch_size, self.max_batch_tokens):
            call = self.tokenizer.pad([inputs[i].unpadded() for i in rows], return_tensors="pt").to(self.device)
            yield rows, self.forward(**call), call["attention_mask"]
