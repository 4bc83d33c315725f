"""Models and scoring for rerank-proxy, and a reranking library of its own: `from rerank import load`
(rerank/library.py). The library's names are imported on first use, so `import rerank` (the proxy's config
validation, a remote-only setup) pulls in neither torch nor transformers."""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from rerank.library import RankedResult, Reranker, load

__all__ = ["RankedResult", "Reranker", "load"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        from rerank import library

        return getattr(library, name)
    raise AttributeError(f"module 'rerank' has no attribute {name!r}")
