"""A real single-node Elasticsearch or OpenSearch on loopback, for tests, the demo and CI.

Both projects publish an `integ-test-zip` distribution to Maven Central: the bare server with no bundled JDK
and almost no modules. It is small, starts in seconds and speaks the real wire format, which is what the proxy
must be tested against. What it lacks (both flavors): search templates (lang-mustache), scripts (painless),
language analyzers (analysis-common), mapper-extras field types; and Elasticsearch's `GET /` (the rest-root
module), which answers 405 there. OpenSearch publishes the jars of its `analysis-common` and `lang-mustache`
modules on Maven Central, so both are installed into the OpenSearch home: language analyzers (`english`,
`arabic`, `cjk`, ...) and search templates work there. Elasticsearch publishes no such artifacts, so an
Elasticsearch cluster here has only the standard analyzers and no templates. Distributions are fetched
once with Maven into a cache and unpacked there; every cluster gets its own config, data, log and temp
folders, so several can share one unpacked distribution.

    with LocalCluster("elasticsearch") as cluster:
        url = cluster.url          # http://127.0.0.1:PORT, health yellow or green

CLI: `python -m rerank_proxy_tools.localcluster fetch` (pre-warm the cache) and
`python -m rerank_proxy_tools.localcluster run elasticsearch|opensearch [--port N]` (serve until Ctrl-C).
"""
from __future__ import annotations

import argparse
import atexit
import contextlib
import fcntl
import functools
import hashlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import zipfile
from collections import deque
from collections.abc import Iterator
from pathlib import Path
from types import TracebackType
from typing import IO, Literal, NamedTuple, get_args

Flavor = Literal["elasticsearch", "opensearch"]

DEFAULT_VERSIONS: dict[str, str] = {"elasticsearch": "8.19.7", "opensearch": "2.19.6"}

_GROUP_IDS: dict[str, str] = {
    "elasticsearch": "org.elasticsearch.distribution.integ-test-zip",
    "opensearch": "org.opensearch.distribution.integ-test-zip",
}
_MAVEN_CENTRAL = "https://repo1.maven.org/maven2"


class Module(NamedTuple):
    """An OpenSearch module whose jars are on Maven Central; its descriptor (and security policy) are written here,
    as the distribution's build would write them."""

    name: str  # the folder under modules/
    classname: str
    description: str
    jars: tuple[str, ...]  # group:artifact:version, `{version}` being the distribution's
    policy: str | None = None  # plugin-security.policy: the permissions the module's code asks for


_MODULES: dict[str, tuple[Module, ...]] = {
    "elasticsearch": (),
    "opensearch": (
        Module("analysis-common", "org.opensearch.analysis.common.CommonAnalysisPlugin",
               "Language analyzers, and the tokenizers and filters they are built from.",
               ("org.opensearch.plugin:analysis-common:{version}",)),
        Module("lang-mustache", "org.opensearch.script.mustache.MustachePlugin",
               "Mustache scripts: search templates.",
               ("org.opensearch.plugin:lang-mustache-client:{version}",
                "com.github.spullara.mustache.java:compiler:0.9.14"),
               # The template engine reads objects' members through reflection.
               'grant {\n  permission java.lang.RuntimePermission "accessDeclaredMembers";\n'
               '  permission java.lang.reflect.ReflectPermission "suppressAccessChecks";\n};\n'),
    ),
}
_PREFERRED_JAVA_HOME = Path("/usr/lib/jvm/java-17-openjdk-amd64")
_LOG_TAIL_LINES = 40


