"""The GPU benchmark scripts run where no GPU is (a tiny Qwen2 on CPU), so a lent GPU machine's few minutes are never
spent finding out that one of them broke."""
from __future__ import annotations

import base64
import json
import re
import string
from itertools import product
from pathlib import Path

import pytest
import torch

from benchmarks import gpu_bench, gpu_profile
from rerank_proxy_tools.qwen import qwen_vocab_tokenizer


def table_rows(text: str, first_cell: str) -> list[list[str]]:
    return [[cell.strip() for cell in line.strip("|").split("|")] for line in text.splitlines()
            if line.startswith(f"| {first_cell} ")]


def test_gpu_bench_runs_the_sweep_and_the_engine_on_cpu(capsys: pytest.CaptureFixture[str]) -> None:
    gpu_bench.main(["--tiny", "--queries", "1", "--docs", "6", "--doc-tokens", "20", "--batch-sizes", "2,6",
                    "--concurrency", "2", "--engine-budgets", "256,1024", "--vocab", "test", "--share-prefix", "both"])
    out = capsys.readouterr().out
    rows = table_rows(out, "tiny")
    sweep = [row for row in rows if not row[1].startswith(("direct", "engine"))]
    assert [row[1:4] for row in sweep] == [["2", "no", "yes"], ["2", "no", "no"], ["6", "no", "yes"], ["6", "no", "no"]]
    engine = [row for row in rows if row[1].startswith(("direct", "engine"))]
    assert [row[1] for row in engine] == ["direct x2, 2,048 tok", "engine c2, 256 tok", "engine c2, 1,024 tok"]
    for row in [r[4:] for r in sweep] + [r[2:] for r in engine]:
        assert all(re.fullmatch(r"[\d.,%]+|n/a|-", cell) for cell in row), row


def test_gpu_bench_runs_as_the_product_would_on_the_device_by_default(capsys: pytest.CaptureFixture[str]) -> None:
    # On a CPU the product shares the prefix and does not compile (rerank/mxbai.py, LocalSpec.compiles).
    gpu_bench.main(["--tiny", "--queries", "1", "--docs", "4", "--doc-tokens", "20", "--batch-sizes", "4",
                    "--concurrency", "0", "--vocab", "test"])
    assert [row[1:4] for row in table_rows(capsys.readouterr().out, "tiny")] == [["4", "no", "yes"]]


def test_gpu_profile_times_every_variant_on_cpu(capsys: pytest.CaptureFixture[str]) -> None:
    gpu_profile.main(["--tiny", "--call-tokens", "512", "--doc-tokens", "20", "--repeats", "1", "--vocab", "test"])
    out = capsys.readouterr().out
    for variant in ("score_encoded (product path, uncompiled)", "score_encoded, prefix not shared",
                    "forward, padded + mask", "forward, full width, no mask",
                    "forward, rows cut to the shortest, no mask"):
        assert any(line.startswith(f"| {variant} |") for line in out.splitlines()), variant
    assert "device time per forward" in out and "| GEMM |" in out


def write_vocab(path: Path, tokens: list[bytes]) -> Path:
    """A vocabulary file as Qwen ships one: every byte, then `tokens`, one `base64 rank` line each in rank order."""
    ranked = [bytes([b]) for b in range(256)] + tokens
    path.write_text("".join(f"{base64.b64encode(t).decode()} {rank}\n" for rank, t in enumerate(ranked)))
    return path


def test_qwen_vocab_tokenizer_merges_the_lowest_rank_first(tmp_path: Path) -> None:
    tokenizer = qwen_vocab_tokenizer(write_vocab(tmp_path / "vocab", [b"ab", b"bc", b"abc"]))
    assert tokenizer.encode("abc").ids == [258]  # a whole word in the vocabulary is one token
    assert tokenizer.encode("abcx").ids == [258, ord("x")]  # a+b (256) first, then ab+c
    assert tokenizer.encode("bcab").ids == [257, 256]  # a+b before b+c, wherever they stand
    assert [tokenizer.token_to_id(t) for t in ("<|endoftext|>", "<|im_start|>", "<|im_end|>")] == [259, 260, 261]
    assert tokenizer.encode("<|im_start|>ab").ids == [260, 256]


def test_gpu_bench_sizes_the_embedding_for_a_bigger_vocabulary(tmp_path: Path) -> None:
    pairs = [bytes(p, "ascii") for p in map("".join, product(string.ascii_lowercase, repeat=2))]
    vocab = write_vocab(tmp_path / "qwen.tiktoken", pairs)  # 932 tokens + 3 special: more than tiny's 640 rows
    gpu_bench.write_random_qwen2(tmp_path / "model", gpu_bench.TINY_CONFIG, torch.float32, torch.device("cpu"), vocab)
    config = json.loads((tmp_path / "model" / "config.json").read_text())
    assert config["vocab_size"] == 935 and config["hidden_size"] == gpu_bench.TINY_CONFIG["hidden_size"]


def test_gpu_bench_runs_with_a_qwen_vocabulary_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    vocab = write_vocab(tmp_path / "qwen.tiktoken", [b"th", b"the", b" the"])
    gpu_bench.main(["--tiny", "--queries", "1", "--docs", "4", "--doc-tokens", "20", "--batch-sizes", "4",
                    "--concurrency", "0", "--vocab", str(vocab)])
    out = capsys.readouterr().out
    assert "Qwen's tokenizer (qwen.tiktoken)" in out
    assert [row[1] for row in table_rows(out, "tiny")] == ["4"]


def test_gpu_bench_refuses_a_missing_vocabulary_file(tmp_path: Path) -> None:
    with pytest.raises(SystemExit, match="no such file"):
        gpu_bench.main(["--tiny", "--vocab", str(tmp_path / "absent.tiktoken")])
