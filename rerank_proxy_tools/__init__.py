"""Developer tools around rerank-proxy, installed by the `tools` extra (`pip install 'rerank-proxy[tools]'`).

`rerank-proxy eval` (evaluate, beir) and `rerank-proxy demo` (demo, localcluster) live here, and what the
benchmarks, scripts and tests share: local Elasticsearch/OpenSearch clusters (localcluster), loading documents
into them (indexing), the nginx and HAProxy reference relays (anchors) and the tiny models built in code (models,
qwen). The runtime packages, `proxy` and `rerank`, never import this one.

This module imports nothing: `qwen` runs in the mxbai reference venv (transformers 4.x, torch, no project install).
"""