def cache_dir() -> Path:
    """Where distributions are downloaded and unpacked: $RERANK_PROXY_CACHE, else ~/.cache/rerank-proxy."""
    env = os.environ.get("RERANK_PROXY_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "rerank-proxy"


def _check_flavor(flavor: str) -> Flavor:
    if flavor not in get_args(Flavor):
        raise ValueError(f"unknown flavor {flavor!r}; expected one of {', '.join(get_args(Flavor))}")
    return flavor  # type: ignore[return-value]


class Artifact(NamedTuple):
    group: str
    name: str
    version: str
    packaging: str  # "zip", "jar"

    @property
    def coordinates(self) -> str:
        """`groupId:artifactId:version:packaging`, as `mvn dependency:copy -Dartifact=` wants it."""
        return f"{self.group}:{self.name}:{self.version}:{self.packaging}"

    @property
    def file_name(self) -> str:
        return f"{self.name}-{self.version}.{self.packaging}"

    @property
    def url(self) -> str:
        return f"{_MAVEN_CENTRAL}/{self.group.replace('.', '/')}/{self.name}/{self.version}/{self.file_name}"


def distribution_artifact(flavor: Flavor, version: str) -> Artifact:
    """The integ-test-zip of `flavor` at `version`."""
    return Artifact(_GROUP_IDS[flavor], flavor, version, "zip")


@contextlib.contextmanager
def _file_lock(path: Path) -> Iterator[None]:
    """Serialise fetches across processes (pytest-xdist workers, CI pre-warm racing a test run)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _download(artifact: Artifact, dest: Path) -> None:
    """`artifact` into `dest` (atomically): with Maven when it is on PATH, else straight from Maven Central."""
    mvn = shutil.which("mvn")
    if mvn:
        _download_with_maven(mvn, artifact, dest)
    else:
        _download_direct(artifact, dest)


def _download_with_maven(mvn: str, artifact: Artifact, dest: Path) -> None:
    # Maven writes straight into its output folder, so give it a private one and move the result atomically.
    with tempfile.TemporaryDirectory(dir=dest.parent, prefix=".mvn-") as tmp:
        cmd = [mvn, "-q", "-B", "dependency:copy", f"-Dartifact={artifact.coordinates}", f"-DoutputDirectory={tmp}"]
        done = subprocess.run(cmd, stdin=subprocess.DEVNULL, capture_output=True, text=True)
        produced = Path(tmp) / artifact.file_name
        if done.returncode != 0 or not produced.is_file():
            output = (done.stdout + done.stderr).strip()[-4000:]
            raise RuntimeError(f"`{' '.join(cmd)}` failed (exit {done.returncode}):\n{output}")
        os.replace(produced, dest)


def _download_direct(artifact: Artifact, dest: Path) -> None:
    """Without Maven on PATH, take the same file from Maven Central over HTTPS, checked against its .sha1."""
    with urllib.request.urlopen(artifact.url + ".sha1", timeout=60) as resp:
        expected = resp.read().decode().split()[0].strip().lower()
    part = dest.with_suffix(".part")
    digest = hashlib.sha1()
    with urllib.request.urlopen(artifact.url, timeout=60) as resp, open(part, "wb") as out:
        while chunk := resp.read(1 << 20):
            digest.update(chunk)
            out.write(chunk)
    if digest.hexdigest() != expected:
        part.unlink(missing_ok=True)
        raise RuntimeError(f"checksum mismatch for {artifact.url}: got {digest.hexdigest()}, expected {expected}")
    os.replace(part, dest)


def _unpack(zip_path: Path, home: Path) -> None:
    """Unzip keeping the Unix mode bits (zipfile drops them, and bin/ scripts must stay executable)."""
    staging = Path(tempfile.mkdtemp(dir=home.parent, prefix=".unpack-"))
    try:
        with zipfile.ZipFile(zip_path) as archive:
            tops = {name.split("/", 1)[0] for name in archive.namelist()}
            if len(tops) != 1:
                raise RuntimeError(f"{zip_path}: expected one top-level folder, found {sorted(tops)}")
            for info in archive.infolist():
                target = archive.extract(info, staging)
                mode = (info.external_attr >> 16) & 0o777
                if mode:
                    os.chmod(target, mode)
        # The rename is atomic: `home` either does not exist or is complete.
        os.rename(staging / tops.pop(), home)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def fetch_distribution(flavor: Flavor, version: str | None = None) -> Path:
    """Return the unpacked home folder of the integ-test-zip with its extra modules, downloading and unpacking
    on first use."""
    flavor = _check_flavor(flavor)
    version = version or DEFAULT_VERSIONS[flavor]
    root = cache_dir()
    home = root / f"{flavor}-{version}"
    if _complete(home, flavor):
        return home
    with _file_lock(root / f".{flavor}-{version}.lock"):
        if _complete(home, flavor):  # another process finished while we waited
            return home
        downloads = root / "downloads"
        downloads.mkdir(parents=True, exist_ok=True)
        if not (home / "bin" / flavor).is_file():
            artifact = distribution_artifact(flavor, version)
            zip_path = downloads / artifact.file_name
            if not zipfile.is_zipfile(zip_path):
                _download(artifact, zip_path)
            if home.exists():  # no bin script: damaged by hand or by a crash outside our atomic rename
                shutil.rmtree(home)
            _unpack(zip_path, home)
        for module in _MODULES[flavor]:
            _install_module(module, version, home, downloads)
    return home


def _complete(home: Path, flavor: Flavor) -> bool:
    return (home / "bin" / flavor).is_file() and all(
        (home / "modules" / module.name / "plugin-descriptor.properties").is_file() for module in _MODULES[flavor]
    )


def _install_module(module: Module, version: str, home: Path, downloads: Path) -> None:
    """The module's jars, descriptor and policy into `home/modules/NAME`, atomically (a rename of a complete
    folder)."""
    target = home / "modules" / module.name
    if (target / "plugin-descriptor.properties").is_file():
        return
    jars = []
    for coordinates in module.jars:
        group, name, jar_version = coordinates.format(version=version).split(":")
        artifact = Artifact(group, name, jar_version, "jar")
        jar = downloads / artifact.file_name
        if not zipfile.is_zipfile(jar):
            _download(artifact, jar)
        jars.append(jar)
    (home / "modules").mkdir(exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=home / "modules", prefix=".module-"))
    try:
        for jar in jars:
            shutil.copy2(jar, staging / jar.name)
        descriptor = {
            "description": module.description, "version": version, "name": module.name,
            "classname": module.classname, "java.version": "11", "opensearch.version": version,
            "custom.foldername": "", "extended.plugins": "", "has.native.controller": "false",
        }
        (staging / "plugin-descriptor.properties").write_text("".join(f"{k}={v}\n" for k, v in descriptor.items()))
        if module.policy:
            (staging / "plugin-security.policy").write_text(module.policy)
        shutil.rmtree(target, ignore_errors=True)
        os.rename(staging, target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def java_home() -> Path:
    """The JDK the clusters run on: $RERANK_JAVA_HOME, Debian's Java 17, $JAVA_HOME, else whatever `java` is."""
    candidates = [os.environ.get("RERANK_JAVA_HOME"), str(_PREFERRED_JAVA_HOME), os.environ.get("JAVA_HOME")]
    for candidate in candidates:
        if candidate and (Path(candidate) / "bin" / "java").is_file():
            return Path(candidate)
    java = shutil.which("java")
    if java is None:
        raise RuntimeError("no Java found: install a JDK 17 or set RERANK_JAVA_HOME")
    return Path(os.path.realpath(java)).parent.parent


