"""CPU per relayed request: several proxies (or proxy builds) in front of the same cluster, compared in one run.

    python benchmarks/passthrough_cpu.py --upstream http://127.0.0.1:9200 --proxy 127.0.0.1:9311 --proxy 127.0.0.1:9312

`proxy_overhead.py` answers "how much slower than direct"; this answers "which build spends less CPU per request",
which is what a change to the pass-through path should be judged by on a noisy shared machine. The load comes from
`hey` (a Go load generator, `go install github.com/rakyll/hey@latest`), so the client costs almost nothing. Each arm
is measured by the CPU time (user + system, from /proc) its listening process spent during its run, divided by the
requests served (for the direct arm that is the cluster's own CPU, shown for scale). Rounds alternate the arms'
order; the table shows medians over rounds. Linux, loopback only.

Cases: `get` is `GET /{index}/_doc/{id}` (pure pass-through); `skip` is a 10-hit `match` search with
`X-Rerank: off` (the search path up to its decision, then relayed). The index is created with 60 documents if absent.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import urllib.error
import urllib.request
from pathlib import Path

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
QUERY = {"query": {"match": {"text": "protein cells"}}, "size": 10}


def listening_pid(port: int) -> int:
    out = subprocess.run(["ss", "-ltnpH", f"sport = :{port}"], capture_output=True, text=True, check=True).stdout
    found = re.search(r"pid=(\d+)", out)
    if not found:
        sys.exit(f"no process listens on port {port} (or it belongs to another user)")
    return int(found.group(1))


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS  # utime + stime


def ensure_index(upstream: str, index: str) -> None:
    try:
        urllib.request.urlopen(f"{upstream}/{index}/_doc/1", timeout=10)
        return
    except urllib.error.HTTPError as err:
        if err.code != 404:
            raise
    lines = []
    for i in range(1, 61):
        lines.append(json.dumps({"index": {"_id": str(i)}}))
        lines.append(json.dumps({"title": f"protein cells {i}", "text": f"proteins fold in cells and tissues, {i}"}))
    request = urllib.request.Request(f"{upstream}/{index}/_bulk?refresh=true", data=("\n".join(lines) + "\n").encode(),
                                     headers={"Content-Type": "application/x-ndjson"}, method="POST")
    urllib.request.urlopen(request, timeout=60)


def hey(hey_bin: str, args: list[str]) -> tuple[float, float, int]:
    """(requests/s, p50 ms, 200 responses) of one hey run."""
    out = subprocess.run([hey_bin, *args], capture_output=True, text=True, check=True).stdout
    ok = re.search(r"\[200\]\s+(\d+) responses", out)
    rps = re.search(r"Requests/sec:\s+([\d.]+)", out)
    p50 = re.search(r"50%+ in ([\d.]+) secs", out)
    if not (ok and rps and p50):
        sys.exit(f"unexpected hey output:\n{out}")
    return float(rps.group(1)), float(p50.group(1)) * 1000, int(ok.group(1))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--upstream", required=True, help="the cluster (measured too, as the direct arm)")
    parser.add_argument("--proxy", action="append", required=True, help="HOST:PORT of a proxy (repeatable)")
    parser.add_argument("--index", default="bench-passthrough")
    parser.add_argument("--requests", type=int, default=2000, help="requests per arm and round")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--concurrency", default="1,16")
    parser.add_argument("--hey", default=shutil.which("hey") or str(Path.home() / "go" / "bin" / "hey"))
    args = parser.parse_args()
    if not Path(args.hey).is_file():
        sys.exit("hey not found: go install github.com/rakyll/hey@latest (or pass --hey PATH)")

    upstream = args.upstream.rstrip("/")
    ensure_index(upstream, args.index)
    arms = [upstream.removeprefix("http://"), *args.proxy]
    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as body:
        json.dump(QUERY, body)
    cases = {
        "get": ["/{index}/_doc/1"],
        "skip": ["/{index}/_search", "-m", "POST", "-T", "application/json", "-H", "X-Rerank: off", "-D", body.name],
    }
    samples: dict[tuple[str, int, str], list[tuple[float, float, float]]] = {}
    for round_no in range(args.rounds):
        order = arms if round_no % 2 == 0 else arms[::-1]
        for case, (path, *options) in cases.items():
            for concurrency in (int(c) for c in args.concurrency.split(",")):
                for arm in order:
                    pid = listening_pid(int(arm.rsplit(":", 1)[1]))
                    before = cpu_seconds(pid)
                    url = f"http://{arm}{path.format(index=args.index)}"
                    rps, p50, served = hey(args.hey, ["-n", str(args.requests), "-c", str(concurrency), *options, url])
                    used = cpu_seconds(pid) - before
                    samples.setdefault((case, concurrency, arm), []).append((used / max(served, 1) * 1e6, rps, p50))
        print(f"round {round_no + 1}/{args.rounds} done", file=sys.stderr)
    os.unlink(body.name)

    print(f"{args.requests} requests per arm and round, {args.rounds} rounds, medians; "
          f"load average {os.getloadavg()[0]:.1f} at the end\n")
    print("| case | conc | arm | CPU µs/request | req/s | p50 ms |")
    print("|---|---|---|---:|---:|---:|")
    for (case, concurrency, arm), values in samples.items():
        cpu, rps, p50 = (statistics.median(v[i] for v in values) for i in range(3))
        label = f"{arm} (direct)" if arm == arms[0] else arm
        print(f"| {case} | {concurrency} | {label} | {cpu:.0f} | {rps:.0f} | {p50:.2f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
