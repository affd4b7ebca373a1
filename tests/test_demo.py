"""The offline demo: the synthetic LVIS generator and the fitted stand-in backbones."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import torch
from open_clip.pos_embed import get_2d_sincos_pos_embed
from pycocotools import mask as mask_utils

from regionspot import RegionSpotConfig, build_regionspot
from regionspot.data.coco import load_annotations
from regionspot.demo.backbones import (
    DEMO_SAM,
    POSITION_SCALE,
    _point_loss,
    attribute_phrases,
    fit_backbones,
    fit_sam,
)
from regionspot.demo.synthetic import _shape_mask, choose_heldout, generate_dataset, load_split, make_classes
from regionspot.evaluation import score_detections
from regionspot.evaluation.lvis_eval import _LVISFromDict
from regionspot.evaluation.subsets import restrict_to_categories, score_category_subsets
from regionspot.modeling.sam import SamRegions, build_sam
from regionspot.predictor import RegionSpotPredictor

# 2 x 2 x 2 = 8 classes, 2 held out; 200 small training images are enough for r, c and f groups to exist.
SMALL = {
    "num_train": 200,
    "num_val": 30,
    "num_test": 10,
    "num_pretrain": 60,
    "image_size": 64,
    "num_heldout": 2,
    "colours": ("red", "blue"),
    "textures": ("solid", "striped"),
    "shapes": ("circle", "square"),
}


@pytest.fixture(scope="module")
def small_dataset(tmp_path_factory):
    return generate_dataset(out_dir=tmp_path_factory.mktemp("synthetic"), seed=3, **SMALL)


def test_same_seed_same_files_with_any_number_of_workers_other_seed_other_files(small_dataset, tmp_path):
    again = generate_dataset(out_dir=tmp_path / "again", seed=3, workers=2, **{**SMALL, "num_train": 200})
    for split, path in small_dataset.annotation_files.items():
        assert path.read_bytes() == again.annotation_files[split].read_bytes()
    for image in json.loads(small_dataset.annotation_files["val"].read_text())["images"]:
        assert (small_dataset.root / image["file_name"]).read_bytes() == (again.root / image["file_name"]).read_bytes()
    other = generate_dataset(out_dir=tmp_path / "other", seed=4, **{**SMALL, "num_train": 200, "num_val": 0})
    assert (small_dataset.root / "images/train/000001.png").read_bytes() != (
        other.root / "images/train/000001.png"
    ).read_bytes()


def test_official_lvis_api_reads_it_with_all_frequency_groups(small_dataset):
    train = load_annotations(small_dataset.annotation_files["train"])
    index = _LVISFromDict(train)  # the official LVIS index
    assert len(index.get_img_ids()) == SMALL["num_train"]
    frequency = {c["id"]: c["frequency"] for c in train["categories"]}
    seen_frequency = {frequency[c] for c in train["train_category_ids"]}
    assert seen_frequency == {"r", "c", "f"}
    for cat in train["categories"]:  # LVIS: r = 1-10 training images, c = 11-100, f = more
        count = len(set(index.cat_img_map[cat["id"]]))
        assert cat["image_count"] == count
        assert cat["frequency"] == ("r" if count <= 10 else "c" if count <= 100 else "f")
    heldout = set(train["heldout_category_ids"])
    assert len(heldout) == SMALL["num_heldout"]
    assert not heldout & {a["category_id"] for a in train["annotations"]}
    assert {frequency[c] for c in heldout} == {"r"}
    val = load_annotations(small_dataset.annotation_files["val"])
    assert heldout <= {a["category_id"] for a in val["annotations"]}
    manifest = json.loads(small_dataset.manifest.read_text())
    assert manifest["heldout_category_ids"] == sorted(heldout)
    assert manifest["annotation_files"] == {
        "train": "train.json",
        "val": "val.json",
        "test": "test.json",
        "pretrain": "pretrain.json",
    }


def test_pretraining_split_is_class_balanced_over_all_classes_or_the_seen_ones(small_dataset, tmp_path):
    pretrain = load_annotations(small_dataset.annotation_files["pretrain"])
    counts = np.bincount([a["category_id"] for a in pretrain["annotations"]], minlength=9)[1:]
    assert counts.min() > 0.5 * counts.mean()  # uniform draws over all 8 classes, held-out ones included
    train = load_annotations(small_dataset.annotation_files["train"])
    train_counts = np.bincount([a["category_id"] for a in train["annotations"]], minlength=9)
    assert train_counts[pretrain["train_category_ids"]].min() < 0.2 * train_counts.max()  # not the long tail
    assert json.loads(small_dataset.manifest.read_text())["settings"]["heldout_in_pretrain"] is True
    # The stricter setting keeps the held-out classes out of it too, and changes no other split.
    strict = generate_dataset(out_dir=tmp_path / "strict", seed=3, heldout_in_pretrain=False, **SMALL)
    strict_pretrain = load_annotations(strict.annotation_files["pretrain"])
    strict_counts = np.bincount([a["category_id"] for a in strict_pretrain["annotations"]], minlength=9)
    assert strict_counts[pretrain["heldout_category_ids"]].sum() == 0
    seen_counts = strict_counts[pretrain["train_category_ids"]]
    assert seen_counts.min() > 0.5 * seen_counts.mean()
    # Asking for a pretraining split, of either kind, leaves the other splits exactly as they were.
    without = generate_dataset(out_dir=tmp_path / "without", seed=3, **{**SMALL, "num_pretrain": 0})
    assert "pretrain" not in without.annotation_files
    for split in ("train", "val", "test"):
        expected = small_dataset.annotation_files[split].read_bytes()
        assert without.annotation_files[split].read_bytes() == expected
        assert strict.annotation_files[split].read_bytes() == expected


@pytest.mark.parametrize(("rotation", "fill"), [(0.0, (0.97, 1.0)), (45.0, (0.5, 0.97))])
def test_shapes_turn_by_at_most_the_rotation(rotation, fill):
    # An upright square fills its box; a square turned by up to 45 degrees fills between half and all of it.
    grid = np.mgrid[0:96, 0:96] + 0.5
    fills = []
    for seed in range(8):
        mask = _shape_mask("square", 40.0, (grid[0], grid[1]), np.random.default_rng(seed), rotation)
        ys, xs = np.nonzero(mask)
        fills.append(mask.sum() / ((np.ptp(ys) + 1) * (np.ptp(xs) + 1)))
    assert fill[0] <= min(fills) and max(fills) <= fill[1]
    if rotation:
        assert min(fills) < 0.8  # some are visibly turned


def test_federated_lists_are_consistent(small_dataset):
    data = load_annotations(small_dataset.annotation_files["val"])
    present: dict[int, set[int]] = {}
    for ann in data["annotations"]:
        present.setdefault(ann["image_id"], set()).add(ann["category_id"])
    negatives = 0
    for image in data["images"]:
        assert not set(image["neg_category_ids"]) & present.get(image["id"], set())
        assert image["not_exhaustive_category_ids"] == []
        negatives += len(image["neg_category_ids"])
    assert negatives > 0


def test_boxes_are_the_visible_masks_extent(small_dataset):
    data = load_annotations(small_dataset.annotation_files["train"])
    counts = []
    for ann in data["annotations"][:200]:
        mask = mask_utils.decode(ann["segmentation"]).astype(bool)
        ys, xs = np.nonzero(mask)
        x, y, w, h = ann["bbox"]
        assert (x, y, x + w, y + h) == (xs.min(), ys.min(), xs.max() + 1, ys.max() + 1)
        assert ann["area"] == mask.sum() > 0
        counts.append(ann["image_id"])
    per_image = np.bincount(counts)[np.unique(counts)]
    assert per_image.min() >= 1 and per_image.max() <= 6


def test_occluded_objects_keep_half_their_pixels_and_masks_do_not_overlap(small_dataset):
    examples = load_split(small_dataset.annotation_files["val"])
    assert all((e.masks.sum(0) <= 1).all() for e in examples)
    assert any(e.masks.shape[0] >= 4 for e in examples)


def test_heldout_classes_are_unseen_combinations_of_seen_attribute_pairs():
    classes = make_classes()
    heldout = choose_heldout(classes, 6, np.random.default_rng(0))
    train = [c for c in classes if c not in heldout]
    for cls in heldout:
        colour, texture, shape = cls.attributes
        assert any(t.colour == colour and t.texture == texture for t in train)
        assert any(t.colour == colour and t.shape == shape for t in train)
        assert any(t.texture == texture and t.shape == shape for t in train)
    with pytest.raises(ValueError, match="cannot hold out"):
        choose_heldout(make_classes(("red",), ("solid",), ("circle", "square")), 1, np.random.default_rng(0))


def test_bad_arguments_are_refused(tmp_path):
    with pytest.raises(ValueError, match="unknown attribute"):
        generate_dataset(out_dir=tmp_path, colours=("mauve",))
    with pytest.raises(ValueError, match="too few"):
        generate_dataset(out_dir=tmp_path, num_train=2, num_val=0)
    with pytest.raises(ValueError, match="neg_fraction"):
        generate_dataset(out_dir=tmp_path, neg_fraction=2.0)
    with pytest.raises(ValueError, match="object_size"):
        generate_dataset(out_dir=tmp_path, object_size=(0.5, 0.3))


def test_command_line_draws_the_object_sizes_and_counts_it_is_given(tmp_path):
    """The demo's data (larger objects, fewer to an image) can be drawn from the command line too."""
    from regionspot.demo.synthetic import main

    main(["--out", str(tmp_path), "--num-train", "800", "--num-val", "0", "--image-size", "64",
          "--object-size", "0.4", "0.45", "--objects-per-image", "2", "3", "--questions-per-image", "0"])  # fmt: skip
    train = load_annotations(tmp_path / "train.json")
    per_image = np.bincount([a["image_id"] for a in train["annotations"]])[1:]
    assert per_image.min() >= 2 and per_image.max() <= 3
    # every object's circumscribed circle spans 0.4-0.45 of the side, so no box is wider or taller than that
    sides = np.asarray([max(a["bbox"][2:]) for a in train["annotations"]])
    assert sides.max() <= 0.45 * 64 + 1 and np.median(sides) > 0.2 * 64


