"""The console script's own choices, without starting anything."""
from __future__ import annotations

import asyncio
import sys

import pytest

from proxy.cli import _serve_forever


@pytest.mark.skipif(sys.platform == "win32", reason="uvloop is not installed on Windows")
def test_serve_and_demo_run_on_uvloop_where_it_is_installed() -> None:
    async def loop_module() -> int:
        return 0 if type(asyncio.get_running_loop()).__module__.startswith("uvloop") else 1

    assert _serve_forever(loop_module()) == 0
