"""One image reader: every way a file enters the package gives the same pixels, for every kind of file."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from regionspot.app.regions import read_image_file
from regionspot.checks import to_rgb_uint8
from regionspot.data import load_coco_detection
from regionspot.data.detection import HFImageReader
from regionspot.demo.synthetic import load_split
from regionspot.evaluation.runner import _read_image
from regionspot.evaluation.sources import ImageJob
from regionspot.images import ImageTooLargeError, decode_image, load_image
from regionspot.transforms import load_image as transforms_load_image

HEIGHT, WIDTH = 24, 32
_EXIF_ORIENTATION = 0x0112
_ROTATED_90_CLOCKWISE = 6  # the stored pixels are shown turned a quarter clockwise


def _gradient() -> np.ndarray:
    """(H, W, 3) uint8 with no symmetry, so that a turn or flip shows."""
    y, x = np.mgrid[0:HEIGHT, 0:WIDTH]
    return np.stack([x * 7 % 256, y * 10 % 256, (x + 2 * y) * 3 % 256], axis=-1).astype(np.uint8)


def _exif_jpeg(path: Path) -> np.ndarray:
    exif = Image.Exif()
    exif[_EXIF_ORIENTATION] = _ROTATED_90_CLOCKWISE
    Image.fromarray(_gradient()).save(path, exif=exif, quality=95)
    with Image.open(path) as stored:  # the stored (lossy) pixels, turned as a viewer shows them
        return np.rot90(np.array(stored.convert("RGB")), k=-1)


def _sixteen_bit_png(path: Path) -> np.ndarray:
    samples = (np.arange(HEIGHT * WIDTH, dtype=np.uint32).reshape(HEIGHT, WIDTH) * 85 % 65536).astype(np.uint16)
    Image.fromarray(samples).save(path)
    eight = np.round(samples * (255 / 65535)).astype(np.uint8)  # 65535 -> 255, not clipped at 255
    return np.repeat(eight[:, :, None], 3, axis=2)


def _cmyk_jpeg(path: Path) -> np.ndarray:
    cmyk = np.zeros((HEIGHT, WIDTH, 4), dtype=np.uint8)
    cmyk[:, : WIDTH // 2, 0] = 255  # cyan on the left, plain paper on the right
    Image.fromarray(cmyk, mode="CMYK").save(path, quality=95)
    with Image.open(path) as stored:
        assert stored.mode == "CMYK"
        return np.array(stored.convert("RGB"))


def _palette_png_with_transparency(path: Path) -> np.ndarray:
    colours = np.array([[255, 0, 0], [0, 255, 0], [0, 0, 255]], dtype=np.uint8)
    indices = (np.arange(HEIGHT * WIDTH).reshape(HEIGHT, WIDTH) % 3).astype(np.uint8)
    image = Image.fromarray(indices, mode="P")
    image.putpalette(colours.flatten().tolist())
    image.save(path, transparency=0)  # red is transparent: its colour is kept, not composited
    return colours[indices]


def _rgba_png(path: Path) -> np.ndarray:
    rgba = np.concatenate([_gradient(), np.full((HEIGHT, WIDTH, 1), 0, dtype=np.uint8)], axis=-1)
    rgba[: HEIGHT // 2, :, 3] = 128
    Image.fromarray(rgba, mode="RGBA").save(path)
    return rgba[:, :, :3]  # alpha dropped: the colour stored under it


def _grey_png(path: Path) -> np.ndarray:
    grey = _gradient()[:, :, 0]
    Image.fromarray(grey, mode="L").save(path)
    return np.repeat(grey[:, :, None], 3, axis=2)


FORMATS: dict[str, tuple[str, Callable[[Path], np.ndarray]]] = {
    "exif_rotated_jpeg": (".jpg", _exif_jpeg),
    "16_bit_png": (".png", _sixteen_bit_png),
    "cmyk_jpeg": (".jpg", _cmyk_jpeg),
    "palette_png_with_transparency": (".png", _palette_png_with_transparency),
    "rgba_png": (".png", _rgba_png),
    "greyscale_png": (".png", _grey_png),
}


def _through_data_set(path: Path) -> np.ndarray:
    """A COCO-style data set's item (no augmentation), its one box inside every format's image."""
    ann = path.parent / f"{path.stem}.json"
    data = {
        "images": [{"id": 1, "file_name": path.name}],
        "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "bbox": [1, 1, 10, 10]}],
        "categories": [{"id": 1, "name": "thing"}],
    }
    ann.write_text(json.dumps(data))
    return load_coco_detection("formats", ann, path.parent)[0]["image"]


def _through_demo_split(path: Path) -> np.ndarray:
    """The demo's split reader (its images next to the JSON)."""
    polygon = [[1, 1, 11, 1, 11, 11, 1, 11]]
    data = {
        "images": [{"id": 1, "file_name": path.name, "height": 99, "width": 99}],
        "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "bbox": [1, 1, 10, 10], "segmentation": polygon}],
        "categories": [{"id": 1, "name": "thing"}],
    }
    ann = path.parent / f"{path.stem}_split.json"
    ann.write_text(json.dumps(data))
    return load_split(ann)[0].pixels


