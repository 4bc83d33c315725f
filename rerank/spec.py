"""Typed model configuration: what to load and how to run it."""
from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field


class ModelSpec(BaseModel):
    """One model entry of the `models:` section.

    `source` is a Hugging Face hub id (`BAAI/bge-reranker-base`), a local folder, or `package:NAME` for a model
    folder shipped inside an installed Python package (found with importlib, works offline).
    """

    model_config = ConfigDict(extra="forbid")

    backend: Literal["bi-encoder", "cross-encoder"]
    source: str = Field(min_length=1)
    device: str = Field("cpu", description="cpu, cuda, cuda:N, mps or auto")
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"
    max_length: int = Field(512, gt=8, le=32768, description="tokens per (query, document) input")
    batch_size: int = Field(32, gt=0, le=4096)
    threads: int | None = Field(None, gt=0, description="torch CPU threads; default: torch's own choice")
