"""The web app without a browser: the regions a user types or clicks, what each button returns, the model the app
chooses, and the messages it gives for a wrong file, an empty vocabulary or no region (tests/test_app_browser.py
drives the page itself)."""

from __future__ import annotations

import importlib.metadata
import json
import shutil
from html.parser import HTMLParser
from pathlib import Path

import gradio as gr
import numpy as np
import pytest
from PIL import Image
from synthetic_boxes import one_cpu_thread  # noqa: F401 (a fixture)

from regionspot import RegionSpotConfig, RegionSpotPredictor, build_regionspot
from regionspot.app import layout
from regionspot.app.__main__ import main as app_main
from regionspot.app.models import (
    TINY_CONFIG,
    choose_model,
    coco_names,
    default_vocabulary,
    read_category_names,
    samples,
    vocabulary_lists,
)
from regionspot.app.recognition import Recognizer, parse_vocabulary
from regionspot.app.regions import (
    CLICK_MODES,
    InputError,
    Regions,
    add_click,
    draw_prompts,
    format_boxes,
    format_points,
    parse_boxes,
    parse_points,
    parse_regions,
    read_image_file,
)
from regionspot.demo.language_model import write_tiny_causal_lm
from regionspot.modeling.caption_tokenizer import CaptionTokenizer

pytestmark = pytest.mark.usefixtures("one_cpu_thread")
BOX, ON, OFF = CLICK_MODES
VOCABULARY = ["red", "blue", "grey"]


@pytest.fixture(scope="module")
def recognizer(tiny_model):
    return Recognizer(RegionSpotPredictor(tiny_model))


@pytest.fixture(scope="module")
def talking(tmp_path_factory):
    """A tiny model with a captioner and a VQA head (a tiny random Llama written to a folder)."""
    words = ["a red box", "a blue box", "what colour is <region1> ?", "is <region1> left of <region2> ?", "yes no"]
    folder = write_tiny_causal_lm(tmp_path_factory.mktemp("lm"), corpus=words)
    tokens = CaptionTokenizer.from_corpus(words).token_ids
    caption = {"token_ids": tokens, "depth": 1, "width": 32, "num_heads": 2, "mlp_dim": 64, "max_length": 8}
    config = RegionSpotConfig.from_yaml(TINY_CONFIG).to_dict() | {"caption": caption, "vqa": {"llm": str(folder)}}
    return Recognizer(RegionSpotPredictor(build_regionspot(RegionSpotConfig.from_dict(config))))


def test_boxes_are_read_from_lines_or_json_and_written_back_the_same():
    assert parse_boxes("10, 20, 200, 240\n 0 0 5.5 8  \n\n") == [[10, 20, 200, 240], [0, 0, 5.5, 8]]
    assert parse_boxes("[[10, 20, 200, 240], [1, 2, 3, 4]]") == parse_boxes("10,20,200,240\n1,2,3,4")
    assert parse_boxes("[10, 20, 200, 240]") == [[10, 20, 200, 240]]
    assert parse_boxes("") == parse_boxes("  \n") == []
    boxes = [[10, 20, 200, 240], [0.5, 1, 3, 4]]
    assert parse_boxes(format_boxes(boxes)) == boxes


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("10, 20, 200", r"box 1 has 3 numbers \(10, 20, 200\)"),
        ("0, 0, 5, 5\n200, 20, 10, 240", r"box 2 \(200, 20, 10, 240\) is empty or inverted"),
        ("10, 20, nan, 240", "NaN or infinite"),
        ("ten, 20, 30, 40", r"box 1 \(ten, 20, 30, 40\) is not numbers"),
        ("[[1, 2, 3, 4]", "not valid JSON"),
    ],
)
def test_bad_boxes_are_refused_by_number_with_what_to_type(text, message):
    with pytest.raises(InputError, match=message):
        parse_boxes(text)


def test_points_default_to_on_the_object_and_need_one_on_it():
    points, labels = parse_points("5, 6\n7, 8, 0")
    assert points == [[5, 6], [7, 8]] and labels == [1, 0]
    assert parse_points(format_points(points, labels)) == (points, labels)
    with pytest.raises(InputError, match="point 1 has the label 2"):
        parse_points("5, 6, 2")
    with pytest.raises(InputError, match="every point is off the object"):
        parse_points("5, 6, 0")
    with pytest.raises(InputError, match="point 1 has 1 numbers"):
        parse_points("5")


