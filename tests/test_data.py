"""Training data: vocabularies, COCO/LVIS and Hugging Face loading, skips, augmentations, mixing under DDP."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from regionspot.data import (
    AugmentConfig,
    DatasetConfig,
    MixedBatchSampler,
    MixedDetectionDataset,
    ShardSampler,
    augment,
    build_dataset,
    collate_detections,
    load_coco_detection,
    load_hf_detection,
)
from regionspot.data.toy import COLOURS, write_colour_boxes
from regionspot.vocabulary import clean_class_name, vocabulary_from_categories


@pytest.mark.parametrize(
    ("raw", "clean"),
    [
        ("traffic_light", "traffic light"),
        ("bow_(weapon)", "bow"),
        ("wall-other-merged", "wall"),
        ("sky-other", "sky"),
        ("grass-merged", "grass"),
        ("playingfield", "playingfield"),
        ("(parenthesis_only)", "(parenthesis only)"),
    ],
)
def test_clean_class_name(raw, clean):
    assert clean_class_name(raw) == clean


def test_colliding_names_keep_their_disambiguator():
    cats = [
        {"id": 1, "name": "bow_(weapon)"},
        {"id": 2, "name": "bow_(decorative_ribbons)"},
        {"id": 3, "name": "aerosol_can"},
    ]
    assert vocabulary_from_categories(cats) == ["bow (weapon)", "bow (decorative ribbons)", "aerosol can"]


def _write_json(path, images, annotations, categories):
    path.write_text(json.dumps({"images": images, "annotations": annotations, "categories": categories}))
    return path


def test_lvis_records_use_coco_url_basename_and_bad_entries_are_counted(tmp_path):
    images_dir = tmp_path / "images"
    images_dir.mkdir()
    Image.fromarray(np.full((40, 60, 3), 200, np.uint8)).save(images_dir / "000000000001.jpg")
    (images_dir / "broken.jpg").write_bytes(b"not a jpeg")
    images = [
        {"id": 1, "coco_url": "http://images.cocodataset.org/val2017/000000000001.jpg", "width": 60, "height": 40},
        {"id": 2, "file_name": "broken.jpg", "width": 60, "height": 40},
        {"id": 3, "file_name": "empty.jpg", "width": 60, "height": 40},
        {"id": 4, "width": 60, "height": 40},  # neither file_name nor coco_url
    ]
    annotations = [
        {"id": 1, "image_id": 1, "category_id": 7, "bbox": [10, 5, 20, 10]},
        {"id": 2, "image_id": 1, "category_id": 7, "bbox": [10, 5, 0, 10]},  # zero area
        {"id": 3, "image_id": 1, "category_id": 7, "bbox": [100, 100, 5, 5]},  # outside the image
        {"id": 4, "image_id": 1, "category_id": 99, "bbox": [1, 1, 5, 5]},  # unknown category
        {"id": 5, "image_id": 1, "category_id": 3, "bbox": [50, 30, 30, 30]},  # partly outside: clipped
        {"id": 6, "image_id": 2, "category_id": 3, "bbox": [1, 1, 5, 5]},
        {"id": 7, "image_id": 42, "category_id": 3, "bbox": [1, 1, 5, 5]},  # unknown image
    ]
    categories = [{"id": 7, "name": "bow_(weapon)"}, {"id": 3, "name": "aerosol_can"}]
    ann_file = _write_json(tmp_path / "lvis.json", images, annotations, categories)
    dataset = load_coco_detection("lvis", ann_file, images_dir)
    # The data set keeps its own names; the model reads them (regionspot.vocabulary.read_class_names).
    assert dataset.vocabulary == ["aerosol_can", "bow_(weapon)"] and dataset.category_ids == [3, 7]
    assert dict(dataset.skipped) == {
        "image_without_file_name": 1,
        "zero_area_box": 1,
        "box_outside_image": 1,
        "box_of_unknown_category": 1,
        "box_of_unknown_image": 1,
        "image_without_boxes": 1,
    }
    assert len(dataset) == 2
    sample = dataset[0]
    assert sample["image"].shape == (40, 60, 3) and sample["image_id"] == 1
    np.testing.assert_allclose(sample["boxes"].numpy(), [[10, 5, 30, 15], [50, 30, 60, 40]])
    assert sample["labels"].tolist() == [1, 0]
    broken = dataset[1]
    assert broken == {"skipped": "unreadable_image", "dataset": "lvis"}
    batch = collate_detections([sample, broken])
    assert len(batch["images"]) == 1 and batch["skipped"] == {"unreadable_image": 1} and batch["dataset"] == "lvis"
    assert "captions" not in batch and "region_keys" not in batch  # a detection set has neither


def test_missing_files_and_bad_configs_raise_clear_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="image folder"):
        load_coco_detection("x", tmp_path / "a.json", tmp_path / "nowhere")
    with pytest.raises(FileNotFoundError, match="annotation file not found"):
        load_coco_detection("x", tmp_path / "a.json", tmp_path)
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        load_coco_detection("x", tmp_path / "bad.json", tmp_path)
    empty = _write_json(tmp_path / "e.json", [{"id": 1, "file_name": "a.png"}], [], [{"id": 1, "name": "a"}])
    with pytest.raises(ValueError, match="no image with a usable box"):
        load_coco_detection("x", empty, tmp_path)
    with pytest.raises(ValueError, match="either ann_file"):
        DatasetConfig()
    with pytest.raises(ValueError, match="needs image_dir"):
        DatasetConfig(ann_file="a.json")


def _box_colour(image: np.ndarray, box: np.ndarray) -> np.ndarray:
    x1, y1, x2, y2 = np.round(box).astype(int)
    return image[y1 + 1 : y2 - 1, x1 + 1 : x2 - 1].reshape(-1, 3).mean(axis=0)


def test_augmentations_move_boxes_with_pixels():
    image = np.full((60, 90, 3), 128, np.uint8)
    image[10:30, 50:80] = (220, 30, 30)
    image[35:55, 5:40] = (30, 40, 220)
    boxes = np.array([[50, 10, 80, 30], [5, 35, 40, 55]], np.float32)
    labels = np.array([0, 1])
    config = AugmentConfig(flip_prob=0.5, short_edges=[60, 90, 120], max_size=200, crop_prob=1.0, crop_min_scale=0.5)
    for seed in range(20):
        out, out_boxes, out_labels, out_captions = augment(image, boxes, labels, np.random.default_rng(seed), config)
        assert len(out_boxes) >= 1 and len(out_boxes) == len(out_labels) and out_captions is None
        assert (out_boxes[:, :2] >= 0).all() and (out_boxes[:, 2] <= out.shape[1]).all()
        assert (out_boxes[:, 3] <= out.shape[0]).all()
        for box, label in zip(out_boxes, out_labels, strict=True):
            expected = (220, 30, 30) if label == 0 else (30, 40, 220)
            np.testing.assert_allclose(_box_colour(out, box), expected, atol=25)


def test_hugging_face_detection_schema(tmp_path):
    datasets = pytest.importorskip("datasets")
    features = datasets.Features(
        {
            "image": datasets.Image(),
            "objects": {
                "bbox": [[datasets.Value("float32")]],
                "category": [datasets.ClassLabel(names=["traffic_light", "wall-other"])],
            },
        }
    )
    objects = [
        {"bbox": [[2, 3, 10, 5]], "category": [1]},
        {"bbox": [], "category": []},
        {"bbox": [[0, 0, 0, 4], [1, 1, 4, 4]], "category": [0, 0]},  # the first box has no area
    ]
    rows = [{"image": Image.fromarray(np.zeros((20, 30, 3), np.uint8)), "objects": o} for o in objects]
    hf = datasets.Dataset.from_list(rows, features=features)
    dataset = load_hf_detection("hf", hf)
    assert dataset.vocabulary == ["traffic_light", "wall-other"] and len(dataset) == 2  # as stored
    assert dict(dataset.skipped) == {"image_without_boxes": 1, "zero_area_box": 1}
    sample = dataset[0]
    np.testing.assert_allclose(sample["boxes"].numpy(), [[2, 3, 12, 8]])
    assert sample["labels"].tolist() == [1] and sample["image"].shape == (20, 30, 3)
    hf.save_to_disk(str(tmp_path / "hf"))
    from_disk = build_dataset("hf", DatasetConfig(hf_path=str(tmp_path / "hf"), bbox_format="xyxy"))
    np.testing.assert_allclose(from_disk[0]["boxes"].numpy(), [[2, 3, 10, 5]])


def _steps(sampler: MixedBatchSampler, epochs: int = 1) -> list[list[tuple[int, int, int]]]:
    return [batch for _ in range(epochs) for batch in sampler]


def test_batches_come_from_one_data_set_with_equal_ratios_whatever_their_size():
    sampler = MixedBatchSampler(dataset_sizes=[1000, 10], ratios=[1, 1], batch_size=2, batches_per_epoch=400)
    batches = _steps(sampler)
    assert all(len({key[0] for key in batch}) == 1 for batch in batches)
    share = np.mean([batch[0][0] == 1 for batch in batches])
    assert 0.4 < share < 0.6  # the small data set is drawn as often as the large one
    small = [key[1] for batch in batches if batch[0][0] == 1 for key in batch]
    assert sorted(set(small)) == list(range(10))  # and cycled through in full passes


def test_ranks_get_distinct_samples_and_the_same_data_set():
    kwargs = {"dataset_sizes": [50, 30], "ratios": [2, 1], "batch_size": 3, "num_replicas": 2, "seed": 5}
    rank0 = _steps(MixedBatchSampler(rank=0, **kwargs), epochs=2)
    rank1 = _steps(MixedBatchSampler(rank=1, **kwargs), epochs=2)
    assert len(rank0) == len(rank1) == 2 * 14
    for a, b in zip(rank0, rank1, strict=True):
        assert a[0][0] == b[0][0]  # same data set at each step on every rank
        assert not {k[2] for k in a} & {k[2] for k in b}  # distinct stream positions
    seen = [key[:2] for batch in rank0[:8] + rank1[:8] for key in batch if key[0] == 1]
    assert len(seen) == len(set(seen))  # no sample repeats within a pass over the data set
    shards = [list(ShardSampler(7, num_replicas=2, rank=r)) for r in range(2)]
    assert sorted(shards[0] + shards[1]) == list(range(7))


def test_resumed_sampler_continues_the_same_stream():
    kwargs = {"dataset_sizes": [9, 4], "ratios": [1, 1], "batch_size": 2, "seed": 1, "batches_per_epoch": 5}
    full = _steps(MixedBatchSampler(**kwargs), epochs=3)
    resumed = MixedBatchSampler(start_batch=7, **kwargs)
    assert _steps(resumed, epochs=2) == full[7:]
    assert len(list(MixedBatchSampler(start_batch=7, **kwargs))) == 3  # the rest of epoch 1


def test_mixed_dataset_is_reproducible_per_key(tmp_path):
    ann, images = write_colour_boxes(tmp_path, num_images=6)
    dataset = load_coco_detection("toy", ann, images, augment_config=AugmentConfig(short_edges=[32, 48, 64]))
    mixed = MixedDetectionDataset([dataset], seed=3)
    assert mixed.vocabularies == {"toy": list(COLOURS)}
    a, b = mixed[(0, 2, 17)], mixed[(0, 2, 17)]
    assert (a["image"] == b["image"]).all() and (a["boxes"] == b["boxes"]).all()
    others = [mixed[(0, 2, position)]["boxes"] for position in range(18, 24)]  # later passes draw new augmentations
    assert any(o.shape != a["boxes"].shape or not (o == a["boxes"]).all() for o in others)
    with pytest.raises(ValueError, match="unique"):
        MixedDetectionDataset([dataset, dataset])
