"""Backend name -> scorer class, imported lazily so config validation and remote-only setups need no torch."""
from __future__ import annotations

import importlib

from rerank.backend import ModelLoadError, Scorer
from rerank.spec import ModelSpec

# One line per backend: "module:Class", constructed as Class(spec, name=name).
BACKENDS: dict[str, str] = {
    "bi-encoder": "rerank.bi_encoder:BiEncoderScorer",
    "cross-encoder": "rerank.cross_encoder:CrossEncoderScorer",
    "remote": "rerank.remote:RemoteScorer",
    "mxbai-v2": "rerank.mxbai:MxbaiV2Scorer",
}


def load_scorer(name: str, spec: ModelSpec) -> Scorer:
    """Load the model `spec` describes under the config name `name`, warmed up (local models); every failure to
    load is a ModelLoadError."""
    target = BACKENDS.get(spec.backend)
    if target is None:
        raise ModelLoadError(f"model {name!r}: unknown backend {spec.backend!r} (known: {', '.join(BACKENDS)})")
    module, _, cls = target.partition(":")
    scorer: Scorer = getattr(importlib.import_module(module), cls)(spec, name=name)
    warm_up = getattr(scorer, "warm_up", None)
    if warm_up is not None:
        warm_up()
    return scorer
