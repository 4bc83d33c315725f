"""The GPU benchmark scripts run where no GPU is (a tiny Qwen2 on CPU), so a lent GPU machine's few minutes are never
spent finding out that one of them broke."""
from __future__ import annotations

import re

import pytest

from benchmarks import gpu_bench, gpu_profile


def table_rows(text: str, first_cell: str) -> list[list[str]]:
    return [[cell.strip() for cell in line.strip("|").split("|")] for line in text.splitlines()
            if line.startswith(f"| {first_cell} ")]


def test_gpu_bench_runs_the_sweep_and_the_engine_on_cpu(capsys: pytest.CaptureFixture[str]) -> None:
    gpu_bench.main(["--tiny", "--queries", "1", "--docs", "6", "--doc-tokens", "20", "--batch-sizes", "2,6",
                    "--concurrency", "2", "--engine-budgets", "256,1024"])
    out = capsys.readouterr().out
    sweep = table_rows(out, "tiny")
    assert [row[1] for row in sweep if not row[1].startswith(("direct", "engine"))] == ["2", "6"]
    modes = [row[1] for row in sweep if row[1].startswith(("direct", "engine"))]
    assert modes == ["direct x2, 2,048 tok", "engine c2, 256 tok", "engine c2, 1,024 tok"]
    for row in sweep:
        assert all(re.fullmatch(r"[\d.,%]+|n/a|-", cell) for cell in row[2:]), row


def test_gpu_profile_times_every_variant_on_cpu(capsys: pytest.CaptureFixture[str]) -> None:
    gpu_profile.main(["--tiny", "--call-tokens", "512", "--doc-tokens", "20", "--repeats", "1"])
    out = capsys.readouterr().out
    for variant in ("score_encoded (product path)", "forward, padded + mask", "forward, full width, no mask",
                    "forward, rows cut to the shortest, no mask"):
        assert any(line.startswith(f"| {variant} |") for line in out.splitlines()), variant
    assert "device time per forward" in out and "| GEMM |" in out
