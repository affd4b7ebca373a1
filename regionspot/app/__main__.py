"""Serve the web app: {prog} [--config MODEL.yaml or NAME] [--adapter ADAPTER.safetensors] [--port 7860]

With no --config it serves the built-in demo's trained model when outputs/demo/train/adapter.yaml exists (run
`python -m regionspot.demo` first), else tiny random backbones, and says which. It listens on 127.0.0.1 unless
--host says otherwise, and loads nothing from outside the machine.
"""

from __future__ import annotations

import os
from pathlib import Path

from regionspot.app import DEMO_DIR
from regionspot.commands import argument_parser


def main(argv: list[str] | None = None) -> None:
    parser = argument_parser("regionspot.app", __doc__)
    parser.add_argument(
        "--config", help="model YAML (a training run's adapter.yaml), or a packaged model config's name (tiny, ...)"
    )
    parser.add_argument("--adapter", help="trained adapter weights (.safetensors); overrides the YAML's")
    parser.add_argument(
        "--categories", action="append", default=[], metavar="ANN.json",
        help="a COCO/LVIS annotation file whose class names the page offers as a list (e.g. lvis_v1_val.json); "
        "repeatable",
    )  # fmt: skip
    parser.add_argument("--demo-dir", default=str(DEMO_DIR), help="where the built-in demo wrote its outputs")
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (0.0.0.0: every interface)")
    parser.add_argument("--port", type=int, default=7860)
    args = parser.parse_args(argv)
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # never phone home
    from regionspot.app.models import choose_model, default_vocabulary, samples, vocabulary_lists

    try:
        choice = choose_model(args.config, args.adapter, demo_dir=Path(args.demo_dir))
    except (OSError, ValueError, TypeError) as err:
        raise SystemExit(f"error: {err}") from err
    print(f"regionspot app: serving {choice.summary}", flush=True)
    from regionspot import RegionSpotPredictor, build_regionspot
    from regionspot.app.layout import THEME, build_app
    from regionspot.app.recognition import Recognizer

    try:
        recognizer = Recognizer(RegionSpotPredictor(build_regionspot(choice.config)))
    except (OSError, ValueError, TypeError) as err:
        raise SystemExit(f"error: {err}") from err
    app = build_app(
        recognizer,
        choice,
        vocabulary=default_vocabulary(choice),
        vocabulary_lists=vocabulary_lists(choice, args.categories),
        samples=samples(choice),
    )
    app.queue(default_concurrency_limit=1)  # one predictor: requests take turns
    # quiet: Gradio's start-up lines include "To create a public link, set `share=True`", advice for an app that
    # never shares; its only switch also hides the URL line, which is printed here instead.
    app.launch(
        server_name=args.host, server_port=args.port, theme=THEME, ssr_mode=False, share=False, quiet=True,
        prevent_thread_lock=True,
    )  # fmt: skip
    print(f"regionspot app: open {app.local_url} in a browser (Ctrl+C stops it)", flush=True)
    app.block_thread()


if __name__ == "__main__":
    main()
