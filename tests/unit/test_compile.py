"""`compile`: the local backends run their model through torch.compile, compiled at load, same scores; by default
on a CUDA GPU only."""
from __future__ import annotations

import logging
import os

os.environ["HF_HUB_OFFLINE"] = "1"  # before transformers is imported: nothing may try the network

from concurrent.futures import ThreadPoolExecutor

import pytest
import torch
import torch._dynamo
from pydantic import ValidationError
from torch._dynamo.eval_frame import OptimizedModule
from torch._dynamo.utils import counters

from rerank import loading
from rerank.registry import load_scorer
from rerank.spec import SPEC_TYPES, BiEncoderSpec, CrossEncoderSpec, MxbaiV2Spec, RemoteSpec
from rerank_proxy_tools.models import MINILM_SOURCE, make_tiny_cross_encoder
from rerank_proxy_tools.qwen import make_tiny_qwen2

QUERY = "vitamin C deficiency causes scurvy"
DOCS = [
    "Scurvy results from a prolonged lack of ascorbic acid in the diet.",
    "Sailors on long voyages developed bleeding gums until citrus fruit was added to rations, which cured them.",
    "Cigarette smoke contains carcinogens.",
    "Collagen synthesis requires ascorbate as a cofactor for prolyl hydroxylase, an enzyme of connective tissue.",
    "Sleep deprivation impairs working memory.",
]


@pytest.fixture(scope="module")
def sources(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    qwen = tmp_path_factory.mktemp("tiny-qwen2")
    make_tiny_qwen2(qwen)
    return {
        "bi-encoder": MINILM_SOURCE,
        "cross-encoder": str(make_tiny_cross_encoder(tmp_path_factory.mktemp("tiny-ce"))),
        "mxbai-v2": str(qwen),
    }


@pytest.mark.parametrize("backend", ["bi-encoder", "cross-encoder", "mxbai-v2"])
def test_a_compiled_model_scores_as_the_uncompiled_one_and_compiles_only_at_load(
    backend: str, sources: dict[str, str]
) -> None:
    # Small calls, so one search makes calls of one input and of several: the two graphs torch builds.
    spec = SPEC_TYPES[backend](source=sources[backend], max_batch_tokens=96)
    eager = load_scorer("eager", spec)
    with ThreadPoolExecutor(1) as thread:  # loaded where the engine loads it: off the main thread
        compiled = thread.submit(load_scorer, "compiled", spec.model_copy(update={"compile": True})).result()
    blocks = loading.repeated_blocks(compiled.module)
    assert blocks is not None and all(isinstance(block, OptimizedModule) for block in blocks)

    with torch._dynamo.config.patch(error_on_recompile=True):  # every shape from here on reuses a warm-up graph
        for query, docs in [(QUERY, DOCS), (QUERY, DOCS[:1]), ("scurvy", DOCS[2:])]:
            assert compiled.score(query, docs) == pytest.approx(eager.score(query, docs), abs=1e-4)


def test_one_graph_serves_every_block(sources: dict[str, str]) -> None:
    # Regional compilation: torch traces a block once and reuses it for the others, so compiling costs one
    # block's time. MiniLM has 6 blocks; a batch of one and bigger batches are the two graphs.
    torch._dynamo.reset()
    counters.clear()
    scorer = load_scorer("bi", BiEncoderSpec(source=sources["bi-encoder"], compile=True))

    assert len(loading.repeated_blocks(scorer.module) or []) == 6
    assert 1 <= counters["stats"]["unique_graphs"] <= 2


class FailingBlock(torch.nn.Module):
    def forward(self, *args: object, **kwargs: object) -> object:
        raise RuntimeError("no C++ compiler found")


def test_a_model_that_fails_to_compile_serves_uncompiled(
    sources: dict[str, str], monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(loading.torch, "compile", lambda block, **_: FailingBlock())
    spec = CrossEncoderSpec(source=sources["cross-encoder"])
    with caplog.at_level(logging.WARNING, logger="rerank.loading"):
        scorer = load_scorer("ce", spec.model_copy(update={"compile": True}))

    assert not any(isinstance(block, FailingBlock) for block in loading.repeated_blocks(scorer.module) or [])
    assert "torch.compile failed, running uncompiled: RuntimeError: no C++ compiler found" in caplog.text
    assert scorer.score(QUERY, DOCS) == load_scorer("ce", spec).score(QUERY, DOCS)


def test_compile_is_rejected_on_the_remote_backend() -> None:
    with pytest.raises(ValidationError, match="compile: only valid with a local backend"):
        RemoteSpec(source="http://rerank-gpu:7997", compile=True)


def test_compile_auto_means_cuda_only_and_an_explicit_value_wins() -> None:
    auto = MxbaiV2Spec(source="mixedbread-ai/mxbai-rerank-base-v2")

    assert (auto.compile, auto.compiles("cuda"), auto.compiles("cpu"), auto.compiles("mps")) == ("auto", True, False,
                                                                                                 False)
    assert auto.model_copy(update={"compile": True}).compiles("cpu") is True
    assert auto.model_copy(update={"compile": False}).compiles("cuda") is False


def test_a_model_on_a_cpu_runs_uncompiled_by_default(sources: dict[str, str], caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="rerank.loading"):
        scorer = load_scorer("ce", CrossEncoderSpec(source=sources["cross-encoder"]))

    assert scorer.compiled is False
    assert "model ce: ready on cpu, float32, not compiled" in caplog.text
    assert not any(isinstance(block, OptimizedModule) for block in loading.repeated_blocks(scorer.module) or [])


def test_the_remote_backend_takes_the_default_compile() -> None:
    assert RemoteSpec(source="http://rerank-gpu:7997").compile == "auto"
