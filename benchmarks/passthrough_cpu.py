"""CPU per relayed request: rerank-proxy, nginx and HAProxy in front of the same cluster, compared in one run.

    python -m benchmarks.passthrough_cpu --upstream http://127.0.0.1:9200 --serve-proxy config.yaml
    python -m benchmarks.passthrough_cpu --upstream http://127.0.0.1:9200 --proxy 127.0.0.1:9311 --proxy 127.0.0.1:9312

`proxy_overhead.py` answers "how much slower than direct"; this answers "how much CPU per request", which is what a
change to the pass-through path should be judged by on a noisy shared machine. The load comes from `hey` (a Go load
generator, `go install github.com/rakyll/hey@latest`), so the client costs almost nothing. Each arm is measured by
the CPU time (user + system, from /proc) its process and all its descendants spent during its run, divided by the
requests served (for the direct arm that is the cluster's own CPU, shown for scale). Rounds alternate the arms'
order; the table shows medians.

Reference arms (rerank_proxy_tools/anchors.py): nginx and HAProxy from the Debian packages, started by the script when
installed (`--no-nginx`, `--no-haproxy` to leave them out), each a single worker with upstream keep-alive and no
access log. The goal for rerank-proxy (issue 16): at most 2x nginx's CPU per request, at least 0.7x direct
throughput. `--serve-proxy CONFIG` starts `rerank-proxy serve` itself; `--proxy HOST:PORT` measures one already
running (the process listening there). Linux, loopback only.

Cases: `get` is `GET /{index}/_doc/{id}` (pure pass-through); `skip` is a 10-hit `match` search with
`X-Rerank: off` (the search path up to its decision, then relayed). The index is created with 60 documents if absent.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from rerank_proxy_tools import anchors, indexing

QUERY = {"query": {"match": {"text": "protein cells"}}, "size": 10}
CPU_GOAL = 2.0  # rerank-proxy's CPU per request at most this many times nginx's
THROUGHPUT_GOAL = 0.7  # and at least this share of direct throughput


@dataclass(frozen=True)
class Arm:
    label: str
    address: str  # HOST:PORT the load goes to
    pid: int  # root of the process tree whose CPU is charged to this arm
    kind: str  # direct, nginx, haproxy or proxy


@dataclass
class Sample:
    cpu_us: float  # CPU per served request
    rps: float
    p50_ms: float


@dataclass
class Cell:
    """One arm at one case and concurrency, over all rounds."""

    samples: list[Sample] = field(default_factory=list)
    failed: int = 0  # responses other than 200, summed over rounds

    def median(self, name: str) -> float:
        return statistics.median(getattr(s, name) for s in self.samples)


# ---- setup --------------------------------------------------------------------------------------------------------


def ensure_index(upstream: str, index: str) -> None:
    """60 small documents, ids 1-60, unless the index already holds them; the first bulk request creates the index
    (the cluster's dynamic mapping)."""
    docs = [{"_id": str(i), "title": f"protein cells {i}", "text": f"proteins fold in cells and tissues, {i}"}
            for i in range(1, 61)]
    indexing.load_index(upstream, index, docs)


def external_arm(address: str) -> Arm:
    pid = anchors.listening_pid(int(address.rsplit(":", 1)[1]))
    if pid is None:
        sys.exit(f"no process listens on {address} (or it belongs to another user)")
    return Arm(address, address, pid, "proxy")


def launched_arm(launched: anchors.Launched, label: str, kind: str) -> Arm:
    return Arm(label, launched.address, launched.process.pid, kind)


def reference_arms(args: argparse.Namespace, upstream: str, workdir: Path, stack: contextlib.ExitStack) -> list[Arm]:
    """nginx and HAProxy, each when asked for and installed, labelled with their versions."""
    arms: list[Arm] = []
    for kind, wanted, start in (("nginx", args.nginx, anchors.start_nginx),
                                ("haproxy", args.haproxy, anchors.start_haproxy)):
        if not wanted:
            continue
        binary = anchors.find_binary(kind)
        if binary is None:
            print(f"note: {kind} is not installed (Debian package `{kind}`); its arm is left out", file=sys.stderr)
            continue
        launched = start(binary, upstream, workdir)
        stack.callback(launched.stop)
        arms.append(launched_arm(launched, anchors.binary_version(binary), kind))
    return arms


# ---- measuring ----------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class HeyResult:
    rps: float
    p50_ms: float
    ok: int  # HTTP 200 responses
    failed: int  # other statuses and transport errors


def hey(hey_bin: str, args: list[str]) -> HeyResult:
    out = subprocess.run([hey_bin, *args], capture_output=True, text=True, check=True).stdout
    return parse_hey(out)


def parse_hey(out: str) -> HeyResult:
    """hey's report. It sends `-n` rounded down to a multiple of `-c`, so the counts come from the report."""
    rps = re.search(r"Requests/sec:\s+([\d.]+)", out)
    p50 = re.search(r"50%+ in ([\d.]+) secs", out)
    if not (rps and p50):
        sys.exit(f"unexpected hey output:\n{out}")
    statuses = {int(code): int(n) for code, n in re.findall(r"\[(\d{3})\]\s+(\d+) responses", out)}
    errors_part = out.partition("Error distribution:")[2]
    errors = sum(int(n) for n in re.findall(r"^\s+\[(\d+)\]\s", errors_part, re.M))
    ok = statuses.get(200, 0)
    return HeyResult(float(rps.group(1)), float(p50.group(1)) * 1000, ok, sum(statuses.values()) - ok + errors)


def hey_args(arm: Arm, requests: int, concurrency: int, path: str, options: list[str]) -> list[str]:
    return ["-n", str(requests), "-c", str(concurrency), *options, f"http://{arm.address}{path}"]


def measure(hey_bin: str, arm: Arm, requests: int, concurrency: int, path: str,
            options: list[str]) -> tuple[Sample, int]:
    """One hey run against `arm`, charged the CPU its process tree spent meanwhile; also the failed count."""
    before = anchors.tree_cpu_seconds(arm.pid)
    result = hey(hey_bin, hey_args(arm, requests, concurrency, path, options))
    used = anchors.tree_cpu_seconds(arm.pid) - before
    return Sample(used / max(result.ok, 1) * 1e6, result.rps, result.p50_ms), result.failed


def warm_up(args: argparse.Namespace, arms: Sequence[Arm], cases: dict[str, list[str]]) -> None:
    """Unmeasured requests through every arm and case first: JIT, caches and connection pools settle."""
    if args.warmup <= 0:
        return
    for path, *options in cases.values():
        for arm in arms:
            hey(args.hey, hey_args(arm, args.warmup, max(args.concurrency), path.format(index=args.index), options))
    print("warm-up done", file=sys.stderr)


Cells = dict[tuple[str, int, str], Cell]  # (case, concurrency, arm label) -> measurements


def run_rounds(args: argparse.Namespace, arms: Sequence[Arm], cases: dict[str, list[str]]) -> Cells:
    cells: Cells = {}
    warm_up(args, arms, cases)
    for round_no in range(args.rounds):
        order = arms if round_no % 2 == 0 else arms[::-1]
        for case, (path, *options) in cases.items():
            for concurrency in args.concurrency:
                for arm in order:
                    sample, failed = measure(args.hey, arm, args.requests, concurrency,
                                             path.format(index=args.index), options)
                    cell = cells.setdefault((case, concurrency, arm.label), Cell())
                    cell.samples.append(sample)
                    cell.failed += failed
        print(f"round {round_no + 1}/{args.rounds} done", file=sys.stderr)
    return cells


# ---- report -------------------------------------------------------------------------------------------------------


def ratio(num: float, den: float | None) -> str:
    return "-" if den is None or den == 0 or math.isnan(num) else f"{num / den:.2f}x"


def table(arms: Sequence[Arm], cells: Cells, cases: Sequence[str], concurrencies: Sequence[int]) -> list[str]:
    """One row per case, concurrency and arm; CPU relative to nginx's, throughput relative to direct."""
    nginx = next((arm for arm in arms if arm.kind == "nginx"), None)
    lines = ["| case | conc | arm | CPU µs/req | req/s | p50 ms | CPU vs nginx | req/s vs direct |",
             "|---|---:|---|---:|---:|---:|---:|---:|"]
    for case in cases:
        for concurrency in concurrencies:
            direct_rps = cells[(case, concurrency, arms[0].label)].median("rps")
            nginx_cpu = cells[(case, concurrency, nginx.label)].median("cpu_us") if nginx else None
            for arm in arms:
                cell = cells[(case, concurrency, arm.label)]
                cpu, rps, p50 = cell.median("cpu_us"), cell.median("rps"), cell.median("p50_ms")
                label = f"{arm.label} (cluster CPU)" if arm.kind == "direct" else arm.label
                if cell.failed:
                    label += f" ({cell.failed} failed)"
                cpu_vs = "-" if arm.kind == "direct" else ratio(cpu, nginx_cpu)
                lines.append(f"| {case} | {concurrency} | {label} | {cpu:.0f} | {rps:.0f} | {p50:.2f} | "
                             f"{cpu_vs} | {ratio(rps, direct_rps)} |")
    return lines


def loadavg() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


# ---- main ---------------------------------------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--upstream", required=True, help="the cluster (measured too, as the direct arm)")
    parser.add_argument("--proxy", action="append", default=[], help="HOST:PORT of a running proxy (repeatable)")
    parser.add_argument("--serve-proxy", type=Path, metavar="CONFIG",
                        help="start `rerank-proxy serve --config CONFIG` on a free port and measure it")
    parser.add_argument("--nginx", action=argparse.BooleanOptionalAction, default=True,
                        help="start nginx as a reference arm when installed (default: on)")
    parser.add_argument("--haproxy", action=argparse.BooleanOptionalAction, default=True,
                        help="start HAProxy as a reference arm when installed (default: on)")
    parser.add_argument("--index", default="bench-passthrough")
    parser.add_argument("--requests", type=int, default=2000, help="requests per arm and round")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=500, help="unmeasured requests per arm and case first")
    parser.add_argument("--concurrency", default="1,16")
    parser.add_argument("--hey", default=shutil.which("hey") or str(Path.home() / "go" / "bin" / "hey"))
    args = parser.parse_args(argv)
    args.upstream = args.upstream.rstrip("/")
    args.concurrency = [int(c) for c in args.concurrency.split(",") if c.strip()]
    if not Path(args.hey).is_file():
        parser.exit(1, "hey not found: go install github.com/rakyll/hey@latest (or pass --hey PATH)\n")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    ensure_index(args.upstream, args.index)
    direct = args.upstream.removeprefix("http://")
    direct_pid = anchors.listening_pid(int(direct.rsplit(":", 1)[1]))
    if direct_pid is None:
        sys.exit(f"no process of this user listens on {direct}: the direct arm's CPU cannot be measured")
    with tempfile.TemporaryDirectory(prefix="passthrough-cpu-") as scratch, contextlib.ExitStack() as stack:
        workdir = Path(scratch)
        arms = [Arm(f"direct {direct}", direct, direct_pid, "direct")]
        arms += reference_arms(args, args.upstream, workdir, stack)
        if args.serve_proxy:
            launched = anchors.start_rerank_proxy(args.serve_proxy, args.upstream, workdir)
            stack.callback(launched.stop)
            arms.append(launched_arm(launched, f"rerank-proxy ({args.serve_proxy.name})", "proxy"))
        arms += [external_arm(address) for address in args.proxy]
        if len(arms) == 1:
            sys.exit("nothing to compare with the cluster: pass --proxy or --serve-proxy, or install nginx/haproxy")
        body = workdir / "query.json"
        body.write_text(json.dumps(QUERY))
        cases = {
            "get": ["/{index}/_doc/1"],
            "skip": ["/{index}/_search", "-m", "POST", "-T", "application/json", "-H", "X-Rerank: off",
                     "-D", str(body)],
        }
        load_start = loadavg()
        cells = run_rounds(args, arms, cases)
    print(f"passthrough CPU: {args.requests} requests per arm and round, {args.rounds} rounds (arm order alternating), "
          f"medians; hey; {os.cpu_count()} CPUs; load average {load_start} at start, {loadavg()} at end")
    print(f"reference arms: {', '.join(a.label for a in arms if a.kind in ('nginx', 'haproxy')) or 'none'}, "
          f"1 worker each, upstream keep-alive; goal for rerank-proxy: CPU <= {CPU_GOAL:g}x nginx's, "
          f"req/s >= {THROUGHPUT_GOAL:g}x direct\n")
    print("\n".join(table(arms, cells, list(cases), args.concurrency)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