def test_load_split_refuses_heldout_classes_and_missing_images(small_dataset, tmp_path):
    val = small_dataset.annotation_files["val"]
    heldout = load_annotations(val)["heldout_category_ids"]
    with pytest.raises(ValueError, match="must stay out"):
        load_split(val, exclude_category_ids=heldout)
    data = load_annotations(val)
    data["images"][0]["file_name"] = "images/val/missing.png"
    (tmp_path / "val.json").write_text(json.dumps(data))
    with pytest.raises(FileNotFoundError, match=r"missing\.png"):
        load_split(tmp_path / "val.json")


def test_attribute_phrases_cover_every_part_of_the_names():
    groups = attribute_phrases([("red", "solid", "circle"), ("blue", "solid", "square")])
    assert groups[(0,)] == ["blue", "red"]
    assert groups[(1,)] == ["solid"]
    assert groups[(0, 2)] == ["blue square", "red circle"]
    assert groups[(0, 1, 2)] == ["blue solid square", "red solid circle"]


def test_category_subsets_score_like_their_own_ground_truth(small_dataset):
    gt = load_annotations(small_dataset.annotation_files["val"])
    perfect = [
        {"image_id": a["image_id"], "category_id": a["category_id"], "bbox": a["bbox"], "score": 1.0}
        for a in gt["annotations"]
    ]
    heldout = gt["heldout_category_ids"]
    wrong = [{**d, "category_id": gt["train_category_ids"][0]} for d in perfect if d["category_id"] in heldout]
    scores = score_category_subsets(gt, perfect + wrong, {"seen": gt["train_category_ids"], "heldout": heldout})
    assert scores["heldout"]["AP"] == pytest.approx(1.0)
    assert scores["seen"]["AP"] < 1.0  # the wrong labels are false positives of a seen class
    sub_gt, sub_dets = restrict_to_categories(gt, perfect, heldout)
    assert {c["id"] for c in sub_gt["categories"]} == set(heldout)
    assert all(set(img["neg_category_ids"]) <= set(heldout) for img in sub_gt["images"])
    assert score_detections(sub_gt, sub_dets)["AP"] == pytest.approx(1.0)
    with pytest.raises(ValueError, match="not in the ground truth"):
        restrict_to_categories(gt, perfect, [999])


