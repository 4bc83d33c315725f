"""mxbai-rerank-v2 (mixedbread's Qwen-2.5 rerankers, base 0.5B and large 1.5B): a causal LM asked for 1 or 0.

The models were trained on one fixed prompt, so it is rebuilt token for token as mixedbread's `mxbai-rerank`
library builds it (tests/unit/test_mxbai.py pins parity with that library on the same weights):

    <chat prefix>[instruction: I\\n]query: Q\\ndocument: D\\n<task prompt><chat suffix>

Each piece is tokenized on its own and the ids are concatenated; tokenizing the joined string would merge
across piece boundaries and give other ids. The score is logit("1") - logit("0") at the last position, i.e. the
log-odds of "relevant"; the LM head runs on that position only (what `logits_to_keep=1` does), which matters with
a 151936-word vocabulary.

Batches are padded on the right and run without an attention mask. A causal model never attends ahead, so the
padding after a row's last token changes nothing that token sees, and its positions start at 0 as when the pair
runs alone. Without a mask, attention takes the causal kernels: on an H200 a base-v2 call of 16k tokens ran 10%
faster without the padding mask (benchmarks/gpu_profile.py).

Token budget (`max_length`, default 8192, excludes the fixed template): the query part keeps at most 3/4 of it,
"\\n" + the document part fills what is left, both cut at the end; a budget that would overflow the position
embeddings together with the template shrinks to fit.
"""
from __future__ import annotations

from array import array
from typing import Any, Sequence

import torch
from transformers import AutoModelForCausalLM

from rerank.batching import token_batches
from rerank.loading import Tokenized, TransformersScorer, pick_device
from rerank.spec import ModelSpec

SEP = "\n"
CHAT_PREFIX = (
    "<|im_start|>system\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant.<|im_end|>\n"
    "<|im_start|>user\n"
)
CHAT_SUFFIX = "<|im_end|>\n<|im_start|>assistant\n"
TASK_PROMPT = (
    "You are a search relevance expert who evaluates how well documents match search queries. For each "
    "query-document pair, carefully analyze the semantic relationship between them, then provide your binary "
    "relevance judgment (0 for not relevant, 1 for relevant).\nRelevance:"
)
RELEVANT, NOT_RELEVANT = "1", "0"
DEFAULT_MAX_LENGTH = 8192
QUERY_SHARE = (3, 4)  # the query part may take at most 3/4 of the budget; the rest is the document's
PAD_MULTIPLE = 8  # padded widths are multiples of 8 (tensor-core friendly, and what the reference does)


def query_part(query: str, instruction: str | None = None) -> str:
    text = f"query: {query}"
    return f"instruction: {instruction}{SEP}{text}" if instruction else text


def document_part(doc: str) -> str:
    return f"document: {doc}"


def prompt_text(query: str, doc: str, instruction: str | None = None) -> str:
    """The whole prompt as text, untruncated (what the model reads; the ids are built piecewise, see above)."""
    return CHAT_PREFIX + query_part(query, instruction) + SEP + document_part(doc) + SEP + TASK_PROMPT + CHAT_SUFFIX


def backend_defaults(spec: ModelSpec) -> ModelSpec:
    """This backend's own defaults for fields the config left unset: an 8k budget, and bfloat16 on a GPU."""
    update: dict[str, object] = {}
    if "max_length" not in spec.model_fields_set:
        update["max_length"] = DEFAULT_MAX_LENGTH
    if "dtype" not in spec.model_fields_set and pick_device(spec.device).type == "cuda":
        update["dtype"] = "bfloat16"
    return spec.model_copy(update=update) if update else spec