def test_no_region_at_all_is_refused_with_how_to_give_one():
    with pytest.raises(InputError, match="no region: click two corners of a box"):
        parse_regions("", " ")
    regions = parse_regions("0, 0, 4, 4", "1, 1\n2, 2, 0")
    assert len(regions) == 2 and regions.point_labels == [1, 0]


def test_two_clicks_make_a_box_whichever_corners_and_points_keep_their_label():
    boxes, points, corner = add_click("", "", None, 120, 80, mode=BOX)
    assert (boxes, corner) == ("", [120, 80])
    boxes, points, corner = add_click(boxes, points, corner, 20, 150, mode=BOX)  # bottom-left after top-right
    assert parse_boxes(boxes) == [[20, 80, 120, 150]] and corner is None
    boxes, points, _ = add_click(boxes, points, None, 5, 6, mode=ON)
    boxes, points, _ = add_click(boxes, points, None, 7, 8, mode=OFF)
    assert parse_points(points) == ([[5, 6], [7, 8]], [1, 0]) and len(parse_boxes(boxes)) == 1
    with pytest.raises(InputError, match="box without area"):
        add_click("", "", [10, 10], 10, 50, mode=BOX)


def test_the_canvas_keeps_the_image_size_so_clicks_land_in_its_pixels(image):
    regions = Regions(boxes=[[30, 20, 90, 60]], points=[[120, 70]], point_labels=[0])
    drawn = draw_prompts(image, regions, corner=[10, 10])
    assert drawn.shape == image.shape and drawn.dtype == np.uint8
    changed = np.any(drawn != image, axis=-1)
    assert changed[20, 30:90].any() and changed[70, 120] and changed[10, 10]
    assert not changed[90:, :20].any()  # far from every mark: the image itself


def test_image_files_other_than_pictures_are_refused_by_name(tmp_path):
    Image.fromarray(np.full((8, 10, 3), 200, np.uint8)).save(tmp_path / "ok.png")
    assert read_image_file(tmp_path / "ok.png").shape == (8, 10, 3)
    (tmp_path / "notes.txt").write_text("not a picture")
    with pytest.raises(InputError, match=r"notes.txt is not an image \(a TXT file\): upload a picture \(PNG, JPG"):
        read_image_file(tmp_path / "notes.txt")
    (tmp_path / "broken.png").write_bytes(b"\x89PNG but nothing else")
    with pytest.raises(InputError, match=r"broken\.png cannot be read as an image"):
        read_image_file(tmp_path / "broken.png")
    with pytest.raises(gr.Error, match=r"notes\.txt is not an image"):  # as the page shows it
        layout.load_upload(str(tmp_path / "notes.txt"))


def test_vocabulary_is_split_on_commas_and_lines_and_an_empty_one_is_refused():
    assert parse_vocabulary("cat, dog\nsofa,, cat ,") == ["cat", "dog", "sofa"]
    with pytest.raises(InputError, match="the vocabulary is empty"):
        parse_vocabulary(" , \n")


def test_boxes_and_points_are_named_together_and_the_image_is_embedded_once(recognizer, image, monkeypatch):
    calls = []
    set_image = recognizer.predictor.set_image
    monkeypatch.setattr(recognizer.predictor, "set_image", lambda img: calls.append(1) or set_image(img))
    regions = parse_regions("30, 20, 90, 60\n100, 50, 150, 90", "40, 40")
    shown = recognizer.recognise(image, regions, VOCABULARY, top_k=2)
    assert [row[:2] for row in shown.rows] == [[1, "box"], [2, "box"], [3, "points"]]
    for row in shown.rows:
        names = [part.rsplit(" ", 1) for part in row[3].split(", ")]
        assert len(names) == 2 and all(name in VOCABULARY and 0 <= float(score) <= 1 for name, score in names)
    assert shown.rows[0][2] == "30, 20, 90, 60" and shown.picture.width >= image.shape[1]
    again = recognizer.recognise(image, regions, VOCABULARY, top_k=2)
    assert again.rows == shown.rows and len(calls) == 1  # the same image: embedded once
    recognizer.recognise(image[::-1].copy(), regions, VOCABULARY)
    assert len(calls) == 2


