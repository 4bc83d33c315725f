"""mxbai-rerank-v2 (mixedbread's Qwen-2.5 rerankers, base 0.5B and large 1.5B): a causal LM asked for 1 or 0.

The models were trained on one fixed prompt, so it is rebuilt token for token as mixedbread's `mxbai-rerank`
library builds it (tests/unit/test_mxbai.py pins parity with that library on the same weights):

    <chat prefix>[instruction: I\\n]query: Q\\ndocument: D\\n<task prompt><chat suffix>

Each piece is tokenized on its own and the ids are concatenated; tokenizing the joined string would merge
across piece boundaries and give other ids. The score is logit("1") - logit("0") at the last position, i.e. the
log-odds of "relevant"; the LM head runs on that position only (what `logits_to_keep=1` does), which matters with
a 151936-word vocabulary.

Batches are padded on the right and run without a padding mask. A causal model never attends ahead, so the
padding after a row's last token changes nothing that token sees, and its positions start at 0 as when the pair
runs alone. Without a mask, attention takes the causal kernels: on an H200 a base-v2 call of 16k tokens ran 10%
faster without the padding mask (benchmarks/gpu_profile.py).

Every pair of a search opens with the same tokens: the chat prefix (24 with Qwen's tokenizer) and the query part
(about 22 more on SciFact, of pairs of 200-350 tokens). For the same reason as above, a causal model computes those
tokens' keys and values the same whatever follows, so they are computed once, kept in a small LRU by their ids, and
the rows of a call start after them and attend to them (`share_prefix`): a search's later calls, and the chat prefix
of every call, cost nothing again. Rows of several queries in one call share the chat prefix. Attention then needs
a mask (the rows sit after the cached prefix), which the fewer tokens more than pay for on a CPU: base-v2 in fp32
scored 8.8% more pairs/s at 353-token pairs, 42 of them shared (benchmarks/gpu_bench.py --share-prefix both).
On a GPU it does not pay, so it is done on a CPU only: on an H200 (bf16, 100 pairs of 351 tokens per search) base-v2
took 140-195 ms per new search sharing against 107 ms not, and with the prefix already kept 81.8 ms against 83.3
(benchmarks/gpu_profile.py). A compiled model never shares: the cache would recompile its blocks once per layer.

Token budget (`max_length`, default 8192, excludes the fixed template): the query part keeps at most 3/4 of it,
"\\n" + the document part fills what is left, both cut at the end; a budget that would overflow the position
embeddings together with the template shrinks to fit.
"""
from __future__ import annotations

import copy
import inspect
from array import array
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from transformers import AutoModelForCausalLM, DynamicCache

from rerank.batching import token_batches
from rerank.loading import TransformersScorer, pick_device
from rerank.lru import LRU
from rerank.spec import MxbaiV2Spec

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
PREFIX_CACHE_ENTRIES = 64  # prefixes whose keys and values are kept: searches in flight, and then some (base-v2:
# 24 layers x 2 x 128 values per token, 46 tokens: 0.6 MB each in bfloat16)


def query_part(query: str, instruction: str | None = None) -> str:
    text = f"query: {query}"
    return f"instruction: {instruction}{SEP}{text}" if instruction else text


def document_part(doc: str) -> str:
    return f"document: {doc}"


def prompt_text(query: str, doc: str, instruction: str | None = None) -> str:
    """The whole prompt as text, untruncated (what the model reads; the ids are built piecewise, see above)."""
    return CHAT_PREFIX + query_part(query, instruction) + SEP + document_part(doc) + SEP + TASK_PROMPT + CHAT_SUFFIX


def backend_defaults(spec: MxbaiV2Spec) -> MxbaiV2Spec:
    """This backend's own defaults for fields the config left unset: an 8k budget, and bfloat16 on a GPU."""
    update: dict[str, object] = {}
    if "max_length" not in spec.model_fields_set:
        update["max_length"] = DEFAULT_MAX_LENGTH
    if "dtype" not in spec.model_fields_set and pick_device(spec.device).type == "cuda":
        update["dtype"] = "bfloat16"
    return spec.model_copy(update=update) if update else spec


