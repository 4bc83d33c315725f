"""The runtime (`proxy/`, `rerank/`) stands without the developer tools: importing every one of its modules pulls in
neither `rerank_proxy_tools` nor what only the `tools` extra installs, and `eval` and `demo` say which extra they
need when it is missing instead of failing with a traceback."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from proxy.cli import main

REPO = Path(__file__).resolve().parents[2]
RUNTIME_PACKAGES = ("proxy", "rerank")
# The tools package and the imports only the `tools` extra brings (tqdm also comes with transformers: not listed).
TOOLS_ONLY = ("rerank_proxy_tools", "ir_measures", "pytrec_eval")

_IMPORT_ALL = """
import importlib, json, pkgutil, sys
names = []
for package in sys.argv[1].split(","):
    names.append(package)
    names += [f"{package}.{m.name}" for m in pkgutil.iter_modules(importlib.import_module(package).__path__)]
for name in names:
    importlib.import_module(name)
roots = sorted({m.split(".")[0] for m in sys.modules})
print(json.dumps({"imported": names, "roots": roots}))
"""


def test_importing_every_runtime_module_pulls_in_no_tool():
    done = subprocess.run([sys.executable, "-c", _IMPORT_ALL, ",".join(RUNTIME_PACKAGES)], cwd=REPO,
                          capture_output=True, text=True, timeout=300, check=True)
    result = json.loads(done.stdout.splitlines()[-1])
    assert {"proxy.server", "proxy.cli", "rerank.engine"} <= set(result["imported"])
    assert [root for root in result["roots"] if root in TOOLS_ONLY] == []


@pytest.mark.parametrize("argv", [["eval", "--data", "d", "--upstream", "http://127.0.0.1:9"], ["demo"]],
                         ids=["eval", "demo"])
def test_eval_and_demo_without_the_tools_name_the_extra(argv, monkeypatch, capsys):
    for name in ("rerank_proxy_tools", "rerank_proxy_tools.evaluate", "rerank_proxy_tools.demo"):
        monkeypatch.setitem(sys.modules, name, None)  # what an install without the tools looks like to `import`

    assert main(["--log-level", "WARNING", *argv]) == 2
    err = capsys.readouterr().err
    assert f"rerank-proxy {argv[0]} needs the tools extra: pip install 'rerank-proxy[tools]'" in err
