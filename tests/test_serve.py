"""difflab serve: the Python API behind the page (difflab.serve.studio, .uploads) and the same flows
through gradio_client against a server on a loopback port (the browser test: test_serve_browser.py)."""

from __future__ import annotations

import io
import json
import socket
import threading

import numpy as np
import pytest
from PIL import Image

from difflab.cli import main
from difflab.serve.studio import EVERY_CLASS, Cancelled, Request, Studio
from difflab.serve.uploads import UploadError, read_upload
from helpers import free_port, served_run


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    return served_run(tmp_path_factory.mktemp("serve") / "digits")


@pytest.fixture(scope="module")
def studio(run, tmp_path_factory):
    return Studio([run], device="cpu", out_dir=tmp_path_factory.mktemp("out"), max_upload_bytes=2**20)


def pixels(path) -> np.ndarray:
    return np.asarray(Image.open(path))


def cli_images(run, tmp_path, *extra) -> list[np.ndarray]:
    out = tmp_path / "cli"
    assert main(["sample", str(run), "--out", str(out), *extra]) == 0
    return [pixels(p) for p in sorted((out / "images").glob("*.png"))]


def png_bytes(image: Image.Image, **info) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", **info)
    return buffer.getvalue()


# -- the Python API ---------------------------------------------------------------------------------

def test_generate_equals_cli_sample_image_by_image(studio, run, tmp_path):
    result = studio.generate(Request("digits", seed=0, n=4))
    expected = cli_images(run, tmp_path, "--seed", "0", "--n", "4")
    assert [r["seed"] for r in result.records] == [0, 1, 2, 3]
    assert all(np.array_equal(pixels(p), e) for p, e in zip(result.paths, expected))
    assert result.captions[3] == "3 · seed 3"  # every class in turn: image 3 is class 3
    # the PNG's record remakes image 3 alone
    alone = studio.generate(Request("digits", **{k: v for k, v in studio.settings_from_png(
        result.paths[3].read_bytes()).items() if k != "model"}))
    assert np.array_equal(pixels(alone.paths[0]), pixels(result.paths[3]))


def test_settings_from_png_restore_the_fields(studio):
    result = studio.generate(Request("digits", seed=7, n=2, class_label="5", method="ddim", steps=6,
                                     guidance_scale=2.0))
    settings = studio.settings_from_png(result.paths[1])
    assert settings == {"model": "digits", "prompt": "", "negative_prompt": "", "class_label": "5", "method": "ddim",
                        "steps": 6, "spacing": settings["spacing"], "seed": 8, "guidance_scale": 2.0,
                        "guidance_rescale": 0.0, "n": 1}
    assert result.captions == ["5 · seed 7", "5 · seed 8"]
    with pytest.raises(ValueError, match="no difflab generation record"):
        studio.settings_from_png(png_bytes(Image.new("L", (8, 8))))


def test_auto_spacing_uses_the_runs_tuned_levels_as_the_cli_does(tmp_path):
    import shutil

    from difflab.sampling.tuning import TunedSigmas
    from difflab.serve.studio import AUTO_SPACING

    run, steps = served_run(tmp_path / "digits"), 4  # its sample.steps; too short a run to ship tuned levels
    levels = [80.0, 20.0, 5.0, 1.25, 0.0]
    TunedSigmas("unipc_3", steps, levels, "trailing", 1, 1, 1, 30, context={"guidance_scale": 1.0}).save(
        run / "checkpoint" / "tuned-steps" / f"unipc_3-{steps}.json")
    studio = Studio([run], device="cpu", out_dir=tmp_path / "out")
    tuned = studio.generate(Request("digits", seed=0, n=2, method="unipc_3", steps=steps, spacing=AUTO_SPACING))
    assert tuned.records[0]["sigmas"] == pytest.approx(levels)
    assert all(np.array_equal(pixels(p), e) for p, e in zip(tuned.paths, cli_images(
        run, tmp_path, "--seed", "0", "--n", "2", "--method", "unipc_3", "--steps", str(steps))))
    named = studio.generate(Request("digits", seed=0, n=1, method="unipc_3", steps=steps, spacing="trailing"))
    assert named.records[0].get("sigmas") is None
    assert studio.settings_from_png(tuned.paths[1])["spacing"] == AUTO_SPACING  # finds the levels again
    assert studio.settings_from_png(named.paths[0])["spacing"] == "trailing"
    shutil.rmtree(run / "checkpoint" / "tuned-steps")
    assert studio.generate(Request("digits", n=1, method="unipc_3", steps=steps)).records[0].get("sigmas") is None


