"""Long documents: split into overlapping chunks, scored one by one, the document scored by its best chunk.

Chunks are cut by the same cheap piece count as the text budget (`rerank.text.pieces`), on the original characters, so
a chunk is readable text and the winning one can be shown to a person.
"""
from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass

from pydantic import BaseModel, ConfigDict, Field, model_validator

from .text import pieces


class Chunking(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    size: int = Field(128, gt=0, description="pieces (about tokens) per chunk")
    overlap: int = Field(16, ge=0, description="pieces shared by consecutive chunks")
    max_chunks: int = Field(4, gt=0, description="chunks per document; the rest of the text is not scored")

    @model_validator(mode="after")
    def _overlap_below_size(self) -> Chunking:
        if self.overlap >= self.size:
            raise ValueError("chunking.overlap must be smaller than chunking.size")
        return self


def split(text: str, chunking: Chunking) -> list[str]:
    spans = [(m.start(), m.end()) for m in pieces(text)]
    if len(spans) <= chunking.size:
        return [text]
    step = chunking.size - chunking.overlap
    chunks = []
    for first in range(0, len(spans), step):
        last = min(first + chunking.size, len(spans)) - 1
        chunks.append(text[spans[first][0] : spans[last][1]])
        if len(chunks) == chunking.max_chunks or last == len(spans) - 1:
            break
    return chunks


@dataclass(frozen=True)
class ChunkedTexts:
    texts: list[str]  # every chunk of every document, in document order
    owners: list[int]  # the document each chunk belongs to

    def best(self, n_docs: int, chunk_scores: Sequence[float | None]) -> tuple[list[float | None], list[int | None]]:
        """Per document: the best chunk's score (None when no chunk was scored) and that chunk's number."""
        scores: list[float | None] = [None] * n_docs
        winners: list[int | None] = [None] * n_docs
        seen = [0] * n_docs
        for owner, score in zip(self.owners, chunk_scores):
            number, seen[owner] = seen[owner], seen[owner] + 1
            if score is not None and (scores[owner] is None or score > scores[owner]):  # type: ignore[operator]
                scores[owner], winners[owner] = score, number
        return scores, winners


def chunk_documents(texts: Sequence[str], chunking: Chunking) -> ChunkedTexts:
    chunked, owners = [], []
    for doc, text in enumerate(texts):
        parts = split(text, chunking)
        chunked += parts
        owners += [doc] * len(parts)
    return ChunkedTexts(chunked, owners)


async def score_chunked(
    score: Callable[[Sequence[str]], Awaitable[Sequence[float | None]]], texts: Sequence[str], chunking: Chunking | None
) -> tuple[Sequence[float | None], list[int | None] | None]:
    """`score(texts)`, each text scored by its best chunk when `chunking` is given; then also each winner's number."""
    if chunking is None:
        return await score(texts), None
    chunked = chunk_documents(texts, chunking)
    return chunked.best(len(texts), await score(chunked.texts))