def test_the_pages_messages_for_no_image_no_region_empty_vocabulary_and_a_box_outside(recognizer, image):
    with pytest.raises(gr.Error, match="no image: upload one or pick a sample"):
        layout.recognise(recognizer, None, "0, 0, 5, 5", "", "red", 3)
    with pytest.raises(gr.Error, match="no region"):
        layout.recognise(recognizer, image, "", "", "red", 3)
    with pytest.raises(gr.Error, match="the vocabulary is empty"):
        layout.recognise(recognizer, image, "0, 0, 5, 5", "", "", 3)
    with pytest.raises(gr.Error, match="no area inside the 160x96 image"):  # the predictor's own message
        layout.recognise(recognizer, image, "500, 500, 600, 600", "", "red", 3)
    picture, table = layout.recognise(recognizer, image, "0, 0, 50, 50", "", "red, blue", 3)
    assert picture.ndim == 3 and list(table.columns)[:4] == [
        "region",
        "prompt",
        "box (x1, y1, x2, y2)",
        "top labels (score)",
    ]
    assert table.iloc[0]["top labels (score)"].split(" ")[0] in ("red", "blue")


def test_a_click_event_adds_a_corner_then_a_box(image):
    first = gr.SelectData(None, {"index": [30, 20], "value": None})
    canvas, boxes, points, corner = layout.click(image, "", "", None, BOX, first)
    assert corner == [30, 20] and boxes == "" and canvas.shape == image.shape
    second = gr.SelectData(None, {"index": [90, 60], "value": None})
    canvas, boxes, points, corner = layout.click(image, boxes, points, corner, BOX, second)
    assert parse_boxes(boxes) == [[30, 20, 90, 60]] and corner is None
    with pytest.raises(gr.Error, match="no image"):
        layout.click(None, "", "", None, BOX, first)


def test_segment_everything_names_sams_masks_or_says_it_found_none(recognizer, image):
    found = recognizer.segment_everything(
        image, VOCABULARY, points_per_side=4, pred_iou_thresh=0.0, stability_score_thresh=0.0
    )
    assert found.rows and all(row[1] == "SAM" for row in found.rows) and not found.notes
    with pytest.warns(UserWarning, match=r"kept no mask.*pred_iou_thresh 1\)"):  # a gr.Warning outside a page
        picture, table = layout.segment_everything(recognizer, image, "red", 3, 4, 1.0, 1.0)
    assert picture.shape == image.shape and table.empty


def test_describe_and_ask_say_when_the_model_has_no_such_head(recognizer, image):
    regions = Regions(boxes=[[0, 0, 20, 20]])
    with pytest.raises(InputError, match="no captioner"):
        recognizer.describe(image, regions, VOCABULARY)
    with pytest.raises(InputError, match="no VQA head"):
        recognizer.ask(image, regions, "what colour is <region1> ?")
    assert not recognizer.has_captioner and not recognizer.has_vqa


def test_a_model_with_a_captioner_and_a_vqa_head_describes_and_answers(talking, image):
    picture, table = layout.describe(talking, image, "30, 20, 90, 60\n100, 50, 150, 90", "", "red, blue")
    assert len(table) == 2 and all(isinstance(c, str) for c in table["caption"]) and picture.ndim == 3
    answer, picture = layout.ask(talking, image, "30, 20, 90, 60\n100, 50, 150, 90", "is <region1> left of <region2> ?")
    assert isinstance(answer, str) and picture.ndim == 3
    for question, message in [
        ("", "the question is empty: ask about a box, e.g. what is <region1>?"),
        ("what colour is it ?", "names no region: write <region1> for the first box, <region2> for the next"),
        ("what colour is <region3> ?", "names <region3> but 2 region(s)"),
    ]:
        with pytest.raises(gr.Error) as refused:
            layout.ask(talking, image, "30, 20, 90, 60\n100, 50, 150, 90", question)
        assert message in shown_text(refused.value), refused.value.message  # the tags survive the popup's HTML
    with pytest.raises(gr.Error) as refused:
        layout.ask(talking, image, "", "what colour is <region1> ?")
    assert "draw or type at least one box (<region1> is the first)" in shown_text(refused.value)


