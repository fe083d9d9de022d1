"""Make README.md's demo screenshot (docs/demo.png): the shipped model in ``instruct-ipt demo``,
driven by a headless Chromium the way a user would use it.

    python scripts/demo_screenshot.py                  # docs/demo.png
    python scripts/demo_screenshot.py --task dehaze --out /tmp/demo.png

Needs ``pip install -e ".[demo,test]"`` (Gradio, Playwright) and the system Chromium
(``apt-get install chromium``; ``playwright install`` is not needed). The photo is the demo's own
example for the task - a degraded crop of one of scikit-image's bundled photos - uploaded, restored
from the instruction the interpreter documents for that task, with the slider left in the middle.
"""

from __future__ import annotations

import argparse
import shutil
import socket
import tempfile
from pathlib import Path

from instruct_ipt.demo import build_demo
from instruct_ipt.instruct.interpret import EXAMPLES
from instruct_ipt.pipeline import RestorationPipeline

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--task", default="derain", help="whose example photo and instruction to show (default derain)")
    ap.add_argument("--out", default=str(ROOT / "docs" / "demo.png"), help="the screenshot (default docs/demo.png)")
    ap.add_argument("--chromium", default=shutil.which("chromium") or "/usr/bin/chromium", help="the browser")
    args = ap.parse_args()

    from playwright.sync_api import sync_playwright

    pipe = RestorationPipeline.from_pretrained(device="cpu")  # the shipped default model
    with tempfile.TemporaryDirectory(prefix="instruct-ipt-screenshot-") as work:
        demo = build_demo(pipe, work_dir=work)
        photo = next(Path(work, "examples").glob(f"{args.task}-*.png"))
        _app, url, _ = demo.launch(server_name="127.0.0.1", server_port=_free_port(), prevent_thread_lock=True,
                                   quiet=True)
        try:
            with sync_playwright() as p:
                browser = p.chromium.launch(executable_path=args.chromium, args=CHROMIUM_ARGS)
                page = browser.new_page(viewport={"width": 1280, "height": 800})
                page.goto(url, wait_until="domcontentloaded")
                page.locator("#photo input[type=file]").set_input_files(str(photo))
                page.locator("#photo img").first.wait_for(timeout=30_000)
                page.locator("#mode").get_by_text("Describe it").click()
                page.locator("#instruction textarea").fill(EXAMPLES[args.task])
                page.locator("#restore").click()
                page.locator("#status").get_by_text("Ran:").wait_for(timeout=300_000)
                page.locator("#download a").first.wait_for()
                page.wait_for_timeout(500)  # let the slider's images finish drawing
                Path(args.out).parent.mkdir(parents=True, exist_ok=True)
                page.screenshot(path=args.out, full_page=True)
                print(page.locator("#status").inner_text().splitlines()[0])
                browser.close()
        finally:
            demo.close()
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