def test_fitted_backbones_lower_their_losses_and_load_through_build_regionspot(small_dataset, tmp_path):
    train = load_annotations(small_dataset.annotation_files["train"])
    images = train["images"][:16]
    kept = {img["id"] for img in images}
    train |= {"images": images, "annotations": [a for a in train["annotations"] if a["image_id"] in kept]}
    few = small_dataset.root / "train_few.json"  # beside train.json, so the image paths resolve
    few.write_text(json.dumps(train))
    fitted = fit_backbones(ann_file=few, out_dir=tmp_path, seed=0, sam_steps=6, clip_steps=6, batch_size=4)
    for curve in (fitted.sam_losses, fitted.clip_losses):
        assert np.mean(curve[-3:]) < curve[0]
    config = RegionSpotConfig.from_yaml("demo")
    config = dataclasses.replace(
        config,
        sam=dataclasses.replace(config.sam, checkpoint=str(fitted.sam_checkpoint)),
        clip=dataclasses.replace(config.clip, checkpoint=str(fitted.clip_checkpoint)),
    )
    model = build_regionspot(config)  # strict loading: any missing or unexpected key raises
    # The stand-in CLIP's position table is open_clip's fixed 2D sin-cos one, doubled, and the fit left it alone.
    visual = model.clip.model.visual
    table = get_2d_sincos_pos_embed(visual.transformer.width, visual.grid_size[0], cls_token=True)
    torch.testing.assert_close(visual.positional_embedding, POSITION_SCALE * torch.from_numpy(table).float())
    torch.testing.assert_close(
        model.sam.sam.state_dict()["mask_decoder.iou_token.weight"],
        torch.load(fitted.sam_checkpoint, weights_only=True)["mask_decoder.iou_token.weight"],
    )
    example = load_split(small_dataset.annotation_files["val"])[0]
    predictor = RegionSpotPredictor(model)
    predictor.set_image(example.pixels)
    names = [c["name"] for c in load_annotations(small_dataset.annotation_files["val"])["categories"]]
    predictions = predictor.predict(vocabulary=names, boxes=example.boxes, top_k=3)
    assert len(predictions) == len(example.boxes)
    assert predictions.masks.shape[1:] == example.pixels.shape[:2]


