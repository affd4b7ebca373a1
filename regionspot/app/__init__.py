"""The web app: point at regions of an image in a browser and see what the model names them.

    python -m regionspot.app [--config MODEL.yaml] [--adapter ADAPTER.safetensors] [--port 7860]

`regions` reads the boxes and points a user types or clicks, `recognition` runs the predictor and draws what it
says, `models` chooses the model and its vocabulary lists, `layout` is the Gradio page over them (docs/app.md).
"""

from pathlib import Path

DEMO_DIR = Path("outputs/demo")  # where `python -m regionspot.demo` writes, from the folder it runs in
