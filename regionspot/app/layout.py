"""The page: Gradio components and the events that join them to `regions` and `recognition`.

Each handler is a module-level function over plain values, so that tests call it as the page does; a refused
input (`InputError`, or the predictor's ValueError/TypeError) becomes a `gr.Error` the page shows, and a note
(SAM found nothing) a `gr.Warning`; both popups render HTML, so their text is escaped (`<region1>` stays readable).
"""

from __future__ import annotations

import functools
import html
from collections.abc import Callable
from typing import Any

import gradio as gr
import numpy as np
import pandas as pd

from regionspot.app.models import ModelChoice, Sample, read_category_names
from regionspot.app.recognition import CAPTION_HEADERS, TABLE_HEADERS, Recognizer, Shown, parse_vocabulary
from regionspot.app.regions import (
    CLICK_MODES,
    InputError,
    Regions,
    add_click,
    draw_prompts,
    format_boxes,
    parse_boxes,
    parse_points,
    parse_regions,
    read_image_file,
)
from regionspot.config import MaskGeneratorSettings

TITLE = "RegionSpot: name any region"
# System fonts only: the page loads nothing from outside the machine it is served from.
THEME = gr.themes.Default(font=["ui-sans-serif", "system-ui", "sans-serif"], font_mono=["ui-monospace", "monospace"])
HOW_TO = (
    "Upload an image or pick a sample. Click two opposite corners of a box on it (or points on and off an object), "
    "or type boxes as `x1, y1, x2, y2`, one per line. Each box is a region; all points together are one more."
)


def as_page_text(message: str) -> str:
    """A message as Gradio's popups show it: they render HTML, which would swallow `<region1>` as a tag."""
    return html.escape(message, quote=False)


def refusals_shown(function: Callable) -> Callable:
    """Run a handler; show a refused input as the page's error message instead of a server traceback."""

    @functools.wraps(function)
    def shown(*args: Any, **kwargs: Any) -> Any:
        try:
            return function(*args, **kwargs)
        except (ValueError, TypeError, FileNotFoundError) as err:  # InputError is a ValueError
            # The app's own refusals need no traceback in the log; the predictor's are kept there, for the record.
            raise gr.Error(as_page_text(str(err)), print_exception=not isinstance(err, InputError)) from err

    return shown


def _with_notes(shown: Shown, headers: list[str]) -> tuple[np.ndarray, pd.DataFrame]:
    for note in shown.notes:
        gr.Warning(as_page_text(note))
    return np.asarray(shown.picture), pd.DataFrame(shown.rows, columns=headers)


@refusals_shown
def load_upload(path: str | None) -> tuple:
    """A file uploaded -> the image, the canvas showing it, no regions yet."""
    if path is None:
        return None, None, "", "", None
    image = read_image_file(path)
    return image, image, "", "", None


@refusals_shown
def load_sample(name: str | None, samples: dict[str, Sample]) -> tuple:
    """A sample picked -> the image, the canvas with the sample's boxes (if any), those boxes as text."""
    if not name:
        return gr.skip(), gr.skip(), gr.skip(), gr.skip(), gr.skip()
    if name not in samples:
        raise InputError(f"no sample is called {name!r}: pick one of {', '.join(samples)}")
    image = samples[name].load()
    boxes = samples[name].boxes
    return image, draw_prompts(image, Regions(boxes=boxes)), format_boxes(boxes), "", None


@refusals_shown
def click(image: np.ndarray | None, boxes: str, points: str, corner: list | None, mode: str, evt: gr.SelectData):
    """A click on the canvas at `evt.index` (x, y in the image's pixels) -> a corner, a box or a point added."""
    if image is None:
        raise InputError("no image: upload one or pick a sample first")
    x, y = (int(v) for v in evt.index)
    boxes, points, corner = add_click(boxes, points, corner, x, y, mode=mode)
    return _canvas(image, boxes, points, corner), boxes, points, corner


def preview(image: np.ndarray | None, boxes: str, points: str, corner: list | None):
    """The canvas redrawn after the region text was edited; left as it is while the text does not parse."""
    if image is None:
        return gr.skip()
    try:
        return _canvas(image, boxes, points, corner)
    except InputError:
        return gr.skip()  # half-typed: the error is shown when the regions are used