class MxbaiV2Scorer(TransformersScorer[Tokenized]):
    """Scores = log-odds of "relevant" from a Qwen2 causal LM, in length-sorted, right-padded batches."""

    def __init__(self, spec: ModelSpec, name: str | None = None) -> None:
        super().__init__(backend_defaults(spec), AutoModelForCausalLM, name)
        if self.model.config._attn_implementation != "sdpa":
            self.model.set_attn_implementation("sdpa")
        self.instruction = self.spec.instruction
        self.prefix_ids = self._ids(CHAT_PREFIX)
        self.sep_ids = self._ids(SEP)
        self.suffix_ids = self.sep_ids + self._ids(TASK_PROMPT) + self._ids(CHAT_SUFFIX)
        self.relevant_id = self._ids(RELEVANT)[0]
        self.not_relevant_id = self._ids(NOT_RELEVANT)[0]
        pad = self.tokenizer.pad_token_id
        self.pad_id = pad if pad is not None else (self.tokenizer.eos_token_id or 0)
        template = len(self.prefix_ids) + len(self.suffix_ids)
        positions = getattr(self.model.config, "max_position_embeddings", None)
        if positions and self.max_length + template > positions:
            self.max_length = positions - template

    def _module(self) -> torch.nn.Module:
        # The decoder alone: the LM head runs on each row's last real token only (`_score_rows`).
        return self.model.base_model

    def _max_length(self) -> int:
        # The budget excludes the template, so the generic min(config, tokenizer, positions) does not apply;
        # __init__ fits it to the position embeddings once the template's length is known.
        return self.spec.max_length

    def _ids(self, text: str, tokenizer: Any = None) -> list[int]:
        """Ids of one piece, by `tokenizer` (the engine's tokenizer thread passes its own) or the model's."""
        tokenizer = self.tokenizer if tokenizer is None else tokenizer
        return tokenizer(text, add_special_tokens=False, verbose=False)["input_ids"]

    def query_ids(self, query: str, tokenizer: Any = None) -> list[int]:
        ids = self._ids(query_part(query, self.instruction), tokenizer)
        return ids[: self.max_length * QUERY_SHARE[0] // QUERY_SHARE[1]]

    def assemble(self, query_ids: list[int], document_ids: list[int]) -> list[int]:
        """Template + query + "\\n" + document, the document cut so query and document fit `max_length`."""
        body = (self.sep_ids + document_ids)[: self.max_length - len(query_ids)]
        return self.prefix_ids + query_ids + body + self.suffix_ids

    def encode(self, query: str, docs: Sequence[str]) -> list[list[int]]:
        """The model's input ids for each (query, document) pair, unpadded."""
        return [prompt.input_ids for prompt in self._encode(self.tokenizer, [query] * len(docs), docs)]

    def _encode(self, tokenizer: Any, queries: Sequence[str], docs: Sequence[str]) -> list[Tokenized]:
        query_ids = {query: self.query_ids(query, tokenizer) for query in dict.fromkeys(queries)}
        parts = [document_part(doc) for doc in docs]
        documents = tokenizer(parts, add_special_tokens=False, verbose=False)["input_ids"] if parts else []
        return [Tokenized.of({"input_ids": self.assemble(query_ids[query], ids)})
                for query, ids in zip(queries, documents)]

    def score_encoded(self, pairs: Sequence[Tokenized]) -> list[float]:
        """Pairs of several searches in one call: the engine packs its micro-batches this way."""
        scores = [0.0] * len(pairs)
        with torch.inference_mode():
            for call in token_batches([pair.tokens for pair in pairs], self.batch_size, self.max_batch_tokens):
                for i, value in zip(call, self._score_rows([pairs[i].features["input_ids"] for i in call])):
                    scores[i] = value
        return scores

    def _score_rows(self, rows: list[array[int]]) -> list[float]:
        """One right-padded batch, no mask (see the module's docstring); each row's score is read at its last token."""
        width = -(-max(map(len, rows)) // PAD_MULTIPLE) * PAD_MULTIPLE
        input_ids = torch.full((len(rows), width), self.pad_id, dtype=torch.long)
        for i, row in enumerate(rows):
            input_ids[i, : len(row)] = torch.frombuffer(row, dtype=torch.int32)
        last = torch.tensor([len(row) - 1 for row in rows]).to(self.device)
        hidden = self.forward(input_ids=input_ids.to(self.device), use_cache=False).last_hidden_state
        logits = self.model.get_output_embeddings()(hidden[torch.arange(len(rows), device=self.device), last])
        # The difference in float32: rounding it to bfloat16 would cost up to ~0.03 at typical magnitudes.
        return (logits[:, self.relevant_id].float() - logits[:, self.not_relevant_id].float()).tolist()
