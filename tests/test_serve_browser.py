"""difflab serve in a real browser: Playwright drives Debian's chromium (executable_path; no browser
download) against `difflab serve` on a loopback port. Skipped where either is missing; .ci/run
installs both. DIFFLAB_UI_SCREENSHOTS=DIR keeps a screenshot of each tab there."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from difflab.cli import main
from helpers import free_port, served_run

playwright = pytest.importorskip("playwright.sync_api")
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="Debian's chromium is not installed (apt install chromium)")



@pytest.fixture(scope="module")
def run(tmp_path_factory):
    return served_run(tmp_path_factory.mktemp("browser") / "digits")


@pytest.fixture(scope="module")
def server(run):
    """`difflab serve RUN` as a user starts it, on a free loopback port."""
    port = free_port()
    process = subprocess.Popen([sys.executable, "-m", "difflab.cli", "serve", str(run), "--port", str(port)],
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.monotonic() + 120
    while True:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                break
        assert process.poll() is None and time.monotonic() < deadline, process.communicate()[0]
        time.sleep(0.2)
    yield f"http://127.0.0.1:{port}/"
    process.terminate()
    process.wait(timeout=30)


@pytest.fixture(scope="module")
def browser():
    with playwright.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        yield browser
        browser.close()


@pytest.fixture
def page(browser, server):
    page = browser.new_page(accept_downloads=True, viewport={"width": 1280, "height": 1000})
    page.goto(server)
    page.wait_for_selector("#generate")
    yield page
    page.close()


def screenshot(page, name: str) -> None:
    folder = os.environ.get("DIFFLAB_UI_SCREENSHOTS")
    if folder:
        Path(folder).mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(Path(folder) / f"{name}.png"), full_page=True)


def set_number(page, elem_id: str, value) -> None:
    field = page.locator(f"#{elem_id} input[type=number]")
    field.fill(str(value))
    field.press("Enter")


def generate(page, n: int) -> None:
    page.locator("#generate").click()
    page.wait_for_function(f"document.querySelectorAll('#gallery button[aria-label^=\"Thumbnail\"]').length >= {n}"
                           f" || document.querySelectorAll('#gallery img').length >= {n}", timeout=120_000)
    page.wait_for_function("document.querySelector('#status').innerText.includes('images in')", timeout=120_000)


def download(page, index: int, tmp_path) -> Path:
    """Open image ``index`` of the gallery and press its Download button."""
    page.locator("#gallery img").nth(index).click()
    with page.expect_download() as info:
        page.locator("#gallery button[aria-label=Download]").click()
    path = tmp_path / f"download-{index}.png"
    info.value.save_as(path)
    page.locator("#gallery button[aria-label=Close]").click()
    return path


def test_generate_download_and_remake(page, run, tmp_path):
    set_number(page, "seed", 0)
    set_number(page, "n", 4)
    generate(page, 4)
    screenshot(page, "generate")
    downloaded = download(page, 3, tmp_path)
    assert main(["sample", str(run), "--seed", "0", "--n", "4", "--out", str(tmp_path / "cli")]) == 0
    expected = sorted((tmp_path / "cli" / "images").glob("*.png"))[3]
    assert np.array_equal(np.asarray(Image.open(downloaded)), np.asarray(Image.open(expected)))
    record = json.loads(Image.open(downloaded).text["difflab"])  # the download carries its parameters
    assert record["seed"] == 3
    assert main(["sample", "--from-png", str(downloaded), "--out", str(tmp_path / "again")]) == 0
    again = next((tmp_path / "again" / "images").glob("*.png"))
    assert np.array_equal(np.asarray(Image.open(again)), np.asarray(Image.open(downloaded)))


def test_class_caption(page):
    page.locator("#class input").click()
    page.get_by_role("option", name="7", exact=True).click()
    set_number(page, "n", 1)
    generate(page, 1)
    assert "7 · seed 0" in page.locator("#gallery").inner_text()


def test_png_drop_restores_the_fields(page, run, tmp_path):
    assert main(["sample", str(run), "--seed", "5", "--n", "2", "--method", "ddim", "--steps", "6",
                 "--out", str(tmp_path / "cli")]) == 0
    png = sorted((tmp_path / "cli" / "images").glob("*.png"))[1]
    page.get_by_role("tab", name="Restore from PNG").click()
    page.locator("#png-drop input[type=file]").set_input_files(str(png))
    page.wait_for_function("document.querySelector('#seed input').value === '6'", timeout=30_000)
    assert page.locator("#class input").input_value() == "1"  # image 1: class 1 in turn, seed 6
    assert page.locator("#method input").input_value() == "ddim"
    assert page.locator("#steps input[type=number]").input_value() == "6"
    screenshot(page, "restore-from-png")


def test_inpaint_a_brush_mask(page, tmp_path):
    image = Image.fromarray(np.random.default_rng(2).integers(0, 256, (8, 8), dtype=np.uint8)).convert("RGB")
    image.save(tmp_path / "input.png")
    page.get_by_role("tab", name="Inpaint").click()
    page.locator("#inpaint-image input[type=file]").set_input_files(str(tmp_path / "input.png"))
    canvas = page.locator("#inpaint-editor canvas").first
    canvas.wait_for(timeout=30_000)
    page.wait_for_timeout(1000)
    box = canvas.bounding_box()
    # the image (enlarged for painting) is shown centred and fitted to the canvas height: a stroke
    # over its left part, the columns 1-3 of 8
    side = min(box["width"], box["height"])
    left, middle = box["x"] + (box["width"] - side) / 2, box["y"] + box["height"] / 2
    page.mouse.move(left + side * 0.15, middle)
    page.mouse.down()
    page.mouse.move(left + side * 0.4, middle, steps=8)
    page.mouse.up()
    set_number(page, "n", 2)
    page.locator("#inpaint").click()
    page.wait_for_function("document.querySelector('#status').innerText.includes('images in')", timeout=120_000)
    screenshot(page, "inpaint")
    result = download(page, 0, tmp_path)
    got, original = np.asarray(Image.open(result)), np.asarray(image.convert("L"))
    changed = got != original
    assert changed.any()  # the painted stroke was repainted
    assert not changed[:, 6:].any()  # far from the stroke, the input exactly (blend pastes it back)


def test_model_card_tab(page):
    page.get_by_role("tab", name="Model card").click()
    assert "10 classes" in page.locator("#card").inner_text()
    screenshot(page, "model-card")
