"""``difflab serve RUN [RUN ...]``: the web UI (Gradio), on this machine only unless told otherwise.

    difflab serve runs/demo-digits                       # http://127.0.0.1:7860
    difflab serve runs/sd15 runs/fashion-mnist-16-cfg --auth me:secret --host 0.0.0.0

The page and its safety rules: docs/ui.md; the logic behind it: :mod:`difflab.serve.studio`.
"""

from __future__ import annotations

import argparse


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "serve", help="the web UI: generate, image to image, inpaint, model cards, in a browser",
        description="Serve a web page (Gradio; its frontend ships in the wheel, nothing is fetched) to sample from "
        "the given runs, edit uploaded images and inspect each run. It listens on 127.0.0.1 unless --host says "
        "otherwise; uploads are the only files the page can send (size-limited, decoded with a decompression-bomb "
        "guard); requests queue and run one at a time per device; a generation can be stopped.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("runs", nargs="+", metavar="RUN", help="diffusion runs to offer (each under its folder name)")
    p.add_argument("--host", default="127.0.0.1",
                   help="address to listen on; anything but loopback makes the page reachable from other machines "
                        "(a warning is printed; use --auth then)")
    p.add_argument("--port", type=int, default=7860, help="port to listen on")
    p.add_argument("--auth", metavar="USER:PASSWORD", help="ask for this user name and password before the page")
    p.add_argument("--max-upload-mb", type=float, default=10.0, help="largest upload accepted, in megabytes")
    p.add_argument("--queue", type=int, default=16,
                   help="how many requests may wait; more get a 'queue full' message instead of waiting")
    p.add_argument("--max-n", type=int, default=16, help="the most images one request may ask for")
    p.add_argument("--device", default="auto", help="auto, cpu or cuda")
    p.add_argument("--out", metavar="DIR", help="keep the generated PNGs here (default: a temporary folder)")
    p.set_defaults(func=run)


def parse_auth(auth: str | None) -> tuple[str, str] | None:
    if auth is None:
        return None
    user, sep, password = auth.partition(":")
    if not sep or not user or not password:
        raise ValueError("--auth takes USER:PASSWORD, both non-empty")
    return user, password


def run(args) -> int:
    import sys

    from ..serve.app import build_app
    from ..serve.studio import Studio

    auth = parse_auth(args.auth)
    for name, value, low in (("--port", args.port, 1), ("--queue", args.queue, 1), ("--max-n", args.max_n, 1)):
        if value < low:
            raise ValueError(f"{name} must be at least {low}, got {value}")
    if not args.max_upload_mb > 0:
        raise ValueError(f"--max-upload-mb must be positive, got {args.max_upload_mb}")
    if args.host not in ("127.0.0.1", "localhost", "::1"):
        print(f"difflab serve: warning: listening on {args.host}: other machines can reach the page"
              + ("" if auth else " and nothing asks for a password (--auth USER:PASSWORD)"), file=sys.stderr)
    studio = Studio(args.runs, device=args.device, out_dir=args.out, max_n=args.max_n,
                    max_upload_bytes=int(args.max_upload_mb * 2**20))
    app = build_app(studio, queue_size=args.queue)
    print(f"difflab serve: {', '.join(studio.names)} on http://{args.host}:{args.port}", flush=True)
    app.launch(server_name=args.host, server_port=args.port, auth=auth, max_file_size=int(args.max_upload_mb * 2**20),
               ssr_mode=False, show_error=True, quiet=True, footer_links=[])
    return 0