def _free_ports(count: int) -> list[int]:
    # Hold all sockets open until every port is picked, so the same port is never handed out twice.
    with contextlib.ExitStack() as stack:
        ports = []
        for _ in range(count):
            sock = stack.enter_context(socket.socket(socket.AF_INET, socket.SOCK_STREAM))
            sock.bind(("127.0.0.1", 0))
            ports.append(sock.getsockname()[1])
        return ports


def _yaml(settings: dict[str, object]) -> str:
    # JSON scalars are valid YAML, which spares a YAML dependency and any quoting question.
    return "".join(f"{key}: {json.dumps(value)}\n" for key, value in settings.items())


def _group_alive(pgid: int) -> bool:
    """Whether any live (non-zombie) process is left in the group; orphaned zombies may never be reaped."""
    proc = Path("/proc")
    if not proc.is_dir():
        try:
            os.killpg(pgid, 0)
        except (ProcessLookupError, PermissionError):
            return False
        return True
    for entry in proc.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        # Fields after the parenthesised command: state ppid pgrp ...
        fields = stat.rsplit(")", 1)[-1].split()
        if len(fields) >= 3 and int(fields[2]) == pgid and fields[0] != "Z":
            return True
    return False


@functools.cache
def _not_root_prefix() -> tuple[str, ...]:
    """Command prefix that keeps the node from seeing uid 0: both servers refuse to run as root.

    CI containers and this build machine run everything as root. A user namespace that maps an ordinary uid onto
    our real uid 0 makes the node see itself as uid 1000, while the kernel still treats it as the owner of the
    root-owned cache and data folders, so nothing needs chown-ing and cleanup keeps working. The uid must be
    mapped (not left as `nobody`): the JVM attach API, which Elasticsearch uses on itself, fails otherwise.
    """
    if os.geteuid() != 0:
        return ()
    unshare = shutil.which("unshare")
    if unshare:
        prefix = (unshare, "--user", "--map-user=1000", "--map-group=1000")
        probe = subprocess.run([*prefix, "true"], stdin=subprocess.DEVNULL, capture_output=True)
        if probe.returncode == 0:
            return prefix
    raise RuntimeError(
        "Elasticsearch and OpenSearch refuse to run as root, and `unshare --user --map-user` (util-linux 2.38+, "
        "user namespaces) is not usable here to hide it: run as a non-root user"
    )