def _through_evaluation(path: Path) -> np.ndarray:
    rgb, problem, _ = _read_image(ImageJob(image_id=1, file_name=path.name), path.parent)
    assert rgb is not None, problem
    return rgb


def _through_table(path: Path) -> np.ndarray:
    """A Hugging Face table's row: its Image feature hands over an opened PIL image."""
    return HFImageReader([{"image": Image.open(path)}])(0)


READERS: dict[str, Callable[[Path], np.ndarray]] = {
    "load_image": load_image,
    "transforms.load_image": transforms_load_image,
    "decode_image (bytes)": lambda path: decode_image(path.read_bytes(), name=path),
    "predictor (a PIL image)": lambda path: to_rgb_uint8(Image.open(path)),
    "data set (files)": _through_data_set,
    "data set (Hugging Face table)": _through_table,
    "evaluate.py": _through_evaluation,
    "app upload": read_image_file,
    "demo split": _through_demo_split,
}


@pytest.mark.parametrize("kind", FORMATS)
def test_every_reader_gives_the_same_pixels_for_every_format(kind, tmp_path):
    suffix, write = FORMATS[kind]
    path = tmp_path / f"{kind}{suffix}"
    expected = write(path)
    for reader, read in READERS.items():
        pixels = read(path)
        assert pixels.dtype == np.uint8 and pixels.shape == expected.shape, (reader, pixels.shape)
        np.testing.assert_array_equal(pixels, expected, err_msg=f"{reader} reads {kind} differently")
        assert pixels.flags.writeable, reader  # torch warns on read-only arrays


def test_a_turned_image_is_upright_and_cmyk_keeps_its_colours(tmp_path):
    """The expectations above, checked against what was drawn: EXIF swaps the sides; cyan stays cyan."""
    turned = load_image(_write(tmp_path, "exif_rotated_jpeg"))
    assert turned.shape == (WIDTH, HEIGHT, 3)
    np.testing.assert_allclose(turned, np.rot90(_gradient(), k=-1), atol=12)
    cmyk = load_image(_write(tmp_path, "cmyk_jpeg")).astype(int)
    np.testing.assert_allclose(cmyk[:, : WIDTH // 2 - 2].mean((0, 1)), [0, 255, 255], atol=3)
    np.testing.assert_allclose(cmyk[:, WIDTH // 2 + 2 :].mean((0, 1)), [255, 255, 255], atol=3)


def _write(folder: Path, kind: str) -> Path:
    suffix, write = FORMATS[kind]
    path = folder / f"{kind}{suffix}"
    write(path)
    return path


def test_corrupt_files_are_clear_errors_naming_them(tmp_path, monkeypatch):
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"\x89PNG\r\n\x1a\n not really")
    with pytest.raises(ValueError, match=r"cannot read image .*broken\.png"):
        load_image(broken)
    with pytest.raises(ValueError, match=r"cannot read image upload\.png"):
        decode_image(broken.read_bytes(), name="upload.png")
    with pytest.raises(FileNotFoundError, match=r"absent\.png"):
        load_image(tmp_path / "absent.png")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)
    Image.new("RGB", (30, 30)).save(tmp_path / "bomb.png")  # 900 pixels: over twice the limit
    with pytest.raises(ImageTooLargeError, match=r"bomb\.png"):
        load_image(tmp_path / "bomb.png")
    rgb, problem, _ = _read_image(ImageJob(image_id=1, file_name="broken.png"), tmp_path)
    assert rgb is None and "broken.png" in problem