def test_progress_preview_and_cancel(studio):
    seen, previews = [], []
    studio.generate(Request("digits", n=1, steps=6, method="ddim"), progress=lambda i, n: seen.append((i, n)),
                    preview=lambda image, i, n: previews.append((image.size, i)), preview_every=2)
    assert seen == [(i, 6) for i in range(1, 7)]
    assert [i for _, i in previews] == [1, 3, 5, 6] and previews[0][0] == (128, 128)  # 8×8 enlarged 16×
    cancel = threading.Event()
    with pytest.raises(Cancelled):
        studio.generate(Request("digits", n=2, steps=6), progress=lambda i, n: cancel.set(), cancel=cancel)
    assert studio.generate(Request("digits", n=1, steps=2)).paths  # the slot is free again


def test_one_generation_at_a_time(studio):
    """Requests from several threads run one after another (the lock), each complete."""
    active, overlaps, results = [0], [], []

    def progress(i, n):
        overlaps.append(active[0])

    def one(seed):
        active[0] += 1
        try:
            results.append(studio.generate(Request("digits", seed=seed, n=2, steps=3), progress=progress))
        finally:
            active[0] -= 1

    threads = [threading.Thread(target=one, args=(s,)) for s in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(results) == 4 and all(len(r.paths) == 2 for r in results)


def test_img2img_and_inpaint_through_the_api(studio):
    image = Image.fromarray(np.random.default_rng(0).integers(0, 256, (8, 8), dtype=np.uint8))
    mask = Image.new("L", (8, 8), 0)
    mask.paste(255, (0, 0, 4, 8))  # repaint the left half
    edited = studio.generate(Request("digits", n=1, image=image, strength=0.5, steps=4))
    assert pixels(edited.paths[0]).shape == (8, 8)
    inpainted = studio.generate(Request("digits", n=2, image=image, mask=mask, inpaint="blend", steps=4))
    for path in inpainted.paths:
        assert np.array_equal(pixels(path)[:, 4:], np.asarray(image)[:, 4:])  # outside the mask: the input
    with pytest.raises(ValueError, match="inpainting mode 'model' is not available"):
        studio.generate(Request("digits", n=1, image=image, mask=mask, inpaint="model"))
    with pytest.raises(ValueError, match="the number of images must be 1 to 16"):
        studio.generate(Request("digits", n=17))
    with pytest.raises(ValueError, match="unknown class 'eleven'"):
        studio.generate(Request("digits", class_label="eleven"))


def test_model_card_and_metrics(studio):
    card = studio.card("digits")
    assert "10 classes" in card and "step 3" in card and "linear" in card
    assert len(studio.metrics("digits")) == 3
    assert studio.metrics_plot("digits") is not None
    assert studio.features("digits")["classes"][:2] == ["0", "1"]
    assert EVERY_CLASS not in studio.features("digits")["classes"]


def test_uploads_are_checked(tmp_path):
    good = png_bytes(Image.new("RGB", (16, 16), (10, 20, 30)))
    assert read_upload(good, 2**20).size == (16, 16)
    with pytest.raises(UploadError, match="limit is 1 MB"):
        read_upload(good + b"\0" * 2**20, 2**20)
    bomb = png_bytes(Image.new("L", (5000, 5000)))  # 25 megapixels in a few kilobytes
    assert len(bomb) < 2**20
    with pytest.raises(UploadError, match="decompression bomb"):
        read_upload(bomb, 2**20)
    with pytest.raises(UploadError, match="not an image"):
        read_upload(b"#!/bin/sh\nrm -rf /\n", 2**20)
    with pytest.raises(UploadError, match="damaged image"):
        read_upload(good[: len(good) // 2], 2**20)
    path = tmp_path / "upload.png"
    path.write_bytes(good)
    assert read_upload(path, 2**20).size == (16, 16)


def test_serve_flags_are_checked(run, capsys):
    for argv, message in ((["--auth", "nopassword"], "USER:PASSWORD"), (["--port", "0"], "--port must be"),
                          (["--max-upload-mb", "0"], "--max-upload-mb must be positive")):
        assert main(["serve", str(run), *argv]) == 2
        assert message in capsys.readouterr().err
    assert main(["serve", str(run.parent / "missing")]) == 2
    assert "missing" in capsys.readouterr().err


# -- the same flows through gradio_client ----------------------------------------------------------


@pytest.fixture(scope="module")
def server(studio):
    pytest.importorskip("gradio")
    from difflab.serve.app import build_app

    app = build_app(studio, queue_size=32)
    port = free_port()
    app.launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, ssr_mode=False, quiet=True,
               max_file_size=2**20)
    yield f"http://127.0.0.1:{port}/"
    app.close()


@pytest.fixture
def client(server):
    gradio_client = pytest.importorskip("gradio_client")
    return gradio_client.Client(server, verbose=False)


SETTINGS = dict(text="", negative="", label=EVERY_CLASS, method="unipc_3", steps=4, spacing="trailing", scale=1.0,
                rescale=0.0, seed=0, random=False, n=4)


def call(client, endpoint, *extra, **settings):
    values = {**SETTINGS, **settings}
    return client.predict("digits", *values.values(), *extra, api_name=endpoint)


def test_client_generates_what_the_cli_samples(client, run, tmp_path):
    _, gallery, status = call(client, "/generate")
    expected = cli_images(run, tmp_path, "--seed", "0", "--n", "4", "--steps", "4")
    assert len(gallery) == 4 and "4 images" in status
    assert np.array_equal(pixels(gallery[3]["image"]), expected[3])
    assert gallery[3]["caption"] == "3 · seed 3"
    record = json.loads(Image.open(gallery[3]["image"]).text["difflab"])  # the download carries the record
    assert record["seed"] == 3 and record["class"] == 3
    _, gallery, _ = call(client, "/generate", label="7", n=1)
    assert gallery[0]["caption"] == "7 · seed 0"


def test_client_restores_settings_from_a_png(client):
    from gradio_client import handle_file

    _, gallery, _ = call(client, "/generate", seed=11, n=2, method="ddim", steps=5, scale=2.5)
    restored = client.predict(handle_file(gallery[1]["image"]), api_name="/restore_png")
    model, prompt, negative, label, method, steps, spacing, scale, rescale, seed, n = restored
    assert (model, label, method, steps, seed, n, scale) == ("digits", "1", "ddim", 5, 12, 1, 2.5)


def test_client_inpaints_a_painted_mask(client, tmp_path):
    from gradio_client import handle_file

    image = Image.fromarray(np.random.default_rng(1).integers(0, 256, (8, 8, 3), dtype=np.uint8))
    image.save(tmp_path / "image.png")
    layer = Image.new("RGBA", (8, 8), (0, 0, 0, 0))
    layer.paste((255, 255, 255, 255), (4, 0, 8, 8))  # the brush painted the right half
    layer.save(tmp_path / "layer.png")
    editor = {"background": handle_file(str(tmp_path / "image.png")),
              "layers": [handle_file(str(tmp_path / "layer.png"))], "composite": None}
    _, gallery, _ = call(client, "/inpaint", editor, "blend", "whole", 32, 0, n=2)
    gray = np.asarray(image.convert("L"))
    for item in gallery:
        assert np.array_equal(pixels(item["image"])[:, :4], gray[:, :4])  # left half kept


def test_bad_uploads_are_one_clear_error_and_the_server_goes_on(client, tmp_path):
    from gradio_client import handle_file
    from gradio_client.exceptions import AppError

    bomb = tmp_path / "bomb.png"
    bomb.write_bytes(png_bytes(Image.new("L", (5000, 5000))))
    script = tmp_path / "script.png"
    script.write_bytes(b"#!/bin/sh\necho not an image\n")
    for file, message in ((bomb, "decompression bomb"), (script, "not an image")):
        with pytest.raises(AppError, match=message):
            call(client, "/img2img", handle_file(str(file)), 0.5, n=1)
    big = tmp_path / "big.png"
    big.write_bytes(png_bytes(Image.new("L", (8, 8))) + b"\0" * (2**20 + 10))
    with pytest.raises(Exception, match="(?i)file size|too large|exceed"):
        call(client, "/img2img", handle_file(str(big)), 0.5, n=1)
    # a path on the server instead of an upload is refused by the framework
    with pytest.raises(Exception, match="(?i)not allowed|cannot|denied|invalid|not.*upload|access"):
        call(client, "/img2img", {"path": "/etc/passwd", "meta": {"_type": "gradio.FileData"}}, 0.5, n=1)
    _, gallery, _ = call(client, "/generate", n=1)  # still serving
    assert len(gallery) == 1


def test_concurrent_clients_all_get_their_images(server):
    gradio_client = pytest.importorskip("gradio_client")
    results, errors = [], []

    def one(seed):
        try:
            client = gradio_client.Client(server, verbose=False)
            results.append(call(client, "/generate", seed=seed, n=4)[1])
        except Exception as err:  # noqa: BLE001 - collected and reported
            errors.append(err)

    threads = [threading.Thread(target=one, args=(s,)) for s in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=300)
    assert not errors and len(results) == 6 and all(len(g) == 4 for g in results)


def non_loopback_address() -> str | None:
    """This machine's address on its default route (a UDP connect sends nothing), if it has one."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            s.connect(("10.255.255.255", 1))
            address = s.getsockname()[0]
        except OSError:
            return None
    return None if address.startswith("127.") else address


def test_loopback_only_by_default(server):
    """The server bound to 127.0.0.1 is not reachable at this machine's other address."""
    port = int(server.rstrip("/").rsplit(":", 1)[1])
    address = non_loopback_address()
    if address is None:
        pytest.skip("this machine has no non-loopback IPv4 address")
    with socket.socket() as s:
        s.settimeout(2)
        assert s.connect_ex((address, port)) != 0
    with socket.socket() as s:
        s.settimeout(2)
        assert s.connect_ex(("127.0.0.1", port)) == 0  # while loopback is


def test_a_cancelled_job_frees_its_slot(client, studio, monkeypatch):
    """Stop ends a long generation at its next step: the device lock is released, nothing of it is
    written, and the next request is served."""
    import time

    step_callback = studio._step_callback

    def slow_device(*args):  # 50 ms a step, so the job is still running when it is cancelled
        callback = step_callback(*args)

        def slow(step):
            time.sleep(0.05)
            return callback(step)
        return slow

    monkeypatch.setattr(studio, "_step_callback", slow_device)
    before = set(studio.out_dir.rglob("*.png"))
    job = client.submit("digits", *{**SETTINGS, "steps": 90, "n": 16, "seed": 1000}.values(), api_name="/generate")
    deadline = time.monotonic() + 30
    while not studio._lock.locked():  # the job is sampling
        assert time.monotonic() < deadline, job.status()
        time.sleep(0.02)
    assert client.predict(api_name="/stop") == "stopping…"  # the page's Stop button, same session
    deadline = time.monotonic() + 30
    while studio._lock.locked():
        assert time.monotonic() < deadline, "the cancelled job still holds the device"
        time.sleep(0.02)
    assert not any("seed1000" in p.name for p in set(studio.out_dir.rglob("*.png")) - before)
    _, gallery, _ = call(client, "/generate", n=1)
    assert len(gallery) == 1


def test_auth_keeps_out_who_has_no_password(studio):
    gradio_client = pytest.importorskip("gradio_client")
    from difflab.commands.serve import parse_auth
    from difflab.serve.app import build_app

    app = build_app(studio)
    port = free_port()
    app.launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, ssr_mode=False, quiet=True,
               auth=parse_auth("ada:lovelace"))
    try:
        url = f"http://127.0.0.1:{port}/"
        with pytest.raises(Exception):  # noqa: B017 - any refusal: the page asks for a login
            gradio_client.Client(url, verbose=False).predict("digits", *SETTINGS.values(), api_name="/generate")
        with pytest.raises(Exception):  # noqa: B017
            gradio_client.Client(url, auth=("ada", "wrong"), verbose=False)
        client = gradio_client.Client(url, auth=("ada", "lovelace"), verbose=False)
        assert len(call(client, "/generate", n=1)[1]) == 1
    finally:
        app.close()
