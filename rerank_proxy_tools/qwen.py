"""Random Qwen2 causal LMs and Qwen-style tokenizers, built in code, deterministic.

Used by the mxbai-v2 tests and by `scripts/mxbai_reference.py`, which runs in a separate venv with transformers 4.x
(the reference library needs it). So this module depends only on torch, tokenizers and safetensors, never on the
transformers version: the weights are drawn tensor by tensor from one seeded generator under the checkpoint's own
parameter names and written as a hub-style folder (v4-style config.json, model.safetensors, tokenizer files) that
both transformers generations load the same way. `weights_sha256` fingerprints the tensors so the two sides can
prove they scored the same model.

The tokenizer is a small BPE trained here, offline, or Qwen's own (`qwen_vocab_tokenizer`), rebuilt from Qwen's
vocabulary file, which `fetch_qwen_vocab` takes once from a package on PyPI.
"""
from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path
from typing import Any

import torch

SPECIAL_TOKENS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>")
# Qwen's vocabulary file (qwen.tiktoken): the dashscope package on PyPI (Apache-2.0) ships it, and only that file is
# taken from its wheel, checked against this sha256.
QWEN_VOCAB = Path(__file__).resolve().parents[1] / ".cache" / "qwen.tiktoken"
QWEN_VOCAB_WHEEL = "dashscope==2.0.2"
QWEN_VOCAB_MEMBER = "dashscope/resources/qwen.tiktoken"
QWEN_VOCAB_SHA256 = "b2b1b8dfb5cc5f024bafc373121c6aba3f66f9a5a0269e243470a1de16a33186"
# Qwen2's pre-tokenizer split (as transformers' Qwen2Tokenizer rebuilds it): with exactly this pipeline saved,
# transformers 4 (which reads tokenizer.json as is) and 5 (which rebuilds it from vocab + merges) tokenize alike.
QWEN_SPLIT = (
    r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"""
    r"""|\s*[\r\n]+|\s+(?!\S)|\s+"""
)

# The training text: search-flavoured English so the prompt words get merged tokens; digits stay single bytes.
_CORPUS = """\
A search engine ranks documents by how well they match the query of a user.
The reranker reads each query and document pair and judges whether the document is relevant.
Relevance judgments are binary: a relevant document answers the query, an irrelevant one does not.
You are a careful assistant who evaluates the semantic relationship between questions and passages.
Scurvy is caused by a lack of vitamin C, and sailors avoided it by eating citrus fruit.
Smoking damages the lungs and raises the risk of cancer and heart disease.
The capital of France is Paris, a city on the river Seine with many museums.
Photosynthesis converts light, water and carbon dioxide into sugar and oxygen in plants.
Elasticsearch and OpenSearch store an inverted index and score matches with BM25.
Neural rerankers re-order the top hits of a keyword search to improve precision.
Instruction: prefer documents written for experts; query: how do vaccines train the immune system?
The model was created to provide a relevance expert for every language, query and document.
Carefully analyze each pair, then give your judgment as 0 for not relevant and 1 for relevant.
Mount Everest is the highest mountain above sea level, on the border of Nepal and China.
Python is a programming language; its standard library includes json, pathlib and asyncio.
The quick brown fox jumps over the lazy dog while the cat sleeps in the sun.
"""

TINY_CONFIG: dict[str, Any] = {
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "vocab_size": 640,
}
TINY_QWEN_VOCAB_CONFIG: dict[str, Any] = TINY_CONFIG | {"vocab_size": 151936}
# mxbai-rerank-base-v2 (Qwen2.5-0.5B): same shapes, so time and memory are the real model's.
BASE_V2_CONFIG: dict[str, Any] = {
    "hidden_size": 896,
    "intermediate_size": 4864,
    "num_hidden_layers": 24,
    "num_attention_heads": 14,
    "num_key_value_heads": 2,
    "vocab_size": 151936,
}
# Weight scales per config, chosen so that the score really depends on the document (spread of several units
# across documents) instead of every pair getting the same near-constant logit.
TINY_STD = 0.25
BASE_V2_STD = 0.05


def _qwen_pipeline(tokenizer: Any) -> None:
    """Qwen2's normalizer, pre-tokenizer and decoder around a byte-level BPE model."""
    from tokenizers import Regex, decoders, normalizers, pre_tokenizers

    tokenizer.normalizer = normalizers.NFC()
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(QWEN_SPLIT), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    tokenizer.decoder = decoders.ByteLevel()


def train_tokenizer(vocab_size: int = 600) -> Any:
    """A byte-level BPE with Qwen2's pre-tokenizer and special tokens, trained on `_CORPUS` (deterministic)."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    tokenizer = Tokenizer(
        models.BPE(
            dropout=None, unk_token=None, continuing_subword_prefix="", end_of_word_suffix="", fuse_unk=False,
            byte_fallback=False,
        )
    )
    _qwen_pipeline(tokenizer)
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=2,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(_CORPUS.splitlines(), trainer=trainer)
    return tokenizer


def fetch_qwen_vocab(dest: Path = QWEN_VOCAB) -> Path:
    """Qwen's vocabulary file at `dest`, downloaded the first time: one wheel, without its dependencies, by pip
    (which honours the machine's index settings). Without network it fails at once, saying so."""
    if dest.is_file():
        return dest
    with tempfile.TemporaryDirectory() as tmp:
        pip = [sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--retries", "0", "--timeout", "15"]
        done = subprocess.run([*pip, "-d", tmp, QWEN_VOCAB_WHEEL], capture_output=True, text=True)
        if done.returncode != 0:
            raise RuntimeError(f"cannot download {QWEN_VOCAB_WHEEL} for Qwen's vocabulary: {done.stderr.strip()}")
        data = zipfile.ZipFile(next(Path(tmp).glob("*.whl"))).read(QWEN_VOCAB_MEMBER)
    if hashlib.sha256(data).hexdigest() != QWEN_VOCAB_SHA256:
        raise RuntimeError(f"{QWEN_VOCAB_WHEEL}'s {QWEN_VOCAB_MEMBER} is not the file expected (sha256 differs)")
    dest.parent.mkdir(parents=True, exist_ok=True)
    partial = dest.with_name(f"{dest.name}.{os.getpid()}.partial")  # a reader never sees half a file
    partial.write_bytes(data)
    partial.replace(dest)
    return dest


def qwen_vocab_tokenizer(ranks_file: Path) -> Any:
    """Qwen's own tokenizer, rebuilt from its vocabulary file: one `base64(token bytes) rank` line per token, as
    Qwen ships it (qwen.tiktoken; Qwen2 and 2.5, so mxbai-rerank-v2, kept the same 151,643 tokens). The special
    tokens follow at 151643 on, as in Qwen2's tokenizer.

    A rank file holds no merges: a token of rank r is the merge of two shorter tokens of lower rank. Every such
    split is listed as a merge at r, so the BPE, which applies the lowest-ranked merge first, cuts a text as
    Qwen's rank-greedy BPE does; whole words found in the vocabulary are taken as they are (`ignore_merges`).
    """
    import base64

    from tokenizers import Tokenizer, models

    ranks: dict[bytes, int] = {}
    for line in Path(ranks_file).read_text(encoding="ascii").splitlines():
        if line:
            token, rank = line.split()
            ranks[base64.b64decode(token)] = int(rank)
    to_unicode = _bytes_to_unicode()

    def spelled(token: bytes) -> str:
        return "".join(to_unicode[b] for b in token)

    merges = []
    for token, rank in ranks.items():
        splits = [(token[:i], token[i:]) for i in range(1, len(token)) if token[:i] in ranks and token[i:] in ranks]
        merges += [(rank, ranks[left], ranks[right], spelled(left), spelled(right)) for left, right in splits]
    merges.sort()
    vocab = {spelled(token): rank for token, rank in ranks.items()}
    tokenizer = Tokenizer(models.BPE(vocab, [(left, right) for *_, left, right in merges], fuse_unk=False,
                                     ignore_merges=True))
    _qwen_pipeline(tokenizer)
    tokenizer.add_special_tokens(list(SPECIAL_TOKENS))
    return tokenizer


def _bytes_to_unicode() -> dict[int, str]:
    """Byte-level BPE's printable stand-in for each byte (GPT-2's table, which Qwen's vocab.json spells tokens in).
    transformers has one too; this module keeps off transformers, whose version differs between the two venvs."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    table, extra = {}, 0
    for byte in range(256):
        if byte in printable:
            table[byte] = chr(byte)
        else:
            table[byte] = chr(256 + extra)
            extra += 1
    return table


def save_tokenizer(dir: Path, model_max_length: int = 32768, vocab: Path | None = None) -> None:
    """tokenizer.json + a Qwen2-style tokenizer_config.json (pad = <|endoftext|>, no BOS). The tests' small trained
    BPE, or with `vocab` (a Qwen vocabulary file), Qwen's own tokenizer."""
    tokenizer = train_tokenizer() if vocab is None else qwen_vocab_tokenizer(vocab)
    tokenizer.save(str(dir / "tokenizer.json"))
    added = {
        str(tokenizer.token_to_id(token)): {
            "content": token, "lstrip": False, "normalized": False, "rstrip": False, "single_word": False,
            "special": True,
        }
        for token in SPECIAL_TOKENS
    }
    config = {
        "tokenizer_class": "Qwen2Tokenizer",
        "added_tokens_decoder": added,
        "additional_special_tokens": ["<|im_start|>", "<|im_end|>"],
        "bos_token": None,
        "eos_token": "<|im_end|>",
        "pad_token": "<|endoftext|>",
        "unk_token": None,
        "errors": "replace",
        "clean_up_tokenization_spaces": False,
        "split_special_tokens": False,
        "model_max_length": model_max_length,
    }
    (dir / "tokenizer_config.json").write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")


def qwen2_config(shape: dict[str, Any]) -> dict[str, Any]:
    """A hub-style (transformers 4) Qwen2ForCausalLM config.json with Qwen2.5's defaults and the given shapes."""
    return {
        "architectures": ["Qwen2ForCausalLM"],
        "model_type": "qwen2",
        "hidden_act": "silu",
        "max_position_embeddings": 32768,
        "max_window_layers": shape["num_hidden_layers"],
        "rms_norm_eps": 1e-6,
        "rope_theta": 1000000.0,
        "sliding_window": 32768,
        "use_sliding_window": False,
        "tie_word_embeddings": True,
        "attention_dropout": 0.0,
        "initializer_range": 0.02,
        "use_cache": True,
        "torch_dtype": "float32",
        "bos_token_id": 0,
        "eos_token_id": 2,
        **shape,
    }


def parameter_shapes(config: dict[str, Any]) -> dict[str, tuple[int, ...]]:
    """Every tensor of a tied-embedding Qwen2ForCausalLM checkpoint, by its checkpoint name."""
    hidden, inter = config["hidden_size"], config["intermediate_size"]
    kv = config["num_key_value_heads"] * hidden // config["num_attention_heads"]
    shapes: dict[str, tuple[int, ...]] = {
        "model.embed_tokens.weight": (config["vocab_size"], hidden),
        "model.norm.weight": (hidden,),
    }
    for i in range(config["num_hidden_layers"]):
        p = f"model.layers.{i}."
        shapes |= {
            p + "input_layernorm.weight": (hidden,),
            p + "post_attention_layernorm.weight": (hidden,),
            p + "self_attn.q_proj.weight": (hidden, hidden),
            p + "self_attn.q_proj.bias": (hidden,),
            p + "self_attn.k_proj.weight": (kv, hidden),
            p + "self_attn.k_proj.bias": (kv,),
            p + "self_attn.v_proj.weight": (kv, hidden),
            p + "self_attn.v_proj.bias": (kv,),
            p + "self_attn.o_proj.weight": (hidden, hidden),
            p + "mlp.gate_proj.weight": (inter, hidden),
            p + "mlp.up_proj.weight": (inter, hidden),
            p + "mlp.down_proj.weight": (hidden, inter),
        }
    return shapes


def random_weights(config: dict[str, Any], *, std: float, seed: int) -> dict[str, torch.Tensor]:
    """Normal(0, std) matrices and biases, norm gains near 1; drawn in sorted-name order from one generator."""
    generator = torch.Generator().manual_seed(seed)
    tensors: dict[str, torch.Tensor] = {}
    for name, shape in sorted(parameter_shapes(config).items()):
        noise = torch.randn(shape, generator=generator, dtype=torch.float32)
        tensors[name] = 1.0 + 0.1 * noise if name.endswith("norm.weight") else std * noise
    return tensors


def weights_sha256(tensors: dict[str, torch.Tensor]) -> str:
    """Fingerprint of names, shapes, dtypes and bytes, in sorted-name order."""
    digest = hashlib.sha256()
    for name in sorted(tensors):
        tensor = tensors[name].detach().to("cpu").contiguous()
        digest.update(f"{name}:{tuple(tensor.shape)}:{tensor.dtype}\n".encode())
        digest.update(tensor.view(torch.uint8).numpy().tobytes() if tensor.numel() else b"")
    return digest.hexdigest()


def tokenizer_sha256(dir: Path) -> str:
    """Fingerprint of the trained vocabulary and merges (what decides the token ids)."""
    model = json.loads((Path(dir) / "tokenizer.json").read_text(encoding="utf-8"))["model"]
    payload = json.dumps({"vocab": model["vocab"], "merges": model["merges"]}, sort_keys=True)
    return hashlib.sha256(payload.encode()).hexdigest()


def make_qwen2_reranker(dir: Path, shape: dict[str, Any], *, std: float, seed: int = 0,
                        vocab: Path | None = None) -> str:
    """Write a random Qwen2ForCausalLM folder to `dir` (the tokenizer: see `save_tokenizer`); returns the weights'
    sha256."""
    from safetensors.torch import save_file

    dir = Path(dir)
    dir.mkdir(parents=True, exist_ok=True)
    config = qwen2_config(shape)
    save_tokenizer(dir, vocab=vocab)
    (dir / "config.json").write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
    tensors = random_weights(config, std=std, seed=seed)
    save_file(tensors, str(dir / "model.safetensors"), metadata={"format": "pt"})
    return weights_sha256(tensors)


def make_tiny_qwen2(dir: Path, seed: int = 0) -> str:
    """2 layers, hidden 64, vocab 640: milliseconds per pair on CPU."""
    return make_qwen2_reranker(dir, TINY_CONFIG, std=TINY_STD, seed=seed)


def make_tiny_qwen2_qwen_vocab(dir: Path, seed: int = 0) -> str:
    """The tiny Qwen2 with Qwen's own tokenizer, and so the real model's 151,936 embedding rows."""
    return make_qwen2_reranker(dir, TINY_QWEN_VOCAB_CONFIG, std=TINY_STD, seed=seed, vocab=fetch_qwen_vocab())


def make_base_v2_qwen2(dir: Path, seed: int = 0, vocab: Path | None = None) -> str:
    """mxbai-rerank-base-v2's exact shapes (about 494M parameters, 2 GB in float32)."""
    return make_qwen2_reranker(dir, BASE_V2_CONFIG, std=BASE_V2_STD, seed=seed, vocab=vocab)


def loaded_weights_sha256(model: torch.nn.Module) -> str:
    """The same fingerprint over a loaded model (tied lm_head left out, as in the checkpoint).

    Equal to `make_*`'s return value only when every checkpoint tensor was loaded unchanged and nothing was
    left randomly initialised.
    """
    state = {name: t for name, t in model.state_dict().items() if name != "lm_head.weight"}
    return weights_sha256(state)
