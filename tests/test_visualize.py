"""Drawing region predictions: labels never overlap nor leave the picture; the demo's picture and --draw work."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from regionspot.demo.picture import draw_predictions
from regionspot.visualize import RIGHT, WRONG, draw_legend, draw_regions, layout_labels


def _random_layout(rng: np.random.Generator) -> tuple[list[tuple[int, int]], np.ndarray, tuple[int, int]]:
    height, width = int(rng.integers(64, 300)), int(rng.integers(64, 300))
    count = int(rng.integers(1, 14))
    corners = rng.uniform(0, 1, size=(count, 2)) * (width - 2, height - 2)
    extents = rng.uniform(0.05, 0.8, size=(count, 2)) * (width, height)
    boxes = np.concatenate([corners, np.minimum(corners + extents, (width, height))], axis=1)
    sizes = [(int(rng.integers(8, width + 1)), int(rng.integers(8, 80))) for _ in range(count)]
    return sizes, boxes, (height, width)


@pytest.mark.parametrize("seed", range(150))
def test_labels_never_overlap_and_stay_on_the_canvas(seed: int) -> None:
    sizes, boxes, (height, width) = _random_layout(np.random.default_rng(seed))

    rects, grown = layout_labels(sizes=sizes, boxes=boxes, canvas_size=(height, width))

    assert grown >= height
    assert [(int(r[2] - r[0]), int(r[3] - r[1])) for r in rects] == sizes  # each label keeps its size
    assert (rects[:, :2] >= 0).all() and (rects[:, 2] <= width).all() and (rects[:, 3] <= grown).all()
    for i in range(len(rects)):
        for j in range(i):
            a, b = rects[i], rects[j]
            overlap = min(a[2], b[2]) > max(a[0], b[0]) and min(a[3], b[3]) > max(a[1], b[1])
            assert not overlap, (i, j, a.tolist(), b.tolist())


def test_a_label_sits_just_above_its_box_when_there_is_room() -> None:
    rects, grown = layout_labels(sizes=[(40, 12)], boxes=np.array([[50.0, 60.0, 90.0, 100.0]]), canvas_size=(200, 200))

    assert grown == 200
    assert rects[0].tolist() == [50, 46, 90, 58]


def test_labels_that_do_not_fit_grow_the_canvas_instead_of_covering_each_other() -> None:
    boxes = np.array([[0.0, 0.0, 64.0, 64.0]] * 3)

    rects, grown = layout_labels(sizes=[(64, 30)] * 3, boxes=boxes, canvas_size=(64, 64))

    assert grown > 64
    assert sorted(r[1] for r in rects.tolist())[-1] >= 64  # the third label lies in the added room


def test_draw_regions_enlarges_small_images_colours_by_truth_and_adds_a_legend() -> None:
    image = torch.full((3, 32, 48), 0.5)  # float in [0, 1], (C, H, W)
    boxes = torch.tensor([[2.0, 2.0, 20.0, 20.0], [24.0, 10.0, 47.0, 31.0]])
    masks = torch.zeros(2, 32, 48, dtype=torch.bool)
    masks[0, 4:18, 4:18] = True

    picture = draw_regions(
        image,
        boxes=boxes,
        labels=["cat", "dog"],
        scores=torch.tensor([0.9, 0.4]),
        truths=["cat", "sofa"],
        captions=["a cat on the left, asleep on a very long sofa by the window", ""],
        masks=masks,
        min_size=256,
    )

    pixels = np.array(picture)
    assert picture.width == 48 * 8  # the short side 32 px -> 256 px: x8
    assert picture.height > 32 * 8  # the legend (and any room for labels) below the image
    assert (pixels == RIGHT).all(-1).any() and (pixels == WRONG).all(-1).any()


def test_draw_regions_rejects_mismatched_inputs() -> None:
    image = np.zeros((20, 20, 3), dtype=np.uint8)
    with pytest.raises(ValueError, match="labels has 1 entries for 2 boxes"):
        draw_regions(image, boxes=[[0, 0, 5, 5], [5, 5, 10, 10]], labels=["a"])
    with pytest.raises(ValueError, match="masks must be"):
        draw_regions(image, boxes=[[0, 0, 5, 5]], masks=np.zeros((1, 10, 10), dtype=bool))


def test_the_legend_flows_onto_new_rows_when_narrow() -> None:
    entries = [(RIGHT, "right"), (WRONG, "wrong (the true name under it)"), (None, "0.42: a probability")]

    wide, narrow = draw_legend(entries, width=800), draw_legend(entries, width=150)

    assert narrow.height > wide.height


def test_draw_predictions_draws_the_demo_picture(tmp_path) -> None:
    image_dir = tmp_path / "data"
    (image_dir / "images").mkdir(parents=True)
    Image.fromarray(np.full((64, 64, 3), 90, dtype=np.uint8)).save(image_dir / "images" / "1.png")
    gt = {
        "images": [{"id": 1, "file_name": "images/1.png", "height": 64, "width": 64}],
        "categories": [{"id": 1, "name": "red_circle"}, {"id": 2, "name": "blue_square"}],
        "annotations": [
            {"id": 10, "image_id": 1, "category_id": 1, "bbox": [4.0, 4.0, 20.0, 20.0]},
            {"id": 11, "image_id": 1, "category_id": 2, "bbox": [30.0, 30.0, 30.0, 30.0]},
        ],
    }
    detections = [
        {"image_id": 1, "category_id": 1, "bbox": [4.0, 4.0, 20.0, 20.0], "score": 0.7},
        {"image_id": 1, "category_id": 2, "bbox": [4.0, 4.0, 20.0, 20.0], "score": 0.3},
        {"image_id": 1, "category_id": 1, "bbox": [30.0, 30.0, 30.0, 30.0], "score": 0.6},
    ]

    out = draw_predictions(
        gt=json.loads(json.dumps(gt)),
        detections=detections,
        image_dir=image_dir,
        out_file=tmp_path / "demo.png",
        captions={"10": "a red circle at the top left"},
    )

    with Image.open(out) as picture:
        pixels = np.array(picture.convert("RGB"))
    assert picture.width == 512 and picture.height > 512
    assert (pixels == RIGHT).all(-1).any() and (pixels == WRONG).all(-1).any()


def test_recognize_draw_writes_the_picture(tmp_path, capsys) -> None:
    from regionspot.recognize import main

    Image.fromarray(np.full((96, 128, 3), 120, dtype=np.uint8)).save(tmp_path / "photo.png")
    out = tmp_path / "regions.png"

    main(["--config", "tiny", "--image", str(tmp_path / "photo.png"),
          "--boxes", "[[4, 4, 60, 50], [50, 30, 127, 95]]", "--vocabulary", "cat,dog", "--draw", str(out)])  # fmt: skip

    assert f"picture: {out}" in capsys.readouterr().out
    with Image.open(out) as picture:
        assert picture.width == 128 * 6  # the short side 96 px -> at least 512: x6


def test_a_legend_entry_wider_than_the_strip_is_wrapped_not_cut() -> None:
    entry = [(RIGHT, "a very long explanation of what the green colour means on this picture")]

    assert draw_legend(entry, width=120).height > draw_legend(entry, width=2000).height
