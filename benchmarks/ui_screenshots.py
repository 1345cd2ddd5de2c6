"""Screenshots of each tab of `difflab serve` for docs/ui/ and the README.

    python benchmarks/ui_screenshots.py --runs runs/fashion-mnist-16-cfg runs/fashion-mnist-16-text

Starts `difflab serve` on the runs, drives Debian's chromium with Playwright through each tab
(Generate with 8 images, Image to image and Inpaint on a Fashion-MNIST test picture with a
brush stroke, the model card, a PNG dropped on "Restore from PNG", and Prompt-to-prompt on the
text run: a test sneaker edited into a sandal) and saves a PNG per tab; ``--p2p-only`` takes the
last alone:

    python benchmarks/ui_screenshots.py --runs runs/fashion-mnist-16-text --p2p-only
"""

from __future__ import annotations

import argparse
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", nargs="+", default=["runs/fashion-mnist-16-cfg", "runs/fashion-mnist-16-text"])
    parser.add_argument("--out", default="docs/ui")
    parser.add_argument("--p2p-only", action="store_true", help="only the Prompt-to-prompt tab's screenshot")
    args = parser.parse_args()
    from playwright.sync_api import sync_playwright

    from difflab.data import load_dataset
    from difflab.images import to_pil

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp())
    picture = to_pil(load_dataset("fashion-mnist", split="test", resolution=16).images[0])
    picture.resize((64, 64)).save(work / "shoe.png")
    port = free_port()
    server = subprocess.Popen([sys.executable, "-m", "difflab.cli", "serve", *args.runs, "--port", str(port)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        while True:
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", port)) == 0:
                    break
            time.sleep(0.2)
        chromium = shutil.which("chromium") or shutil.which("chromium-browser")
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=chromium, args=["--no-sandbox"])
            page = browser.new_page(viewport={"width": 1280, "height": 1000}, accept_downloads=True)
            page.goto(f"http://127.0.0.1:{port}/")
            page.wait_for_selector("#generate")

            def run(button):
                """Click ``button``, see its sampler steps go by, and wait for its "N images in" status."""
                page.locator(button).click()
                page.wait_for_function("document.querySelector('#status').innerText.startsWith('step')",
                                       timeout=300_000)
                page.wait_for_function("document.querySelector('#status').innerText.includes('images in')",
                                       timeout=300_000)
                page.wait_for_timeout(500)

            def number(elem_id, value):
                field = page.locator(f"#{elem_id} input[type=number]")
                field.fill(str(value))
                field.press("Enter")

            text_run = next((Path(r).name for r in args.runs if "text" in Path(r).name), None)
            if text_run:  # a real sneaker edited into a sandal
                page.locator("#model input").fill(text_run)
                page.locator("#model input").press("Enter")
                page.wait_for_timeout(1000)
                page.locator("#prompt textarea").fill("a photo of a sneaker")
                page.get_by_role("tab", name="Prompt-to-prompt").click()
                page.locator("#edit-prompt textarea").fill("a photo of a sandal")
                sneaker = load_dataset("fashion-mnist", split="test", resolution=16)
                first = sneaker.images[(sneaker.labels == 7).nonzero()[0, 0]]
                to_pil(first).resize((64, 64)).save(work / "sneaker.png")
                page.locator("#p2p-image input[type=file]").set_input_files(str(work / "sneaker.png"))
                page.wait_for_timeout(1000)
                run("#p2p")
                page.screenshot(path=str(out / "prompt-to-prompt.png"), full_page=True)
                page.locator("#model input").fill(Path(args.runs[0]).name)  # back to the first run
                page.locator("#model input").press("Enter")
                page.wait_for_timeout(1000)
            if args.p2p_only:
                browser.close()
                return
            number("n", 8)
            run("#generate")
            page.screenshot(path=str(out / "generate.png"), full_page=True)
            page.locator("#gallery img").nth(7).click()
            with page.expect_download() as info:
                page.locator("#gallery button[aria-label=Download]").click()
            info.value.save_as(work / "downloaded.png")
            page.locator("#gallery button[aria-label=Close]").click()

            page.get_by_role("tab", name="Image to image").click()
            page.locator("#init-image input[type=file]").set_input_files(str(work / "shoe.png"))
            number("n", 4)
            run("#img2img")
            page.screenshot(path=str(out / "image-to-image.png"), full_page=True)

            page.get_by_role("tab", name="Inpaint").click()
            page.locator("#inpaint-image input[type=file]").set_input_files(str(work / "shoe.png"))
            canvas = page.locator("#inpaint-editor canvas").first
            canvas.wait_for()
            page.wait_for_timeout(1000)
            box = canvas.bounding_box()
            side = min(box["width"], box["height"])
            left, top = box["x"] + (box["width"] - side) / 2, box["y"] + (box["height"] - side) / 2
            page.mouse.move(left + side * 0.3, top + side * 0.3)
            page.mouse.down()
            for x, y in ((0.7, 0.3), (0.7, 0.5), (0.3, 0.5), (0.3, 0.7), (0.7, 0.7)):
                page.mouse.move(left + side * x, top + side * y, steps=6)
            page.mouse.up()
            run("#inpaint")
            page.screenshot(path=str(out / "inpaint.png"), full_page=True)

            page.get_by_role("tab", name="Model card").click()
            page.wait_for_timeout(1500)
            page.screenshot(path=str(out / "model-card.png"), full_page=True)

            page.get_by_role("tab", name="Restore from PNG").click()
            page.locator("#png-drop input[type=file]").set_input_files(str(work / "downloaded.png"))
            page.wait_for_timeout(1500)
            page.screenshot(path=str(out / "restore-from-png.png"), full_page=True)
            browser.close()
    finally:
        server.terminate()
        server.wait(timeout=30)
    print("screenshots:", ", ".join(sorted(p.name for p in out.glob("*.png"))))


if __name__ == "__main__":
    main()