def test_the_app_serves_tiny_backbones_without_a_demo_and_the_demo_when_it_has_run(tmp_path):
    tiny = choose_model(None, None, demo_dir=tmp_path / "none")
    assert tiny.kind == "tiny" and "tiny random backbones" in tiny.description and "untrained" in tiny.summary
    assert default_vocabulary(tiny)[0] == "person" and tiny.config.caption is None
    demo = tmp_path / "demo"
    (demo / "train").mkdir(parents=True)
    shutil.copy(TINY_CONFIG, demo / "train" / "adapter.yaml")
    (demo / "data").mkdir()
    Image.fromarray(np.zeros((32, 40, 3), np.uint8)).save(demo / "data" / "test_1.png")
    categories = [{"id": 1, "name": "red_striped_triangle"}, {"id": 2, "name": "blue plain circle"}]
    test = {"images": [{"id": 1, "file_name": "test_1.png", "width": 40, "height": 32}], "categories": categories}
    test["annotations"] = [{"id": 1, "image_id": 1, "category_id": 1, "bbox": [2, 3, 10, 20]}]
    (demo / "data" / "test.json").write_text(json.dumps(test))
    chosen = choose_model(None, None, demo_dir=demo)
    assert chosen.kind == "demo" and "demo's trained model" in chosen.description
    assert default_vocabulary(chosen) == ["red striped triangle", "blue plain circle"]
    picks = samples(chosen)
    first = next(iter(picks))
    assert first.startswith("demo test image 1") and picks[first].boxes == [[2, 3, 12, 23]]
    assert picks[first].load().shape == (32, 40, 3) and any("astronaut" in name for name in picks)
    assert vocabulary_lists(chosen)["the demo's shapes"]() == default_vocabulary(chosen)


def test_a_given_config_and_adapter_are_served_and_a_lone_adapter_needs_its_yaml(tmp_path):
    given = choose_model(TINY_CONFIG, None)
    assert given.kind == "given" and "untrained adapter" in given.summary
    (tmp_path / "adapter.safetensors").write_bytes(b"")
    with pytest.raises(ValueError, match=r"give --config MODEL\.yaml too"):
        choose_model(None, tmp_path / "adapter.safetensors")
    shutil.copy(TINY_CONFIG, tmp_path / "adapter.yaml")
    beside = choose_model(None, tmp_path / "adapter.safetensors")
    assert beside.path == tmp_path / "adapter.yaml" and beside.config.adapter.checkpoint.endswith("adapter.safetensors")
    with pytest.raises(SystemExit, match="error: adapter weights not found"):
        app_main(["--config", str(TINY_CONFIG), "--adapter", str(tmp_path / "missing.safetensors")])


def test_vocabulary_lists_coco_and_any_annotation_files_categories(tmp_path):
    names = coco_names()
    assert len(names) == 80 and names[0] == "person" and "toothbrush" in names
    lvis = tmp_path / "lvis_mini.json"
    lvis.write_text(json.dumps({"categories": [{"id": 1, "name": "bow_(weapon)"}, {"id": 3, "name": "aerosol_can"}]}))
    assert read_category_names(lvis) == ["bow", "aerosol can"]
    lists = vocabulary_lists(choose_model(None, None, demo_dir=tmp_path), [lvis])
    assert lists["lvis_mini.json (its categories)"]() == ["bow", "aerosol can"]
    assert layout.pick_list("COCO (80 names)", lists).startswith("person, bicycle, car")
    (tmp_path / "empty.json").write_text("{}")
    with pytest.raises(gr.Error, match=r"empty\.json holds no categories"):
        layout.names_from_file(str(tmp_path / "empty.json"), "readable")


def test_the_app_is_a_console_command_too():
    scripts = {e.name: e.value for e in importlib.metadata.entry_points(group="console_scripts")}
    assert scripts["regionspot-app"] == "regionspot.app.__main__:main"


def test_the_page_builds_with_its_tabs_and_says_which_model_it_serves(recognizer):
    choice = choose_model(None, None, demo_dir=Path("/nonexistent"))
    app = layout.build_app(
        recognizer, choice, vocabulary=["red"], vocabulary_lists=vocabulary_lists(choice), samples=samples(choice)
    )
    assert isinstance(app, gr.Blocks)
    shown = {block.elem_id: block for block in app.blocks.values() if getattr(block, "elem_id", None)}
    assert {"upload", "canvas", "boxes", "points", "vocab", "recognise", "everything", "labels"} <= set(shown)
    assert "tiny random backbones" in shown["model-description"].value
    assert "no captioner" in shown["no-captioner"].value and "no VQA head" in shown["no-vqa"].value


def shown_text(error: gr.Error) -> str:
    """The text a browser shows for a popup's message, which Gradio renders as HTML (tags dropped, entities read)."""
    parser = _TextOnly()
    parser.feed(error.message)
    parser.close()
    return "".join(parser.text)


class _TextOnly(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.text: list[str] = []

    def handle_data(self, data: str) -> None:
        self.text.append(data)