def test_every_object_has_a_caption_that_names_its_class_first(small_dataset):
    data = load_annotations(small_dataset.annotation_files["test"])
    names = {cat["id"]: cat["name"] for cat in data["categories"]}
    assert data["annotations"]
    for ann in data["annotations"]:
        assert ann["caption"].startswith(f"a {names[ann['category_id']]} ")


def test_sams_fit_trains_the_point_prompts_the_mask_generator_sends(small_dataset):
    examples = load_split(small_dataset.annotation_files["pretrain"])[:8]
    torch.manual_seed(0)
    state = build_sam(variant=DEMO_SAM).state_dict()  # what fit_sam starts from: the same seed, the same build
    sam, losses = fit_sam(examples, seed=0, steps=30, iou_head_steps=5, batch_size=4, lr=1e-2)
    assert len(losses) == 35 and np.mean(losses[25:30]) < np.mean(losses[:5])
    changed = {name for name, value in sam.state_dict().items() if not torch.equal(value, state[name])}
    # a positive point, the padding SAM adds to a prompt of points alone, and the box corners all learn
    assert {
        "prompt_encoder.point_embeddings.1.weight",
        "prompt_encoder.not_a_point_embed.weight",
        "prompt_encoder.point_embeddings.2.weight",
    } <= changed
    # the three multimask outputs the generator reads, and the IoU head it thresholds
    for index in (1, 2, 3):
        assert f"mask_decoder.output_hypernetworks_mlps.{index}.layers.2.weight" in changed
    assert "mask_decoder.iou_prediction_head.layers.2.weight" in changed


def test_point_loss_asks_a_point_on_no_object_for_an_empty_mask_and_a_zero_iou():
    sam = build_sam(variant=DEMO_SAM)
    masks = torch.zeros(1, 128, 128, dtype=torch.bool)
    masks[0, 32:96, 32:96] = True  # one object; a point on it (0) and one beside it (-1)
    under = torch.tensor([0, -1])
    inside = torch.full((32, 32), -20.0)
    inside[8:24, 8:24] = 20.0  # SAM's 4x-coarser mask grid: exactly the object
    right = SamRegions(
        tokens=torch.zeros(2, 3, 64),
        mask_scores=torch.tensor([[1.0, 0.0, 0.0], [0.0, 0.0, 0.0]]),  # each mask's true IoU (empty = 0)
        mask_logits=torch.stack([torch.stack([inside, -inside, -inside]), torch.full((3, 32, 32), -20.0)]),
    )
    wrong = dataclasses.replace(right, mask_logits=right.mask_logits.flip(0), mask_scores=right.mask_scores.flip(0))
    # dice cannot reach 0 on an empty target (1 - 1 / (sum of probabilities + 1)): the right masks score about 0.5
    assert _point_loss(sam, [wrong], [masks], [under]) > _point_loss(sam, [right], [masks], [under]) + 1.0
    with pytest.raises(ValueError, match="square images"):
        _point_loss(sam, [right], [masks[:, :100]], [under])
