"""The web page of ``difflab serve``: Gradio components wired to :class:`~.studio.Studio`.

The page has the settings every generation shares on top (model, prompt or class, sampler, seed,
guidance, number of images) and a tab per task: *Generate*, *Image to image*, *Inpaint* (the
brush of Gradio's image editor draws the mask), *Prompt-to-prompt* (a text model's edit of its
samples or of an uploaded picture) and *Model card*; one gallery below shows the
results, each a PNG with its generation record (its download carries it), and a live preview of
x̂₀ while the sampler runs. A difflab PNG dropped on "Restore from PNG" sets the fields it records.

The callbacks only translate between widgets and :class:`~.studio.Request`; the logic is in
:mod:`.studio`, tested without a browser. Gradio's frontend ships inside its wheel and the page is
served without server-side rendering (no Node), so nothing is fetched from the internet.
"""

from __future__ import annotations

import queue
import threading
import time

from .studio import AUTO_SPACING, EVERY_CLASS, Cancelled, Request, Studio
from .uploads import UploadError, read_upload

SPACINGS = ("trailing", "leading", "linspace", "log_snr", "karras", "generic")


EDITOR_SIDE = 384  # pixels: a small image is shown this big in the mask editor, so a brush can hit it


def enlarged(image):
    """``image`` enlarged by a whole factor (nearest neighbour) to about ``EDITOR_SIDE`` for painting."""
    from PIL import Image

    factor = max(1, EDITOR_SIDE // max(image.size))
    return image.resize((image.width * factor, image.height * factor), Image.NEAREST) if factor > 1 else image


def _mask_of(editor: dict | None, original: str | None, max_bytes: int):
    """(image, mask): the uploaded image (the editor's background when the request came without
    one, e.g. through the API) and, at its size, white where the brush painted on any layer."""
    from PIL import Image

    if not editor or editor.get("background") is None:
        raise UploadError("upload an image to inpaint, then paint the mask over it")
    image = read_upload(original or editor["background"], max_bytes, "the image")
    painted = Image.new("L", read_upload(editor["background"], max_bytes, "the image").size, 0)
    for layer in editor.get("layers") or []:
        alpha = read_upload(layer, max_bytes, "the mask").convert("RGBA").getchannel("A")
        painted.paste(255, mask=alpha.point(lambda a: 255 if a > 0 else 0))
    if painted.getbbox() is None:
        raise UploadError("paint the area to repaint with the brush (the mask is empty)")
    return image, painted.resize(image.size, Image.BOX)  # a partly painted pixel: partly repainted


def build_app(studio: Studio, queue_size: int = 16):
    """The Gradio Blocks of the page (call ``.launch()`` on it)."""
    import gradio as gr
    from PIL import Image

    from .uploads import MAX_PIXELS

    # Pillow's own bomb check, for what the framework decodes itself (the editor's layers): an error
    # from 2 × MAX_PIXELS instead of Pillow's default ~179 megapixels
    Image.MAX_IMAGE_PIXELS = MAX_PIXELS

    from ..sampling import SAMPLERS

    first = studio.names[0]
    features = studio.features(first)
    defaults = features["defaults"]

    with gr.Blocks(title="difflab") as app:
        gr.Markdown("## difflab — sample, edit and inspect diffusion models")
        with gr.Row():
            model = gr.Dropdown(studio.names, value=first, label="Model", elem_id="model")
            n = gr.Slider(1, studio.max_n, value=4, step=1, label="Images", elem_id="n")
            seed = gr.Number(0, precision=0, label="Seed (image k uses seed + k)", elem_id="seed")
            random_seed = gr.Checkbox(False, label="Random seed", elem_id="random-seed")
        with gr.Row():
            prompt = gr.Textbox(label="Prompt", visible=features["text"], elem_id="prompt")
            negative = gr.Textbox(label="Negative prompt", visible=features["text"], elem_id="negative-prompt")
            label = gr.Dropdown([EVERY_CLASS, *features["classes"]], value=EVERY_CLASS, label="Class",
                                visible=bool(features["classes"]), elem_id="class")
        with gr.Row():
            method = gr.Dropdown(sorted(SAMPLERS), value=defaults["method"], label="Sampler", elem_id="method")
            steps = gr.Slider(1, 200, value=defaults["steps"], step=1, label="Steps", elem_id="steps")
            spacing = gr.Dropdown([("auto (tuned levels, else the run's)", AUTO_SPACING), *SPACINGS],
                                  value=AUTO_SPACING, label="Spacing", elem_id="spacing")
            scale = gr.Slider(1.0, 15.0, value=defaults["guidance_scale"], step=0.5, label="Guidance scale",
                              elem_id="guidance-scale")
            rescale = gr.Slider(0.0, 1.0, value=0.0, step=0.05, label="Guidance rescale", elem_id="guidance-rescale")
        shared = [model, prompt, negative, label, method, steps, spacing, scale, rescale, seed, random_seed, n]

        with gr.Tabs():
            with gr.Tab("Generate", elem_id="tab-generate"):
                generate = gr.Button("Generate", variant="primary", elem_id="generate")
            with gr.Tab("Image to image", elem_id="tab-img2img", visible=features["img2img"]) as img2img_tab:
                with gr.Row():
                    init = gr.File(label="Upload an image", file_types=["image"], type="filepath",
                                   elem_id="init-image")
                    init_view = gr.Image(label="Image", interactive=False, height=200, elem_id="init-view")
                strength = gr.Slider(0.0, 1.0, value=0.6, step=0.05, label="Strength", elem_id="strength")
                img2img = gr.Button("Generate from image", variant="primary", elem_id="img2img")
            with gr.Tab("Inpaint", elem_id="tab-inpaint"):
                with gr.Row():
                    inpaint_file = gr.File(label="Upload an image", file_types=["image"], type="filepath",
                                           elem_id="inpaint-image")
                    # the editor takes its image from the checked upload only (sources=()): paint the mask on it
                    editor = gr.ImageEditor(type="filepath", label="Paint what to repaint", sources=(),
                                            brush=gr.Brush(colors=["#ffffff"], color_mode="fixed"),
                                            layers=False, elem_id="inpaint-editor")
                with gr.Row():
                    mode = gr.Radio(list(features["inpaint_modes"]), value="blend", label="Mode",
                                    elem_id="inpaint-mode")
                    area = gr.Radio(["whole", "masked"], value="whole", label="Inpaint area", elem_id="inpaint-area")
                    padding = gr.Slider(0, 128, value=32, step=4, label="Only-masked padding", elem_id="padding")
                    blur = gr.Slider(0, 16, value=0, step=1, label="Mask blur", elem_id="mask-blur")
                inpaint = gr.Button("Inpaint", variant="primary", elem_id="inpaint")
                inpaint_original = gr.State(None)  # the checked upload, at its own size
            with gr.Tab("Prompt-to-prompt", elem_id="tab-p2p", visible=features["text"]) as p2p_tab:
                edit_prompt = gr.Textbox(label="Edited prompt (the prompt above with words changed)",
                                         elem_id="edit-prompt")
                with gr.Row():
                    cross = gr.Slider(0.0, 1.0, value=0.8, step=0.05, label="Cross-attention steps",
                                      elem_id="cross-replace")
                    self_ = gr.Slider(0.0, 1.0, value=0.4, step=0.05, label="Self-attention steps",
                                      elem_id="self-replace")
                    feature = gr.Slider(0.0, 1.0, value=0.2, step=0.05, label="Feature steps (U-Net; 0 on a DiT)",
                                        elem_id="feature-replace")
                with gr.Row():
                    p2p_file = gr.File(label="Optional: a picture to edit (the prompt describes it)",
                                       file_types=["image"], type="filepath", elem_id="p2p-image")
                    p2p_view = gr.Image(label="Picture", interactive=False, height=200, elem_id="p2p-view")
                p2p = gr.Button("Edit", variant="primary", elem_id="p2p")
            with gr.Tab("Model card", elem_id="tab-card"):
                card = gr.Markdown(studio.card(first), elem_id="card")
                plot = gr.Plot(studio.metrics_plot(first), label="Training metrics", elem_id="metrics")
            with gr.Tab("Restore from PNG", elem_id="tab-png"):
                png = gr.File(file_types=[".png"], label="Drop a difflab PNG: its settings fill the fields",
                              elem_id="png-drop")

        with gr.Row():
            stop = gr.Button("Stop", variant="stop", elem_id="stop")
            status = gr.Markdown("", elem_id="status")
        with gr.Row():
            preview = gr.Image(label="x̂₀ preview", interactive=False, height=160, elem_id="preview")
            gallery = gr.Gallery(label="Images", columns=4, format="png", elem_id="gallery")

        def request_of(values: list, **extra) -> Request:
            (name, text, negative_text, class_label, method_, steps_, spacing_, scale_, rescale_, seed_,
             random_, n_) = values
            return Request(model=name, prompt=text or "", negative_prompt=negative_text or "",
                           class_label=class_label, method=method_, steps=int(steps_), spacing=spacing_,
                           guidance_scale=float(scale_), guidance_rescale=float(rescale_),
                           seed=-1 if random_ else int(seed_ or 0), n=int(n_), **extra)

        running: dict[str, threading.Event] = {}  # a browser session's generation → its cancel flag

        def stream(request: Request, progress: gr.Progress, session: gr.Request | None, edit: dict | None = None):
            """Run the request (with ``edit``: a prompt-to-prompt edit, :meth:`Studio.edit`'s keywords)
            in a worker thread; yield previews, then the gallery. Stop (from the same session) sets
            the cancel flag: the worker stops at its next step."""
            events: queue.Queue = queue.Queue()
            cancel = threading.Event()
            key = getattr(session, "session_hash", None) or "?"
            running[key] = cancel

            def work():
                try:
                    hooks = dict(progress=lambda i, k: events.put(("progress", i, k)),
                                 preview=lambda image, i, k: events.put(("preview", image, i, k)), cancel=cancel)
                    result = (studio.edit(request, **edit, **hooks) if edit is not None else
                              studio.generate(request, **hooks))
                    events.put(("done", result))
                except Exception as err:  # noqa: BLE001 - shown on the page, the server goes on
                    events.put(("error", err))

            threading.Thread(target=work, daemon=True).start()
            try:
                while True:
                    event = events.get()
                    if event[0] == "progress":
                        progress((event[1], event[2]), desc="sampling")
                    elif event[0] == "preview":
                        yield event[1], gr.skip(), f"step {event[2]} of {event[3]}"
                    elif event[0] == "done":
                        result = event[1]
                        gallery_value = [(str(p), c) for p, c in zip(result.paths, result.captions)]
                        yield gr.skip(), gallery_value, (f"{len(result.paths)} images in {result.seconds:.1f} s "
                                                         f"at {time.strftime('%H:%M:%S')}; seeds "
                                                         f"{result.records[0]['seed']}…{result.records[-1]['seed']}")
                        return
                    else:
                        err = event[1]
                        if isinstance(err, Cancelled):
                            yield gr.skip(), gr.skip(), "cancelled"
                            return
                        raise gr.Error(str(err))
            finally:
                cancel.set()  # the page went away or Stop was pressed: the worker stops at its next step
                if running.get(key) is cancel:
                    del running[key]

        # Gradio passes the request (for the session) and the progress bar by parameter annotation and
        # default, so the handlers name every input: the twelve shared settings first.
        def on_generate(m, p, q, c, s_, k, sp, g, r, sd, rs, n_, session: gr.Request = None,
                        progress=gr.Progress()):  # noqa: B008 - Gradio's way
            yield from stream(request_of([m, p, q, c, s_, k, sp, g, r, sd, rs, n_]), progress, session)

        def on_img2img(m, p, q, c, s_, k, sp, g, r, sd, rs, n_, image, strength_, session: gr.Request = None,
                       progress=gr.Progress()):  # noqa: B008 - Gradio's way
            if not image:
                raise gr.Error("upload an image first")
            try:
                picture = read_upload(image, studio.max_upload_bytes, "the image")
            except UploadError as err:
                raise gr.Error(str(err)) from None
            request = request_of([m, p, q, c, s_, k, sp, g, r, sd, rs, n_], image=picture, strength=float(strength_))
            yield from stream(request, progress, session)

        def on_inpaint(m, p, q, c, s_, k, sp, g, r, sd, rs, n_, editor_value, original, mode_, area_, padding_, blur_,
                       session: gr.Request = None, progress=gr.Progress()):  # noqa: B008 - Gradio's way
            try:
                picture, mask = _mask_of(editor_value, original, studio.max_upload_bytes)
            except UploadError as err:
                raise gr.Error(str(err)) from None
            request = request_of([m, p, q, c, s_, k, sp, g, r, sd, rs, n_], image=picture, mask=mask, strength=1.0,
                                 inpaint=mode_, inpaint_area=area_, inpaint_padding=int(padding_),
                                 mask_blur=float(blur_))
            yield from stream(request, progress, session)

        def on_p2p(m, p, q, c, s_, k, sp, g, r, sd, rs, n_, edit_text, cross_, self_value, feature_, image,
                   session: gr.Request = None, progress=gr.Progress()):  # noqa: B008 - Gradio's way
            picture = None
            if image:
                try:
                    picture = read_upload(image, studio.max_upload_bytes, "the picture")
                except UploadError as err:
                    raise gr.Error(str(err)) from None
            request = request_of([m, p, q, c, s_, k, sp, g, r, sd, rs, n_], image=picture)
            edit = dict(edit_prompt=edit_text or "", cross_replace=float(cross_), self_replace=float(self_value),
                        feature_replace=float(feature_))
            yield from stream(request, progress, session, edit)

        def checked_upload(file):
            """An upload shown back once it passed the checks (else the page shows why not)."""
            if file is None:
                return None
            try:
                return read_upload(file, studio.max_upload_bytes, "the image").convert("RGB")
            except UploadError as err:
                raise gr.Error(str(err)) from None

        init.upload(checked_upload, init, init_view, queue=False, api_name=False)
        p2p_file.upload(checked_upload, p2p_file, p2p_view, queue=False, api_name=False)

        def to_editor(file):
            image = checked_upload(file)
            if image is None:
                return None, None
            shown = enlarged(image)
            return {"background": shown, "layers": [], "composite": shown}, file

        inpaint_file.upload(to_editor, inpaint_file, [editor, inpaint_original], queue=False, api_name=False)

        outputs = [preview, gallery, status]
        generate.click(on_generate, shared, outputs, concurrency_limit=1, concurrency_id="device",
                       api_name="generate")
        img2img.click(on_img2img, [*shared, init, strength], outputs, concurrency_limit=1, concurrency_id="device",
                      api_name="img2img")
        inpaint.click(on_inpaint, [*shared, editor, inpaint_original, mode, area, padding, blur], outputs,
                      concurrency_limit=1, concurrency_id="device", api_name="inpaint")
        p2p.click(on_p2p, [*shared, edit_prompt, cross, self_, feature, p2p_file], outputs, concurrency_limit=1,
                  concurrency_id="device", api_name="edit")

        def on_stop(session: gr.Request = None):  # Gradio fills it; the default keeps its argument check quiet
            cancel = running.get(getattr(session, "session_hash", None) or "?")
            if cancel is None:
                return "nothing is running"
            cancel.set()
            return "stopping…"

        stop.click(on_stop, None, status, queue=False, api_name="stop")

        def on_model(name):
            f = studio.features(name)
            d = f["defaults"]
            return (gr.update(visible=f["text"]), gr.update(visible=f["text"]),
                    gr.update(choices=[EVERY_CLASS, *f["classes"]], value=EVERY_CLASS, visible=bool(f["classes"])),
                    d["method"], d["steps"], AUTO_SPACING, d["guidance_scale"], gr.update(visible=f["img2img"]),
                    gr.update(choices=list(f["inpaint_modes"]), value="blend"), studio.card(name),
                    studio.metrics_plot(name), gr.update(visible=f["text"]))

        model.change(on_model, model, [prompt, negative, label, method, steps, spacing, scale, img2img_tab, mode,
                                       card, plot, p2p_tab], queue=False, api_name="select_model")

        def on_png(file):
            if file is None:
                return [gr.skip()] * 11
            try:
                settings = studio.settings_from_png(file)
            except (UploadError, ValueError) as err:
                raise gr.Error(str(err)) from None
            return (settings.get("model", gr.skip()), settings["prompt"], settings["negative_prompt"],
                    settings["class_label"], settings["method"], settings["steps"], settings["spacing"],
                    settings["guidance_scale"] or 1.0, settings["guidance_rescale"], settings["seed"], 1)

        png.upload(on_png, png, [model, prompt, negative, label, method, steps, spacing, scale, rescale, seed, n],
                   queue=False, api_name="restore_png")
    app.queue(max_size=queue_size, default_concurrency_limit=1)
    return app

