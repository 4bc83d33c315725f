"""`rerank-proxy serve | demo | eval | replay`: the console script."""
from __future__ import annotations

import argparse
import asyncio
import gc
import importlib
import logging
import os
import signal
import sys
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

from .config import ConfigError, load_config


async def _serve(config_path: Path, listen: str | None, upstreams: list[str] | None, admin_listen: str | None) -> int:
    from .server import start_server

    overrides: dict[str, Any] = {"listen": listen, "upstreams": upstreams, "admin_listen": admin_listen}
    config = load_config(config_path).with_overrides(**overrides)
    # The ports open before the models have loaded: their searches are served in the cluster's order meanwhile.
    serving = await start_server(config, config_path, overrides, wait_for_models=False)
    server = serving.server
    # Models leave millions of long-lived objects behind; frozen, the collector stops re-scanning them while it
    # collects each request's short-lived garbage. They load in the background: frozen again once they have.
    _freeze_heap()
    frozen = asyncio.get_running_loop().create_task(_freeze_after(server.state.engine.first_attempts()))
    server.install_sighup()
    log = logging.getLogger("rerank-proxy")
    admin = "the data port (bearer token)" if serving.admin_url == serving.url else serving.admin_url
    log.info("serving on %s -> %s; admin on %s (models: %s)", serving.url, ", ".join(server.state.upstream.urls),
             admin, server.state.engine.states())
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()

    def on_signal() -> None:
        if stop.is_set():  # a second signal: no more waiting
            log.warning("second signal: exiting now")
            os._exit(1)
        stop.set()

    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, on_signal)
    await stop.wait()
    grace = config.shutdown_grace_s
    serving.stop_accepting()
    log.info("shutting down: no new connections, up to %gs for the requests in flight", grace)
    cut = await serving.drained(grace)
    if cut:
        log.warning("shutdown: %d connection(s) still busy after %gs were closed", cut, grace)
    frozen.cancel()
    await serving.cleanup()
    log.info("stopped")
    return 0


def _freeze_heap() -> None:
    gc.collect()
    gc.freeze()


async def _freeze_after(loaded: Coroutine[Any, Any, None]) -> None:
    await loaded
    _freeze_heap()


def _event_loop_factory() -> Callable[[], asyncio.AbstractEventLoop] | None:
    """uvloop where it is installed (not on Windows): its C event loop and transports cut the CPU the proxy spends
    relaying a request by 13-22% (measured on the aiohttp relay this one replaced)."""
    try:
        import uvloop
    except ImportError:
        return None
    return uvloop.new_event_loop


def _serve_forever(main: Coroutine[Any, Any, int]) -> int:
    with asyncio.Runner(loop_factory=_event_loop_factory()) as runner:
        return runner.run(main)


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


# What `pip install 'rerank-proxy[tools]'` adds: the tools package and the imports of its extra.
_TOOLS_IMPORTS = frozenset({"rerank_proxy_tools", "ir_measures", "tqdm"})


