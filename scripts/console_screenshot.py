"""Screenshots of the console (`/_rerank_proxy/ui`) for the README: the shipped config.yaml in front of a cluster
that holds the `scifact` index, a real query compared under `control` and a variant, in headless Chromium.

    .venv/bin/python -m scripts.console_screenshot --upstream http://127.0.0.1:9200 -o docs/console.png \
        [--eval-json out.json --results-out docs/console-results.png]

Needs the test extra (playwright) and a Chromium (`--chromium`, default /usr/bin/chromium).
"""
from __future__ import annotations

import argparse
import asyncio
import json
import urllib.request
from pathlib import Path

from proxy.config import Console, load_config
from proxy.server import start_server

REPO = Path(__file__).resolve().parents[1]


async def shoot(args: argparse.Namespace) -> None:
    from playwright.async_api import async_playwright

    config = load_config(REPO / "config.yaml").with_overrides(
        listen="127.0.0.1:0", admin_listen="127.0.0.1:0", upstreams=[args.upstream])
    if args.eval_json is not None:
        config = config.model_copy(update={"console": Console(eval_json=args.eval_json.resolve())})
    serving = await start_server(config)
    try:
        # Once through the API first: the model embeds each abstract once, so the shot shows a warm proxy's timings.
        compare = {"index": args.index, "query": args.query, "variants": ["control", *args.variant], "size": args.size}
        request = urllib.request.Request(f"{serving.admin_url}/_rerank_proxy/ui/api/compare",
                                         json.dumps(compare).encode(), {"Content-Type": "application/json"})
        for _ in range(2):  # a cold window may run past the model's deadline the first time
            await asyncio.to_thread(lambda: urllib.request.urlopen(request, timeout=300).read())
        async with async_playwright() as playwright:
            browser = await playwright.chromium.launch(executable_path=args.chromium, args=["--no-sandbox"])
            page = await browser.new_page(viewport={"width": args.width, "height": args.height})
            await page.goto(f"{serving.admin_url}/_rerank_proxy/ui")
            await page.wait_for_selector(f'#index option[value="{args.index}"]', state="attached")
            await page.select_option("#index", args.index)
            for variant in args.variant:
                await page.check(f'#variants input[value="{variant}"]')
            await page.fill("#query", args.query)
            await page.fill("#size", str(args.size))
            await page.click("#search")
            for variant in ["control", *args.variant]:
                await page.wait_for_selector(f'[data-column="variant:{variant}"] li.hit')
            # One hit's text opened, to show what the model read.
            await page.locator('[data-column="variant:control"] li.hit details summary').first.click()
            args.output.parent.mkdir(parents=True, exist_ok=True)
            await page.screenshot(path=str(args.output))
            print(f"wrote {args.output}")
            if args.results_out is not None:
                await page.get_by_role("tab", name="Experiments & eval").click()
                await page.wait_for_selector("#eval-chart svg rect.bar")
                await page.screenshot(path=str(args.results_out))
                print(f"wrote {args.results_out}")
            await browser.close()
    finally:
        await serving.cleanup()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--upstream", default="http://127.0.0.1:9200", help="a cluster holding the scifact index")
    parser.add_argument("--index", default="scifact")
    parser.add_argument("--query", default="vitamin D deficiency and bone density")
    parser.add_argument("--variant", action="append", default=None, help="a variant beside control (repeatable)")
    parser.add_argument("--size", type=int, default=10)
    parser.add_argument("--eval-json", type=Path, default=None, help="a `rerank-proxy eval --json` file to chart")
    parser.add_argument("-o", "--output", type=Path, default=REPO / "docs" / "console.png")
    parser.add_argument("--results-out", type=Path, default=None, help="also shoot the experiments & eval tab")
    parser.add_argument("--chromium", default="/usr/bin/chromium")
    parser.add_argument("--width", type=int, default=1280)
    parser.add_argument("--height", type=int, default=800)
    args = parser.parse_args()
    args.variant = args.variant or ["small-window"]
    asyncio.run(shoot(args))


if __name__ == "__main__":
    main()