def clear_regions(image: np.ndarray | None) -> tuple:
    return image, "", "", None


@refusals_shown
def recognise(recognizer: Recognizer, image, boxes: str, points: str, vocabulary: str, top_k: float):
    regions, names = parse_regions(boxes, points), parse_vocabulary(vocabulary)
    return _with_notes(recognizer.recognise(image, regions, names, top_k=int(top_k)), TABLE_HEADERS)


@refusals_shown
def segment_everything(
    recognizer: Recognizer, image, vocabulary: str, top_k: float, points_per_side: float, iou: float, stability: float
):
    shown = recognizer.segment_everything(
        image, parse_vocabulary(vocabulary), top_k=int(top_k), points_per_side=int(points_per_side),
        pred_iou_thresh=float(iou), stability_score_thresh=float(stability),
    )  # fmt: skip
    return _with_notes(shown, TABLE_HEADERS)


@refusals_shown
def describe(recognizer: Recognizer, image, boxes: str, points: str, vocabulary: str):
    shown = recognizer.describe(image, parse_regions(boxes, points), parse_vocabulary(vocabulary))
    return _with_notes(shown, CAPTION_HEADERS)


@refusals_shown
def ask(recognizer: Recognizer, image, boxes: str, question: str):
    answer, picture = recognizer.ask(image, Regions(boxes=parse_boxes(boxes)), question)
    return answer, np.asarray(picture)


@refusals_shown
def pick_list(name: str | None, lists: dict[str, Callable[[], list]]) -> str:
    """A vocabulary list picked -> its names in the vocabulary box."""
    if not name:
        return gr.skip()
    return ", ".join(lists[name]())


@refusals_shown
def names_from_file(path: str | None, style: str) -> str:
    """An annotation file uploaded -> its category names in the vocabulary box."""
    if path is None:
        return gr.skip()
    return ", ".join(read_category_names(path, style=style))


def _canvas(image: np.ndarray, boxes: str, points: str, corner: list | None) -> np.ndarray:
    point_list, labels = parse_points(points)
    return draw_prompts(image, Regions(parse_boxes(boxes), point_list, labels), corner)


def build_app(
    recognizer: Recognizer,
    choice: ModelChoice,
    *,
    vocabulary: list[str],
    vocabulary_lists: dict[str, Callable[[], list]],
    samples: dict[str, Sample],
) -> gr.Blocks:
    """The page for `recognizer`'s model, described by `choice`; starts with `vocabulary`."""
    yes = {True: "yes", False: "no"}
    heads = f"Captions: {yes[recognizer.has_captioner]}. Questions: {yes[recognizer.has_vqa]}."
    with gr.Blocks(title="RegionSpot", analytics_enabled=False) as app:
        gr.Markdown(f"# {TITLE}\n{choice.description} {heads}\n\n{HOW_TO}", elem_id="model-description")
        image, corner = gr.State(None), gr.State(None)
        with gr.Row():
            with gr.Column():
                upload = gr.File(label="Upload an image", file_types=["image"], type="filepath", elem_id="upload")
                sample = gr.Dropdown(list(samples), value=None, label="…or pick a sample", elem_id="sample")
                canvas = gr.Image(
                    label="Click to add regions", interactive=False, type="numpy", format="png", elem_id="canvas"
                )
                mode = gr.Radio(list(CLICK_MODES), value=CLICK_MODES[0], label="A click adds", elem_id="mode")
                boxes = gr.Textbox(label="Boxes: x1, y1, x2, y2 in pixels, one per line", lines=3, elem_id="boxes")
                points = gr.Textbox(
                    label="Points: x, y, 1 (on the object) or 0 (off it), one per line; together one region",
                    lines=2,
                    elem_id="points",
                )
                clear = gr.Button("Clear regions", elem_id="clear")
            with gr.Column():
                names = gr.Textbox(
                    ", ".join(vocabulary), label="Vocabulary: class names, comma-separated", lines=2, elem_id="vocab"
                )
                with gr.Row():
                    listed = gr.Dropdown(list(vocabulary_lists), value=None, label="…or pick a list", elem_id="lists")
                    names_file = gr.File(
                        label="…or the names of a COCO / LVIS annotation file", file_types=[".json"], type="filepath"
                    )
                with gr.Tabs():
                    with gr.Tab("Recognise", elem_id="tab-recognise"):
                        _recognise_tab(recognizer, image, boxes, points, names)
                    with gr.Tab("Describe", elem_id="tab-describe"):
                        _describe_tab(recognizer, image, boxes, points, names)
                    with gr.Tab("Ask", elem_id="tab-ask"):
                        _ask_tab(recognizer, image, boxes)
        loaded = [image, canvas, boxes, points, corner]
        upload.upload(load_upload, upload, loaded)
        sample.input(functools.partial(load_sample, samples=samples), sample, loaded)
        canvas.select(click, [image, boxes, points, corner, mode], [canvas, boxes, points, corner])
        for field in (boxes, points):
            field.blur(preview, [image, boxes, points, corner], canvas)
            field.submit(preview, [image, boxes, points, corner], canvas)
        clear.click(clear_regions, image, [canvas, boxes, points, corner])
        listed.input(functools.partial(pick_list, lists=vocabulary_lists), listed, names)
        style = choice.config.clip.class_names
        names_file.upload(functools.partial(names_from_file, style=style), names_file, names)
    return app