@dataclass(frozen=True, slots=True)
class Prompt:
    """One pair as the model reads it: its ids, unpadded (4-byte ints: queued searches hold theirs until their
    turn), and how many open every pair of its query: the chat prefix and the query part."""

    ids: array[int]
    shared: int

    @property
    def tokens(self) -> int:
        return len(self.ids)


class MxbaiV2Scorer(TransformersScorer[Prompt]):
    """Scores = log-odds of "relevant" from a Qwen2 causal LM, in length-sorted, right-padded batches."""

    def __init__(self, spec: MxbaiV2Spec, name: str | None = None) -> None:
        spec = backend_defaults(spec)
        super().__init__(spec, AutoModelForCausalLM, name)
        if self.model.config._attn_implementation != "sdpa":
            self.model.set_attn_implementation("sdpa")
        self.instruction = spec.instruction
        self.prefix_ids = self._ids(CHAT_PREFIX)
        self.sep_ids = self._ids(SEP)
        self.suffix_ids = self.sep_ids + self._ids(TASK_PROMPT) + self._ids(CHAT_SUFFIX)
        self.relevant_id = self._ids(RELEVANT)[0]
        self.not_relevant_id = self._ids(NOT_RELEVANT)[0]
        pad = self.tokenizer.pad_token_id
        self.pad_id = pad if pad is not None else (self.tokenizer.eos_token_id or 0)
        template = len(self.prefix_ids) + len(self.suffix_ids)
        # Compiled blocks would be recompiled for each layer (dynamo guards on the layer index the cache is read
        # with), so a compiled model runs whole rows; on a GPU sharing costs more than it saves (module docstring).
        self.share_prefix = self.device.type == "cpu" and not self.compiled
        self._prefixes: LRU[bytes, list[tuple[torch.Tensor, torch.Tensor]]] = LRU(PREFIX_CACHE_ENTRIES)
        self._chat_prefix = array("i", self.prefix_ids)
        # transformers 5.24 renamed the decoder's `past_key_values` argument `cache`; both are served.
        parameters = inspect.signature(type(self.model.base_model).forward).parameters
        self._cache_arg = "cache" if "cache" in parameters else "past_key_values"
        positions = getattr(self.model.config, "max_position_embeddings", None)
        if positions and self.max_length + template > positions:
            self.max_length = positions - template

    def with_instruction(self, instruction: str | None) -> MxbaiV2Scorer:
        """This model with another instruction before every query (None: none), for a caller that varies it per call
        (rerank/library.py): a view sharing weights, tokenizers and kept prefixes, whose keys are their ids (the
        instruction's among them). Not for a model the engine serves: its score cache is keyed by its spec's."""
        view = copy.copy(self)
        view.instruction = instruction
        view.spec = self.spec.model_copy(update={"instruction": instruction})
        return view

    def _module(self) -> torch.nn.Module:
        # The decoder alone: the LM head runs on each row's last real token only (`_score_rows`).
        decoder: torch.nn.Module = self.model.base_model
        return decoder

    def _max_length(self) -> int:
        # The budget excludes the template, so the generic min(config, tokenizer, positions) does not apply;
        # __init__ fits it to the position embeddings once the template's length is known.
        return self.spec.max_length

    def _ids(self, text: str, tokenizer: Any = None) -> list[int]:
        """Ids of one piece, by `tokenizer` (the engine's tokenizer thread passes its own) or the model's."""
        tokenizer = self.tokenizer if tokenizer is None else tokenizer
        ids: list[int] = tokenizer(text, add_special_tokens=False, verbose=False)["input_ids"]
        return ids

    def query_ids(self, query: str, tokenizer: Any = None) -> list[int]:
        ids = self._ids(query_part(query, self.instruction), tokenizer)
        return ids[: self.max_length * QUERY_SHARE[0] // QUERY_SHARE[1]]

    def assemble(self, query_ids: list[int], document_ids: list[int]) -> list[int]:
        """Template + query + "\\n" + document, the document cut so query and document fit `max_length`."""
        body = (self.sep_ids + document_ids)[: self.max_length - len(query_ids)]
        return self.prefix_ids + query_ids + body + self.suffix_ids

    def encode(self, query: str, docs: Sequence[str]) -> list[list[int]]:
        """The model's input ids for each (query, document) pair, unpadded."""
        return [prompt.ids.tolist() for prompt in self._encode(self.tokenizer, [query] * len(docs), docs)]

    def _encode(self, tokenizer: Any, queries: Sequence[str], docs: Sequence[str]) -> list[Prompt]:
        query_ids = {query: self.query_ids(query, tokenizer) for query in dict.fromkeys(queries)}
        parts = [document_part(doc) for doc in docs]
        documents = tokenizer(parts, add_special_tokens=False, verbose=False)["input_ids"] if parts else []
        return [Prompt(array("i", self.assemble(query_ids[query], ids)), len(self.prefix_ids) + len(query_ids[query]))
                for query, ids in zip(queries, documents)]

    def score_encoded(self, pairs: Sequence[Prompt]) -> list[float]:
        """Pairs of several searches in one call: the engine packs its micro-batches this way."""
        scores = [0.0] * len(pairs)
        with torch.inference_mode():
            for call in token_batches([pair.tokens for pair in pairs], self.batch_size, self.max_batch_tokens):
                for i, value in zip(call, self._score_rows([pairs[i] for i in call])):
                    scores[i] = value
        return scores

    def _score_rows(self, prompts: list[Prompt]) -> list[float]:
        """One right-padded batch after the rows' shared prefix (see the module's docstring); each row's score is read
        at its last token."""
        prefix = self._shared_prefix(prompts)
        tails = [prompt.ids[len(prefix) :] for prompt in prompts] if prefix else [prompt.ids for prompt in prompts]
        width = -(-max(map(len, tails)) // PAD_MULTIPLE) * PAD_MULTIPLE
        input_ids = torch.full((len(tails), width), self.pad_id, dtype=torch.long)
        for i, tail in enumerate(tails):
            input_ids[i, : len(tail)] = torch.frombuffer(tail, dtype=torch.int32)
        last = torch.tensor([len(tail) - 1 for tail in tails]).to(self.device)
        inputs: dict[str, Any] = {"input_ids": input_ids.to(self.device), "use_cache": False}
        if prefix:
            # Positions go on from the prefix's: the model counts them from the cache's length.
            inputs[self._cache_arg] = self._prefix_cache(prefix, len(tails))
        hidden = self.forward(**inputs).last_hidden_state
        logits = self.model.get_output_embeddings()(hidden[torch.arange(len(tails), device=self.device), last])
        # The difference in float32: rounding it to bfloat16 would cost up to ~0.03 at typical magnitudes.
        scores: list[float] = (logits[:, self.relevant_id].float() - logits[:, self.not_relevant_id].float()).tolist()
        return scores

    def _shared_prefix(self, prompts: list[Prompt]) -> array[int]:
        """The ids every row of a call opens with and that run apart from them: chat prefix and query when the rows
        have one query, else the chat prefix; none when sharing is off."""
        if not self.share_prefix:
            return array("i")
        first = prompts[0]
        opening = first.ids[: first.shared]
        if all(prompt.shared == first.shared and prompt.ids[: prompt.shared] == opening for prompt in prompts[1:]):
            return opening
        return self._chat_prefix

    def forget_prefixes(self) -> None:
        """Drop the kept prefixes, so the next search computes its own as a new query would (benchmarks)."""
        self._prefixes = LRU(PREFIX_CACHE_ENTRIES)

    def _prefix_cache(self, prefix: array[int], rows: int) -> DynamicCache:
        """A cache holding the keys and values of `prefix` for each of `rows` rows: computed once per prefix."""
        key = prefix.tobytes()
        layers = self._prefixes.get(key)
        if layers is None:
            computed = DynamicCache(config=self.model.config)
            ids = torch.frombuffer(prefix, dtype=torch.int32).to(device=self.device, dtype=torch.long)[None]
            self.forward(input_ids=ids, use_cache=True, **{self._cache_arg: computed})
            # A decoder's layers are full-attention `DynamicLayer`s (Qwen2 has no linear-attention layers); reading
            # their tensors is transformers 5's cache API (`layers`, `keys`, `values`), pinned by the lock file.
            layers = [(layer.keys, layer.values) for layer in computed.layers]  # type: ignore[union-attr,misc]
            self._prefixes.put(key, layers)
        cache = DynamicCache(config=self.model.config)
        for i, (keys, values) in enumerate(layers):
            cache.update(keys.expand(rows, -1, -1, -1), values.expand(rows, -1, -1, -1), i)
        return cache