def _tools_module(name: str, command: str) -> Any:
    """`rerank_proxy_tools.<name>`, imported only by the command that needs it, so `serve` runs without the tools.
    None, with a message on stderr, when the tools package or a dependency of its extra is missing."""
    try:
        return importlib.import_module(f"rerank_proxy_tools.{name}")
    except ModuleNotFoundError as err:
        if (err.name or "").split(".")[0] not in _TOOLS_IMPORTS:
            raise
        print(f"rerank-proxy {command} needs the tools extra: pip install 'rerank-proxy[tools]' ({err})",
              file=sys.stderr)
        return None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="rerank-proxy", description=__doc__)
    parser.add_argument("--log-level", default=os.environ.get("RERANK_PROXY_LOG", "INFO"))
    commands = parser.add_subparsers(dest="command", required=True)

    serve = commands.add_parser("serve", help="run the proxy")
    serve.add_argument("--config", type=Path, default=Path("config.yaml"))
    serve.add_argument("--listen", help="HOST:PORT, overrides the file's `listen`")
    serve.add_argument("--upstream", action="append", help="cluster URL, overrides `upstreams` (repeatable)")
    serve.add_argument("--admin-listen", help="HOST:PORT of the admin endpoints, overrides `admin.listen`")

    demo = commands.add_parser("demo", help="local cluster + sample data + proxy, side by side")
    demo.add_argument("--flavor", choices=("elasticsearch", "opensearch"), default="elasticsearch")
    demo.add_argument("--port", type=int, default=9201, help="the proxy's port")
    demo.add_argument("--queries", type=int, default=3, help="queries shown side by side")
    demo.add_argument("--evaluate", type=int, default=40, help="judged queries scored for NDCG@10 (300 = all)")
    demo.add_argument("--no-serve", action="store_true", help="exit after the comparison instead of serving")

    evaluate = commands.add_parser("eval", help="NDCG of BM25 vs reranked, through the proxy, on a BEIR folder")
    evaluate.add_argument("--data", type=Path, required=True, help="BEIR folder: corpus.jsonl, queries.jsonl, qrels/")
    evaluate.add_argument("--upstream", required=True, help="cluster URL (the corpus is indexed straight into it)")
    evaluate.add_argument("--proxy", help="URL of a running proxy; default: one started in this process")
    evaluate.add_argument("--index", help="index name (default eval-<folder>); reused when it holds the corpus")
    evaluate.add_argument("--mapping", type=Path, help="JSON file: a create-index body or a mapping")
    evaluate.add_argument("--analyzer", help="analyzer of the default title/text fields, e.g. english")
    evaluate.add_argument("--window", type=int, help="rerank window (default 100; with --config it replaces the "
                                                     "file's windows outside variants)")
    evaluate.add_argument("--variant", action="append", help="also score this A/B variant (repeatable)")
    evaluate.add_argument("--qrels", type=Path, help="judgments file (default DATA/qrels/test.tsv)")
    evaluate.add_argument("--json", type=Path, help="write {dataset: {run: {ndcg@10, mrr@10, recall@100}}} here")
    evaluate.add_argument("--plot", type=Path, help="PNG of the per-query NDCG@10 change (needs matplotlib)")
    evaluate.add_argument("--keep", action="store_true", help="keep the index this command created")
    evaluate.add_argument("--max-queries", type=int, help="score only the first N judged queries")
    evaluate.add_argument("--config", type=Path, help="config of the in-process proxy (default: the shipped CPU "
                                                      "setup, MiniLM, linear fusion 0.5)")
    evaluate.add_argument("--concurrency", type=int, default=4, help="searches in flight (default 4)")
    evaluate.add_argument("--structured", action="store_true",
                          help="each document's text is a JSON object: index its fields beside the title, and "
                               "rerank on the whole source flattened (unless --config says otherwise)")

    replay = commands.add_parser("replay", help="score captured searches with a candidate config, against what "
                                 "was served")
    replay.add_argument("capture", type=Path, nargs="+", help="capture JSONL file(s), rotated ones included")
    replay.add_argument("--config", type=Path, required=True, help="the candidate configuration")
    replay.add_argument("--variant", help="replay with this variant of the candidate config")
    replay.add_argument("--upstream", help="where documents are fetched (default: the config's first upstream)")
    replay.add_argument("--fetch", action="store_true", help="fetch documents even when the capture holds texts")
    replay.add_argument("--qrels", type=Path, help="judgments (BEIR qrels TSV); needs --queries")
    replay.add_argument("--queries", type=Path, help="BEIR queries.jsonl: maps captured query texts to qrels ids")
    replay.add_argument("--json", type=Path, help="write the summary and every search's numbers here")
    replay.add_argument("--plot", type=Path, help="PNG of the per-search agreement (needs matplotlib)")
    replay.add_argument("--concurrency", type=int, default=4, help="searches replayed at once (default 4)")
    replay.add_argument("--max-searches", type=int, help="replay only the first N captured searches")

    args = parser.parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # type: ignore[no-untyped-call]  # a server log is no place for weight-loading bars
    try:
        if args.command == "serve":
            return _serve_forever(_serve(args.config, args.listen, args.upstream, args.admin_listen))
        if args.command == "eval":
            evaluate = _tools_module("evaluate", "eval")
            if evaluate is None:
                return 2
            signal.signal(signal.SIGTERM, _interrupt)  # unwind, so an index the eval created is deleted
            return int(evaluate.run_eval(evaluate.EvalOptions.from_namespace(args)))
        if args.command == "replay":
            replayer = _tools_module("replay", "replay")
            return 2 if replayer is None else int(replayer.run_replay(args))
        demo = _tools_module("demo", "demo")
        if demo is None:
            return 2
        signal.signal(signal.SIGTERM, _interrupt)  # unwind, so the demo's cluster is stopped, not orphaned
        return _serve_forever(
            demo.run_demo(args.flavor, args.port, args.queries, args.evaluate, serve=not args.no_serve)
        )
    except ConfigError as err:
        print(f"rerank-proxy: bad configuration, not starting:\n{err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
