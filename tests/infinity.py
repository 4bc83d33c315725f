"""A real reranking server for the `remote` backend's tests: Infinity (PyPI `infinity-emb`) on CPU, offline.

Infinity pins transformers 4.x and numpy 1.x, which the project's own environment has moved past, so it lives in a
virtual environment of its own under `.cache/infinity-venv` (git-ignored), created on first use with pip and reused
while its pinned requirements are unchanged. An install that fails raises with pip's output: CI has PyPI, so a
failure there is a real failure, not a reason to skip.
"""
from __future__ import annotations

import fcntl
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
VENV = REPO / ".cache" / "infinity-venv"
# The exact release tested; a new one is a deliberate bump (its CLI flags and pins move between releases).
REQUIREMENTS = ("infinity-emb[server,torch]==0.0.78",)
_STAMP = ".rerank-proxy-installed"
INSTALL_TIMEOUT_S = 1800  # a fresh venv downloads torch with its CUDA wheels: about 4 minutes on a good link
START_TIMEOUT_S = 180


def _python(venv: Path) -> Path:
    return venv / "bin" / "python"


def ensure_venv(venv: Path = VENV) -> Path:
    """The venv with Infinity installed (created or repaired on demand); returns its `infinity_emb` executable."""
    venv.parent.mkdir(parents=True, exist_ok=True)
    wanted = "\n".join(REQUIREMENTS) + "\n"
    executable = venv / "bin" / "infinity_emb"
    # A lock, so two test runs sharing the checkout do not pip into the same venv at once.
    with open(venv.parent / f"{venv.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        stamp = venv / _STAMP
        if executable.is_file() and stamp.is_file() and stamp.read_text() == wanted:
            return executable
        started = time.monotonic()
        _run([sys.executable, "-m", "venv", "--clear", str(venv)], "create the Infinity venv")
        _run([str(_python(venv)), "-m", "pip", "install", "--disable-pip-version-check", "--no-input",
              *REQUIREMENTS], "install Infinity")
        if not executable.is_file():
            raise RuntimeError(f"pip installed {REQUIREMENTS} but {executable} does not exist")
        stamp.write_text(wanted)
        print(f"[infinity] venv ready in {time.monotonic() - started:.0f}s: {venv}", file=sys.stderr)
        return executable


def _run(cmd: list[str], what: str) -> None:
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=INSTALL_TIMEOUT_S, stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired as exc:
        raise RuntimeError(f"could not {what}: {' '.join(cmd)} ran past {INSTALL_TIMEOUT_S}s") from exc
    if done.returncode != 0:
        raise RuntimeError(
            f"could not {what}: {' '.join(cmd)} exited {done.returncode}\n"
            f"--- stdout ---\n{done.stdout[-6000:]}\n--- stderr ---\n{done.stderr[-6000:]}"
        )


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class InfinityServer:
    """`infinity_emb v2` serving one sequence-classification folder on 127.0.0.1, CPU, float32.

    Cohere-style rerank at `{url}/v1/rerank` (the `/v1` URL prefix); `/health` stays unprefixed. With `api_key`
    every API call needs `Authorization: Bearer <api_key>`.
    """

    def __init__(self, model_dir: Path, *, served_model_name: str = "tiny-reranker", api_key: str | None = None,
                 log_path: Path | None = None) -> None:
        self.model_dir = Path(model_dir)
        self.served_model_name = served_model_name
        self.api_key = api_key
        self.log_path = log_path or self.model_dir.parent / "infinity.log"
        self.port = 0
        self.install_s = 0.0
        self.start_s = 0.0
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> str:
        began = time.monotonic()
        executable = ensure_venv()
        self.install_s = time.monotonic() - began
        self.port = free_port()
        cmd = [
            str(executable), "v2",
            "--model-id", str(self.model_dir),
            "--served-model-name", self.served_model_name,
            "--host", "127.0.0.1", "--port", str(self.port),
            "--url-prefix", "/v1",
            "--engine", "torch", "--device", "cpu", "--dtype", "float32",
            # The plain model forward pass: the same arithmetic the project's own cross-encoder backend does.
            "--no-bettertransformer", "--no-compile", "--no-model-warmup", "--no-vector-disk-cache",
            "--log-level", "warning",
        ]
        if self.api_key:
            cmd += ["--api-key", self.api_key]
        env = {
            **os.environ,
            "DO_NOT_TRACK": "1", "INFINITY_ANONYMOUS_USAGE_STATS": "0",
            "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
            "CUDA_VISIBLE_DEVICES": "",
        }
        env.pop("PYTHONPATH", None)  # the project's packages and pins must not leak into Infinity's interpreter
        started = time.monotonic()
        with open(self.log_path, "wb") as log:
            self._process = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                             env=env, start_new_session=True)
        try:
            self._wait_ready(started + START_TIMEOUT_S)
        except BaseException:
            self.stop()
            raise
        self.start_s = time.monotonic() - started
        return self.url

    def _wait_ready(self, deadline: float) -> None:
        # /health answers only once the model is loaded: uvicorn starts serving after the app's startup.
        assert self._process is not None
        while True:
            if self._process.poll() is not None:
                raise RuntimeError(f"infinity exited {self._process.returncode} while starting:\n{self.log_tail()}")
            try:
                with urllib.request.urlopen(f"{self.url}/health", timeout=2) as response:
                    if response.status == 200:
                        return
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"infinity not ready within {START_TIMEOUT_S}s:\n{self.log_tail()}")
            time.sleep(0.25)  # polling for readiness, with the deadline above as the bound

    def log_tail(self, chars: int = 4000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-chars:]
        except OSError:
            return "(no log)"

    def stop(self) -> None:
        process, self._process = self._process, None
        if process is None or process.poll() is not None:
            return
        process.terminate()
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=15)

    def __enter__(self) -> InfinityServer:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