def _tail(path: Path, lines: int = _LOG_TAIL_LINES) -> str:
    try:
        with open(path, errors="replace") as handle:
            return "".join(deque(handle, maxlen=lines))
    except OSError:
        return f"(no log at {path})"


_RUNNING: set[LocalCluster] = set()


@atexit.register
def _stop_all() -> None:
    for cluster in list(_RUNNING):
        cluster.stop()


class ClusterStartError(RuntimeError):
    """The cluster exited or did not become healthy in time; the message carries the end of its log."""


class LocalCluster:
    """One single-node cluster on 127.0.0.1, in its own process group, with its own data folder."""

    def __init__(
        self,
        flavor: Flavor,
        version: str | None = None,
        *,
        port: int | None = None,
        heap: str = "512m",
        data_dir: Path | None = None,
        keep_data: bool = False,
    ) -> None:
        self.flavor: Flavor = _check_flavor(flavor)
        self.version = version or DEFAULT_VERSIONS[flavor]
        self.heap = heap
        self.keep_data = keep_data
        self._requested_port = port
        self._requested_dir = Path(data_dir) if data_dir is not None else None
        self._workdir: Path | None = None
        self._owns_workdir = False
        self._proc: subprocess.Popen[bytes] | None = None
        self._log_handle: IO[bytes] | None = None
        self._url: str | None = None

    def __repr__(self) -> str:
        return f"LocalCluster({self.flavor!r}, {self.version!r}, url={self._url!r})"

    @property
    def url(self) -> str:
        if self._url is None:
            raise RuntimeError(f"{self.flavor} cluster is not started")
        return self._url

    @property
    def log_path(self) -> Path:
        """stdout and stderr of the node; the node's own logs sit beside it."""
        if self._workdir is None:
            raise RuntimeError(f"{self.flavor} cluster was never started")
        return self._workdir / "logs" / "console.log"

    def start(self, timeout_s: float = 240) -> str:
        """Start the node and return its base URL once cluster health is yellow or green."""
        if self._proc is not None and self._proc.poll() is None and self._url is not None:
            return self._url
        home = fetch_distribution(self.flavor, self.version)
        deadline = time.monotonic() + timeout_s
        # A port picked as free can be taken before the JVM binds it; with our own picks, try a second pair.
        attempts = 1 if self._requested_port is not None else 2
        for attempt in range(attempts):
            try:
                self._launch(home)
                self._wait_healthy(deadline)
                return self.url
            except ClusterStartError as error:
                port_clash = "BindTransportException" in str(error) or "BindHttpException" in str(error)
                self.stop()
                if not (port_clash and attempt + 1 < attempts and time.monotonic() < deadline):
                    raise
            except BaseException:
                self.stop()
                raise
        raise AssertionError("unreachable")

    def _prepare_workdir(self) -> Path:
        if self._workdir is not None:  # kept from an earlier start (keep_data): start again on the same data
            workdir = self._workdir
        elif self._requested_dir is not None:
            workdir = self._requested_dir
            workdir.mkdir(parents=True, exist_ok=True)
        else:
            workdir = Path(tempfile.mkdtemp(prefix=f"rerank-{self.flavor}-"))
            self._owns_workdir = True
        for sub in ("data", "logs", "tmp"):
            (workdir / sub).mkdir(exist_ok=True)
        return workdir

    def _launch(self, home: Path) -> None:
        self._workdir = workdir = self._prepare_workdir()
        http_port, transport_port = _free_ports(2)
        if self._requested_port is not None:
            http_port = self._requested_port
        # A private config folder: the cached distribution stays pristine and clusters never share a keystore.
        conf = workdir / "config"
        shutil.copytree(home / "config", conf, dirs_exist_ok=True)
        settings: dict[str, object] = {
            # Stable across restarts on kept data; single-node discovery never joins another cluster anyway.
            "cluster.name": f"rerank-{self.flavor}",
            "node.name": "node-1",
            "path.data": str(workdir / "data"),
            "path.logs": str(workdir / "logs"),
            # Loopback only keeps the node in development mode: production bootstrap checks stay off.
            "network.host": "127.0.0.1",
            "http.port": http_port,
            "transport.port": transport_port,
            "discovery.type": "single-node",
            # Shared CI disks are often nearly full; the watermarks would block shard allocation.
            "cluster.routing.allocation.disk.threshold_enabled": False,
        }
        if self.flavor == "elasticsearch":
            # The integ-test-zip carries x-pack-security, which is on by default in 8.x; the tests need plain HTTP.
            settings["xpack.security.enabled"] = False
        else:
            # OpenSearch 2 keeps Lucene's old limit of 1,024 clauses, which a long question over several fields
            # passes (Gorilla's); Elasticsearch 8 sizes the limit by heap, several thousand at 512 MB.
            settings["indices.query.bool.max_clause_count"] = 8192
        (conf / f"{self.flavor}.yml").write_text(_yaml(settings))

        prefix = "ES" if self.flavor == "elasticsearch" else "OPENSEARCH"
        env = {k: v for k, v in os.environ.items() if k not in {"JAVA_HOME", "JAVA_TOOL_OPTIONS", "_JAVA_OPTIONS"}}
        env.update({
            f"{prefix}_JAVA_HOME": str(java_home()),
            f"{prefix}_PATH_CONF": str(conf),
            f"{prefix}_TMPDIR": str(workdir / "tmp"),
            # The env options come after jvm.options, so this heap wins over the distribution's default.
            f"{prefix}_JAVA_OPTS": f"-Xms{self.heap} -Xmx{self.heap}",
        })
        log_path = workdir / "logs" / "console.log"
        self._log_handle = open(log_path, "ab")
        self._url = f"http://127.0.0.1:{http_port}"
        self._proc = subprocess.Popen(
            [*_not_root_prefix(), str(home / "bin" / self.flavor)],
            cwd=home,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=self._log_handle,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # own process group: stop() takes the launcher and the server JVM together
        )
        _RUNNING.add(self)

    def _fail(self, reason: str) -> ClusterStartError:
        return ClusterStartError(
            f"{self.flavor} {self.version} {reason}; last {_LOG_TAIL_LINES} lines of its log:\n"
            f"{_tail(self.log_path)}"
        )

    def _wait_healthy(self, deadline: float) -> None:
        assert self._proc is not None
        health = f"{self._url}/_cluster/health?wait_for_status=yellow&timeout=5s"
        while True:
            if self._proc.poll() is not None:
                raise self._fail(f"exited with code {self._proc.returncode} during start")
            if time.monotonic() > deadline:
                raise self._fail("did not reach health yellow in time")
            try:
                with urllib.request.urlopen(health, timeout=15) as resp:
                    status = json.load(resp).get("status")
                if status in ("yellow", "green"):
                    return
            except urllib.error.HTTPError as error:
                # 408: wait_for_status timed out; 503: no master elected yet. Anything else will not heal.
                if error.code not in (408, 503):
                    raise self._fail(f"answered HTTP {error.code} to {health}") from error
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                pass  # not listening yet
            # Polling interval while the JVM boots; the server-side wait above covers the later phase.
            time.sleep(0.5)

    def wait(self) -> int:
        """Block until the node exits on its own; return its exit code."""
        if self._proc is None:
            raise RuntimeError(f"{self.flavor} cluster is not started")
        return self._proc.wait()

    def stop(self) -> None:
        """Stop the whole process group (SIGTERM, then SIGKILL), then remove the data folder if it was ours."""
        proc, self._proc = self._proc, None
        if proc is not None:
            pgid = proc.pid  # start_new_session makes the launcher the group leader
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pgid, signal.SIGTERM)
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(pgid, signal.SIGKILL)
                proc.wait()
            # The launcher can exit before the server JVM it spawned; wait for the rest of the group too.
            grace = time.monotonic() + 30
            while _group_alive(pgid) and time.monotonic() < grace:
                time.sleep(0.2)
            if _group_alive(pgid):
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(pgid, signal.SIGKILL)
        _RUNNING.discard(self)
        if self._log_handle is not None:
            self._log_handle.close()
            self._log_handle = None
        self._url = None
        if self._owns_workdir and not self.keep_data and self._workdir is not None:
            shutil.rmtree(self._workdir, ignore_errors=True)
            self._workdir = None
            self._owns_workdir = False

    def __enter__(self) -> LocalCluster:
        self.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()


