"""Reference relays for the benchmarks: nginx and HAProxy (the Debian packages) and rerank-proxy itself.

Each is started in the foreground on a free loopback port in front of one upstream, with its own config and logs in
a scratch folder, and stopped by its process id. nginx and HAProxy run as a single worker with upstream keep-alive
and no access log: what a well-configured general-purpose proxy costs per request on this machine, the yardstick
the relay is judged by (issue 16: at most 2x nginx's CPU per request). Also here: which process listens on a port,
and the CPU time of a process with all its descendants (nginx's worker is a child of its master).
"""
from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
UPSTREAM_KEEPALIVE = 64  # idle keep-alive connections nginx keeps to the cluster
NGINX_TEMP_DIRS = ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")  # Debian's defaults live in /var/lib/nginx


# ---- binaries -----------------------------------------------------------------------------------------------------


def find_binary(name: str) -> str | None:
    """`name` on PATH, else Debian's /usr/sbin (not on a non-root user's PATH everywhere)."""
    found = shutil.which(name)
    if found:
        return found
    sbin = Path("/usr/sbin") / name
    return str(sbin) if os.access(sbin, os.X_OK) else None


def binary_version(binary: str) -> str:
    """`nginx/1.22.1` or `HAProxy 2.6.12-1+deb12u4`: nginx prints its version on stderr, HAProxy on stdout."""
    done = subprocess.run([binary, "-v"], capture_output=True, text=True, timeout=10)
    text = (done.stdout + done.stderr).strip()
    found = re.search(r"nginx/\S+|HAProxy version \S+", text)
    return found.group(0).replace(" version", "") if found else text.splitlines()[0] if text else "unknown"


# ---- configs ------------------------------------------------------------------------------------------------------


def upstream_address(url: str) -> str:
    """`host:port` of a plain-http upstream URL (the reference relays do not speak TLS to the cluster here)."""
    parts = urlsplit(url)
    if parts.scheme != "http" or not parts.hostname:
        raise ValueError(f"expected an http://HOST:PORT upstream, got {url!r}")
    return f"{parts.hostname}:{parts.port or 80}"


def nginx_config(port: int, upstream: str, workdir: Path) -> str:
    """One worker, keep-alive both ways, the raw request URI passed as received, small responses buffered."""
    temp_paths = "\n".join(
        f"    {kind}_temp_path {workdir / ('nginx-' + kind)};" for kind in NGINX_TEMP_DIRS if kind != "client_body"
    )
    return f"""\
daemon off;
master_process on;
worker_processes 1;
pid {workdir / 'nginx.pid'};
error_log {workdir / 'nginx-error.log'} warn;

events {{
    worker_connections 4096;
}}

http {{
    access_log off;
    client_body_temp_path {workdir / 'nginx-client_body'};
{temp_paths}
    client_max_body_size 0;            # _bulk bodies of any size, as the cluster decides
    client_body_buffer_size 1m;
    keepalive_requests 1000000;        # the load generator's connections are never recycled mid-run
    keepalive_timeout 75s;

    upstream cluster {{
        server {upstream};
        keepalive {UPSTREAM_KEEPALIVE};
        keepalive_requests 1000000;
        keepalive_timeout 60s;
    }}

    server {{
        listen 127.0.0.1:{port};
        location / {{
            proxy_pass http://cluster;   # no URI part: the request URI goes upstream unchanged
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header Host $http_host;
            proxy_buffering on;           # nginx's default; responses here fit its buffers
            proxy_max_temp_file_size 0;   # never spill a large response to disk: stream it instead
            proxy_read_timeout 120s;
        }}
    }}
}}
"""


def haproxy_config(port: int, upstream: str) -> str:
    """One thread, HTTP mode, idle server connections shared across clients (`http-reuse always`), no logging."""
    return f"""\
global
    nbthread 1
    maxconn 4096

defaults
    mode http
    option http-keep-alive
    http-reuse always
    timeout connect 5s
    timeout client 120s
    timeout server 120s
    timeout http-keep-alive 75s

frontend relay
    bind 127.0.0.1:{port}
    default_backend cluster

backend cluster
    server cluster1 {upstream}
"""


def nginx_args(binary: str, conf: Path, workdir: Path) -> list[str]:
    # -p/-e: nginx opens its prefix and error log before reading the config; keep both out of /var.
    return [binary, "-p", str(workdir), "-e", str(workdir / "nginx-error.log"), "-c", str(conf)]


def write_nginx_config(port: int, upstream: str, workdir: Path) -> Path:
    conf = workdir / "nginx.conf"
    conf.write_text(nginx_config(port, upstream, workdir))
    return conf


def write_haproxy_config(port: int, upstream: str, workdir: Path) -> Path:
    conf = workdir / "haproxy.cfg"
    conf.write_text(haproxy_config(port, upstream))
    return conf


def check_nginx(binary: str, conf: Path, workdir: Path) -> subprocess.CompletedProcess[str]:
    """`nginx -t`: parses the config and opens its files, binds nothing."""
    return subprocess.run([*nginx_args(binary, conf, workdir), "-t"], capture_output=True, text=True, timeout=30)