def _recognise_tab(recognizer: Recognizer, image, boxes, points, names) -> None:
    top_k = gr.Slider(1, 10, value=3, step=1, label="Labels per region", elem_id="top-k")
    with gr.Row():
        run = gr.Button("Recognise", variant="primary", elem_id="recognise")
        everything = gr.Button("Segment everything", elem_id="everything")
    with gr.Accordion("Segment everything: SAM's automatic mask generator", open=False):
        defaults = MaskGeneratorSettings()
        per_side = gr.Slider(
            4, 64, value=defaults.points_per_side, step=1, label="Points per side (the point grid SAM is prompted with)"
        )
        iou = gr.Slider(
            0.0, 1.0, value=defaults.pred_iou_thresh, step=0.01, label="Keep masks whose predicted IoU is above"
        )
        stability = gr.Slider(
            0.0, 1.0, value=defaults.stability_score_thresh, step=0.01, label="Keep masks whose stability is above"
        )
    picture = gr.Image(label="SAM's masks and the top labels", interactive=False, format="png", elem_id="picture")
    table = gr.Dataframe(headers=TABLE_HEADERS, interactive=False, label="Regions", elem_id="labels")
    run.click(functools.partial(recognise, recognizer), [image, boxes, points, names, top_k], [picture, table])
    everything.click(
        functools.partial(segment_everything, recognizer),
        [image, names, top_k, per_side, iou, stability],
        [picture, table],
    )


def _describe_tab(recognizer: Recognizer, image, boxes, points, names) -> None:
    if not recognizer.has_captioner:
        gr.Markdown(
            "This model has no captioner (its config has no `caption:` section). Serve a captioning run's "
            "`adapter.yaml`, e.g. the built-in demo's, to describe regions in words.",
            elem_id="no-captioner",
        )
        return
    run = gr.Button("Describe the regions", variant="primary", elem_id="describe")
    picture = gr.Image(label="Captions", interactive=False, format="png", elem_id="caption-picture")
    table = gr.Dataframe(headers=CAPTION_HEADERS, interactive=False, label="Captions", elem_id="captions")
    run.click(functools.partial(describe, recognizer), [image, boxes, points, names], [picture, table])


def _ask_tab(recognizer: Recognizer, image, boxes) -> None:
    if not recognizer.has_vqa:
        gr.Markdown(
            "This model has no VQA head (its config has no `vqa:` section). Serve a VQA run's `adapter.yaml`, "
            "e.g. the built-in demo's, to ask about regions.",
            elem_id="no-vqa",
        )
        return
    question = gr.Textbox(
        label="Question: <region1> is the first box, <region2> the second", elem_id="question",
        placeholder="is <region1> left of <region2>?",
    )  # fmt: skip
    run = gr.Button("Ask", variant="primary", elem_id="ask")
    answer = gr.Textbox(label="Answer", interactive=False, elem_id="answer")
    picture = gr.Image(label="The boxes the question names", interactive=False, format="png", elem_id="ask-picture")
    run.click(functools.partial(ask, recognizer), [image, boxes, question], [answer, picture])
    question.submit(functools.partial(ask, recognizer), [image, boxes, question], [answer, picture])
