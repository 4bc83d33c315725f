"""Go programs the tests run (Toxiproxy, promtool), built once from the Go module proxy and cached.

`go install PACKAGE@VERSION` into a scratch GOBIN beside the cache, then an atomic rename into `<repo>/.cache/bin`:
no half-built binary is ever run, and a file lock keeps parallel sessions from building the same one twice. A stamp
beside each binary records the version it is, so a version bump rebuilds it.
"""
from __future__ import annotations

import fcntl
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

BIN_DIR = Path(__file__).resolve().parent.parent / ".cache" / "bin"


def _build(package: str, version: str, binary: Path, timeout_s: float) -> None:
    go = shutil.which("go")
    if go is None:
        raise RuntimeError(f"building {package}@{version} needs Go (not on PATH)")
    with tempfile.TemporaryDirectory(dir=binary.parent) as scratch:
        env = {**os.environ, "GOBIN": scratch, "CGO_ENABLED": "0", "GOFLAGS": "-mod=mod"}
        try:
            result = subprocess.run([go, "install", f"{package}@{version}"], env=env,
                                    capture_output=True, text=True, timeout=timeout_s)
        except subprocess.TimeoutExpired:
            raise RuntimeError(f"building {package}@{version} took over {timeout_s:.0f} s") from None
        if result.returncode != 0:
            raise RuntimeError(f"building {package}@{version} failed:\n{result.stderr[-4000:]}")
        os.replace(Path(scratch) / package.rstrip("/").rsplit("/", 1)[-1], binary)


def go_binary(package: str, version: str, name: str, timeout_s: float = 600) -> Path:
    """The executable `name` in the cache, built from `package` (a main package's import path) at `version` unless
    the cached one is that version. Raises RuntimeError, with Go's output, when it cannot be built."""
    BIN_DIR.mkdir(parents=True, exist_ok=True)
    binary, stamp = BIN_DIR / name, BIN_DIR / f"{name}.version"
    with open(BIN_DIR / f"{name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes; a waiter then finds the binary built
        if not (binary.exists() and stamp.exists() and stamp.read_text() == version):
            _build(package, version, binary, timeout_s)
            stamp.write_text(version)
    return binary
