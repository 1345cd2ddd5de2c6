"""The web page's Prompt-to-prompt tab: :meth:`Studio.edit` (the Python API behind it) and the same
edit through gradio_client against a server on a loopback port, on a tiny MiniLM text run."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from difflab.editing import prompt_to_prompt
from difflab.pipelines import DiffusionModel, Guidance, generate
from difflab.serve.studio import Request, Studio
from helpers import free_port, minilm_text_run

PROMPT, EDIT = "a photo of a sneaker", "a photo of a sandal"


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    return minilm_text_run(tmp_path_factory.mktemp("serve-edit"))


@pytest.fixture(scope="module")
def studio(run, tmp_path_factory):
    return Studio([run], device="cpu", out_dir=tmp_path_factory.mktemp("out"), max_upload_bytes=2**20)


def pixels(path) -> np.ndarray:
    return np.asarray(Image.open(path))


def test_edit_gives_the_pairs_prompt_to_prompt_gives(studio, run):
    request = Request(studio.names[0], prompt=PROMPT, n=2, seed=3, steps=4, guidance_scale=2.0)
    steps_seen = []
    result = studio.edit(request, EDIT, progress=lambda i, k: steps_seen.append((i, k)))
    sources, edits, _ = prompt_to_prompt(DiffusionModel.load(run), PROMPT, EDIT, n=2, seed=3, steps=4,
                                         guidance=Guidance(scale=2.0))
    assert len(result.paths) == 4 and result.captions[1] == f"{EDIT} · seed 3"
    for i in range(2):
        assert np.array_equal(pixels(result.paths[2 * i]), sources[i, 0].numpy())
        assert np.array_equal(pixels(result.paths[2 * i + 1]), edits[i, 0].numpy())
    record = json.loads(Image.open(result.paths[1]).text["difflab"])
    assert record["prompt_to_prompt"]["role"] == "edit" and record["prompt_to_prompt"]["source_prompt"] == PROMPT
    assert steps_seen[-1] == (4, 4)


def test_edit_of_an_uploaded_picture(studio, run):
    model = DiffusionModel.load(run)
    image, _ = generate(model, 1, method="ddim", steps=4, prompts=[PROMPT], guidance=Guidance(scale=1.0))
    picture = Image.fromarray(image[0, 0].numpy())
    result = studio.edit(Request(studio.names[0], prompt=PROMPT, n=1, steps=4, guidance_scale=2.0, image=picture,
                                 method="unipc_3"), EDIT)  # an upload is edited with DDIM, its inversion's walk
    assert len(result.paths) == 2
    record = json.loads(Image.open(result.paths[0]).text["difflab"])
    assert record["prompt_to_prompt"]["real_image"] is True and record["method"] == "ddim"


class FakeStudio:
    """A studio whose one run is class-conditional (what the page's features say of it)."""

    def features(self, name):
        return {"text": False}


def test_bad_edit_requests_are_one_clear_error(studio):
    with pytest.raises(ValueError, match="edited prompt"):
        studio.edit(Request(studio.names[0], prompt=PROMPT, steps=4), "")
    with pytest.raises(ValueError, match="not a text model"):
        Studio.edit(FakeStudio(), Request("digits", prompt=PROMPT), EDIT)


def test_the_page_edits_through_the_api(studio):
    pytest.importorskip("gradio")
    gradio_client = pytest.importorskip("gradio_client")
    from difflab.serve.app import build_app

    app = build_app(studio)
    port = free_port()
    app.launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, ssr_mode=False, quiet=True)
    try:
        client = gradio_client.Client(f"http://127.0.0.1:{port}/", verbose=False)
        settings = [studio.names[0], PROMPT, "", None, "ddim", 4, "trailing", 2.0, 0.0, 5, False, 1]
        _, gallery, status = client.predict(*settings, EDIT, 0.8, 0.4, 0.2, None, api_name="/edit")
        assert len(gallery) == 2 and "2 images" in status
        assert gallery[1]["caption"] == f"{EDIT} · seed 5"
        model = studio.pipeline(studio.names[0]).model
        _, edits, _ = prompt_to_prompt(model, PROMPT, EDIT, n=1, seed=5, steps=4, spacing="trailing",
                                       guidance=Guidance(scale=2.0))
        assert torch.equal(torch.from_numpy(pixels(gallery[1]["image"]).copy()), edits[0, 0])
    finally:
        app.close()