def check_haproxy(binary: str, conf: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([binary, "-c", "-f", str(conf)], capture_output=True, text=True, timeout=30)


# ---- processes ----------------------------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class Launched:
    """A relay this script started: its process (the root of its process tree) and where it listens."""

    name: str
    process: subprocess.Popen[bytes]
    port: int
    log: Path

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def url(self) -> str:
        return f"http://{self.address}"

    def stop(self, grace_s: float = 10.0) -> None:
        """SIGTERM (nginx: fast shutdown, HAProxy and rerank-proxy: exit), then SIGKILL after `grace_s`."""
        if self.process.poll() is not None:
            return
        self.process.terminate()
        try:
            self.process.wait(grace_s)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(grace_s)


def _spawn(name: str, args: list[str], port: int, log: Path, env: dict[str, str] | None = None) -> Launched:
    with open(log, "ab") as out:
        process = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, env=env)
    return Launched(name, process, port, log)


def wait_ready(launched: Launched, timeout_s: float) -> None:
    """Until the relay answers HTTP at all (any status: `GET /` is a 405 on some clusters)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if launched.process.poll() is not None:
            tail = launched.log.read_text(errors="replace")[-2000:]
            raise RuntimeError(f"{launched.name} exited with {launched.process.returncode}:\n{tail}")
        try:
            urllib.request.urlopen(launched.url + "/", timeout=5).close()
            return
        except urllib.error.HTTPError:
            return
        except OSError:
            time.sleep(0.2)
    launched.stop()
    raise RuntimeError(f"{launched.name} did not answer on {launched.address} within {timeout_s:.0f} s")


def start_nginx(binary: str, upstream_url: str, workdir: Path) -> Launched:
    port = free_port()
    conf = write_nginx_config(port, upstream_address(upstream_url), workdir)
    launched = _spawn("nginx", nginx_args(binary, conf, workdir), port, workdir / "nginx.out")
    wait_ready(launched, 30)
    return launched


def start_haproxy(binary: str, upstream_url: str, workdir: Path) -> Launched:
    port = free_port()
    conf = write_haproxy_config(port, upstream_address(upstream_url), workdir)
    launched = _spawn("haproxy", [binary, "-db", "-f", str(conf)], port, workdir / "haproxy.out")
    wait_ready(launched, 30)
    return launched


def rerank_proxy_binary() -> str:
    """The console script beside this interpreter (the project's venv), else the one on PATH."""
    beside = Path(sys.executable).parent / "rerank-proxy"
    return str(beside) if beside.is_file() else shutil.which("rerank-proxy") or sys.exit("rerank-proxy not found")


def start_rerank_proxy(config: Path, upstream_url: str, workdir: Path, timeout_s: float = 300) -> Launched:
    """`rerank-proxy serve` with `config`, on a free port (its admin endpoints on another); waits until its
    readiness endpoint says every model has loaded."""
    port, admin = free_port(), free_port()
    args = [rerank_proxy_binary(), "serve", "--config", str(config), "--listen", f"127.0.0.1:{port}",
            "--upstream", upstream_url, "--admin-listen", f"127.0.0.1:{admin}"]
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    launched = _spawn("rerank-proxy", args, port, workdir / "rerank-proxy.out", env)
    deadline = time.monotonic() + timeout_s
    while True:
        if launched.process.poll() is not None:
            tail = launched.log.read_text(errors="replace")[-2000:]
            raise RuntimeError(f"rerank-proxy exited with {launched.process.returncode}:\n{tail}")
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{admin}/_rerank_proxy/ready", timeout=5).close()
            return launched
        except OSError:  # not listening yet, or 503 while the models load
            if time.monotonic() > deadline:
                launched.stop()
                raise RuntimeError(f"rerank-proxy was not ready within {timeout_s:.0f} s") from None
            time.sleep(0.2)


# ---- CPU accounting -----------------------------------------------------------------------------------------------


def listening_pid(port: int) -> int | None:
    """The process that listens on TCP `port`, or None when there is none or it belongs to another user."""
    out = subprocess.run(["ss", "-ltnpH", f"sport = :{port}"], capture_output=True, text=True, check=True).stdout
    found = re.search(r"pid=(\d+)", out)
    return int(found.group(1)) if found else None


def _stat_fields(pid: int) -> list[str]:
    # The command name (field 2) may hold spaces and parentheses: split after its last ")".
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()


def _children(pid: int) -> list[int]:
    """Direct children from every thread's `children` list (Linux 3.5+ with CONFIG_PROC_CHILDREN)."""
    kids: list[int] = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            kids += [int(k) for k in (task / "children").read_text().split()]
        except OSError:
            continue
    return kids


def tree_cpu_seconds(pid: int) -> float:
    """User + system CPU of `pid` and all its live descendants, plus what their exited children left them.

    A worker that exits mid-run moves its time into its parent's cutime/cstime, so it is still counted once."""
    total = 0.0
    pending = [pid]
    while pending:
        current = pending.pop()
        try:
            fields = _stat_fields(current)
            pending += _children(current)
        except OSError:
            continue  # exited between listing and reading
        # fields[11..14]: utime, stime, cutime, cstime (stat fields 14-17)
        total += sum(int(f) for f in fields[11:15]) / CLOCK_TICKS
    return total