def _main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m rerank_proxy_tools.localcluster",
                                     description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("fetch", help="download and unpack both distributions into the cache")
    run = sub.add_parser("run", help="start a cluster, print its URL and serve until Ctrl-C")
    run.add_argument("flavor", choices=get_args(Flavor))
    run.add_argument("--port", type=int, default=None)
    run.add_argument("--version", default=None)
    run.add_argument("--heap", default="512m")
    args = parser.parse_args(argv)

    if args.command == "fetch":
        for flavor in get_args(Flavor):
            print(f"{flavor} {DEFAULT_VERSIONS[flavor]}: {fetch_distribution(flavor)}", flush=True)
        return 0

    # SIGTERM (docker stop, CI cancel) must stop the node as Ctrl-C does; SIGINT too when a non-interactive
    # shell started us in the background with SIGINT ignored.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    signal.signal(signal.SIGINT, signal.default_int_handler)
    cluster = LocalCluster(args.flavor, args.version, port=args.port, heap=args.heap)
    try:
        print(cluster.start(), flush=True)
        code = cluster.wait()
        print(f"{args.flavor} exited with code {code}; log: {cluster.log_path}", file=sys.stderr)
        return code or 1
    except KeyboardInterrupt:
        return 0
    finally:
        cluster.stop()


if __name__ == "__main__":
    sys.exit(_main())
