"""Fuzzed inputs at the predictor and the recognize command (property-based, hypothesis).

Every case either works, with outputs of the documented shapes and finite scores, or raises the documented
ValueError / TypeError with a message; nothing else. Boxes are clipped to the image; a box with no area left
inside it (outside, inverted, degenerate) or with a NaN/inf coordinate is refused by index, never dropped.
"""

from __future__ import annotations

import contextlib
import io
import json
import re
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from PIL import Image, ImageOps

import regionspot
from regionspot import RegionSpotPredictor, recognize
from regionspot.boxes import clip_to_image, has_area

# Modest and reproducible on a shared 2-core machine: no example database written into the repository. The
# conftest's autouse seeding fixture is function-scoped; it only seeds, so sharing it across examples is harmless.
FUZZ = settings(
    max_examples=60, deadline=None, database=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
IMAGE_SIZE = (48, 64)  # (H, W) of the image the prompt and vocabulary properties use
VOCAB = ["red square", "blue circle", "background"]
REFUSED = (ValueError, TypeError)


@pytest.fixture(scope="module")
def predictor(tiny_model) -> RegionSpotPredictor:
    return RegionSpotPredictor(tiny_model)


@pytest.fixture(scope="module")
def image() -> np.ndarray:
    return np.random.default_rng(0).integers(0, 255, (*IMAGE_SIZE, 3), dtype=np.uint8)


def check_predictions(result, *, regions: int, vocabulary: list[str], top_k: int, size: tuple[int, int]) -> None:
    """The documented outputs of `predict` for `regions` regions of an image of `size` (H, W)."""
    k = min(top_k, len(vocabulary))
    assert len(result) == regions
    assert result.scores.shape == result.class_ids.shape == (regions, k)
    assert torch.isfinite(result.scores).all() and ((result.scores >= 0) & (result.scores <= 1)).all()
    assert all(len(labels) == k and set(labels) <= set(vocabulary) for labels in result.labels)
    assert result.masks.shape == (regions, *size) and result.masks.dtype == torch.bool
    assert result.mask_scores.shape == (regions,) and torch.isfinite(result.mask_scores).all()
    if result.boxes is not None:
        height, width = size
        assert result.boxes.shape == (regions, 4) and has_area(result.boxes).all()
        assert (result.boxes >= 0).all() and (result.boxes[:, 0::2] <= width).all()
        assert (result.boxes[:, 1::2] <= height).all()


def refused(call) -> BaseException | None:
    """Run `call`; return the documented error it raised (with a message), or None if it worked."""
    try:
        call()
    except REFUSED as err:
        assert str(err), f"{type(err).__name__} without a message"
        event(f"refused: {type(err).__name__}")  # hypothesis's statistics count the outcomes of each property
        return err
    event("worked")
    return None


# ----- images -------------------------------------------------------------------------------------------------------
DTYPES = ("uint8", "float32", "float64", "float16", "bool", "int64", "uint16")
PIL_MODES = ("1", "L", "P", "RGB", "RGBA", "LA", "I;16", "I", "F", "CMYK", "YCbCr")


@st.composite
def arrays(draw) -> np.ndarray:
    height, width = draw(st.integers(0, 300)), draw(st.integers(0, 300))
    channels = draw(st.sampled_from([None, 1, 2, 3, 4, 5]))
    dtype = draw(st.sampled_from(DTYPES))
    rng = np.random.default_rng(draw(st.integers(0, 2**16)))
    shape = (height, width) if channels is None else (height, width, channels)
    if dtype in ("float32", "float64", "float16"):
        array = rng.random(shape).astype(dtype)
        spoil = draw(st.sampled_from([None, np.nan, np.inf, -0.5, 255.0]))
        if spoil is not None and array.size:
            array.flat[draw(st.integers(0, array.size - 1))] = spoil
        return array
    if dtype == "bool":
        return rng.random(shape) > 0.5
    return rng.integers(0, 256 if dtype == "uint8" else 1000, shape).astype(dtype)


@st.composite
def tensors(draw) -> torch.Tensor:
    array = draw(arrays())
    if array.ndim == 3:
        array = np.moveaxis(array, 2, 0)
    tensor = torch.from_numpy(np.ascontiguousarray(array))
    return tensor.to(torch.bfloat16) if tensor.is_floating_point() and draw(st.booleans()) else tensor


@st.composite
def pil_images(draw) -> Image.Image:
    mode = draw(st.sampled_from(PIL_MODES))
    size = (draw(st.integers(1, 200)), draw(st.integers(1, 200)))
    rng = np.random.default_rng(draw(st.integers(0, 2**16)))
    rgb = Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8))
    if mode == "I;16":
        return Image.fromarray(rng.integers(0, 2**16, (size[1], size[0])).astype(np.uint16))
    if mode == "F":  # floats in [0, 1] (accepted) or in 0..255 (refused: the array rules)
        scale = draw(st.sampled_from([1.0, 255.0]))
        return Image.fromarray((rng.random((size[1], size[0])) * scale).astype(np.float32))
    return rgb.convert(mode)


def upright_size(image) -> tuple[int, int] | None:
    """(H, W) that an accepted image has for the predictor, or None if the input has no such size."""
    if isinstance(image, Image.Image):
        return ImageOps.exif_transpose(image).size[::-1]
    if isinstance(image, torch.Tensor):
        return tuple(image.shape[-2:]) if image.ndim in (2, 3) else None
    if isinstance(image, np.ndarray):
        return tuple(image.shape[:2]) if image.ndim in (2, 3) else None
    return None


@FUZZ
@given(image=st.one_of(arrays(), tensors(), pil_images(), st.sampled_from([None, "photo.jpg", [[0, 1]], 3.0])))
def test_any_image_is_embedded_or_refused(predictor, image):
    error = refused(lambda: predictor.set_image(image))
    if error is not None:
        assert isinstance(error, ValueError)  # set_image documents ValueError for every refusal
        with pytest.raises(RuntimeError, match="set_image"):  # and leaves no stale image behind
            predictor.predict(boxes=[[0, 0, 1, 1]], vocabulary=VOCAB)
        return
    size = upright_size(image)
    height, width = size
    result = predictor.predict(boxes=[[0, 0, width, height]], vocabulary=VOCAB, top_k=2)
    check_predictions(result, regions=1, vocabulary=VOCAB, top_k=2, size=size)


def test_one_pixel_and_4000_pixel_images(predictor):
    predictor.set_image(np.full((1, 1, 3), 200, np.uint8))
    check_predictions(
        predictor.predict(boxes=[[0, 0, 1, 1]], vocabulary=VOCAB), regions=1, vocabulary=VOCAB, top_k=5, size=(1, 1)
    )
    big = np.zeros((4000, 4000, 3), np.uint8)
    big[1000:3000, 500:2500] = (220, 30, 30)
    predictor.set_image(big)
    result = predictor.predict(boxes=[[500, 1000, 2500, 3000], [-50, -50, 5000, 5000]], vocabulary=VOCAB, top_k=3)
    check_predictions(result, regions=2, vocabulary=VOCAB, top_k=3, size=(4000, 4000))
    assert result.boxes[1].tolist() == [0, 0, 4000, 4000]


@pytest.mark.parametrize("orientation", range(1, 9))
def test_exif_orientation_is_applied_to_pil_images_and_files(predictor, tmp_path, orientation):
    """A phone's JPEG stores pixels sideways and says so in EXIF: prompts are in the upright frame viewers show."""
    pixels = np.zeros((30, 50, 3), np.uint8)
    pixels[:10, :10] = (255, 255, 255)  # a white corner, to see where the pixels went
    exif = Image.Exif()
    exif[0x0112] = orientation
    path = tmp_path / "phone.jpg"
    Image.fromarray(pixels).save(path, exif=exif, quality=95)
    upright = np.array(ImageOps.exif_transpose(Image.open(path)).convert("RGB"))
    assert upright.shape[:2] == ((30, 50) if orientation < 5 else (50, 30))
    predictor.set_image(Image.open(path))
    assert np.array_equal(predictor._rgb, upright)
    height, width = upright.shape[:2]
    result = predictor.predict(boxes=[[0, 0, width, height]], vocabulary=VOCAB)
    check_predictions(result, regions=1, vocabulary=VOCAB, top_k=5, size=(height, width))


def test_a_truncated_image_file_is_a_value_error(predictor, tmp_path):
    path = tmp_path / "cut.jpg"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(path)
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])  # the header survives, the pixels do not
    with pytest.raises(ValueError, match="cannot decode the image"):
        predictor.set_image(Image.open(path))


# ----- prompts ------------------------------------------------------------------------------------------------------
COORDINATES = st.one_of(
    st.floats(-100, 200, allow_nan=False),
    st.sampled_from([float("nan"), float("inf"), -float("inf"), 1e30, -1e30, 0.0, 48.0, 64.0]),
    st.integers(-10, 80),
)


@st.composite
def box_sets(draw):
    """Mostly (N, 4) boxes, some of them inverted, outside, degenerate or non-finite; sometimes a wrong shape."""
    n = draw(st.integers(0, 12))
    boxes = [[draw(COORDINATES) for _ in range(4)] for _ in range(n)]
    if draw(st.booleans()):  # well-formed boxes inside the image, so that the working path is fuzzed too
        boxes = [[min(a, b), min(c, d), max(a, b) + 1, max(c, d) + 1] for a, c, b, d in np.asarray(
            [[draw(st.floats(0, 40)) for _ in range(4)] for _ in range(n)]
        ).reshape(-1, 4)]  # fmt: skip
    layout = draw(st.sampled_from(["list", "numpy", "tensor", "wrong_shape", "ragged", "strings", "none_inside"]))
    if layout == "numpy":
        return np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    if layout == "tensor":
        return torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4)
    if layout == "wrong_shape":
        return np.zeros(draw(st.sampled_from([(n, 3), (n, 4, 1), (n, 5), (3,), ()])))
    if layout == "ragged" and boxes:
        return [*boxes, [1, 2, 3]]
    if layout == "strings" and boxes:
        return [[str(v) for v in box] for box in boxes]
    if layout == "none_inside" and boxes:
        return [[None, *box[1:]] for box in boxes]
    return boxes


def expected_boxes_ok(boxes, size: tuple[int, int]) -> bool:
    """The documented rule, computed independently: (N >= 1, 4) finite numbers, each with area once clipped."""
    try:
        array = np.asarray(boxes)
    except ValueError:  # ragged
        return False
    if array.dtype.kind not in "biuf":  # strings, None: not numbers, even where they would parse as numbers
        return False
    if array.ndim == 1 and array.shape == (4,):
        array = array[None]
    if array.ndim != 2 or array.shape[1] != 4 or len(array) == 0:
        return False
    array = array.astype(np.float32)  # the precision boxes are checked in
    return bool(np.isfinite(array).all() and has_area(clip_to_image(array, size)).all())


@FUZZ
@given(boxes=box_sets())
def test_any_boxes_are_recognised_or_refused(predictor, image, boxes):
    predictor.set_image(image)
    results = []
    error = refused(lambda: results.append(predictor.predict(boxes=boxes, vocabulary=VOCAB, top_k=2)))
    assert (error is None) == expected_boxes_ok(boxes, IMAGE_SIZE), error
    if error is None:
        count = 1 if np.asarray(boxes, dtype=np.float64).ndim == 1 else len(boxes)
        check_predictions(results[0], regions=count, vocabulary=VOCAB, top_k=2, size=IMAGE_SIZE)


@st.composite
def point_prompts(draw):
    """Points (N, P, 2), half of them inside the image; labels, some wrong; sometimes masks, some not binary."""
    n, p = draw(st.sampled_from([1, 2, 5, 0])), draw(st.sampled_from([1, 2, 3, 0]))  # mostly some, sometimes none
    height, width = IMAGE_SIZE
    inside = st.tuples(st.floats(0, width), st.floats(0, height))
    anywhere = st.tuples(COORDINATES, COORDINATES)
    coordinates = inside if draw(st.booleans()) else anywhere
    points = np.asarray([[draw(coordinates) for _ in range(p)] for _ in range(n)], dtype=np.float64).reshape(n, p, 2)
    if draw(st.integers(0, 5)) == 0:
        points = points[..., 0]  # wrong shape: (N, P)
    good_labels = [None, np.ones((n, p)), np.zeros((n, p), dtype=bool), np.eye(max(n, p))[:n, :p]]
    bad_labels = [np.full((n, p), 2), np.ones((n, p + 1)), np.full((n, p), np.nan), np.full((n, p), "1")]
    labels = draw(st.sampled_from(bad_labels if draw(st.integers(0, 2)) == 0 else good_labels))
    masks = None
    if draw(st.integers(0, 2)) == 0:
        shape = draw(st.sampled_from([(n, *IMAGE_SIZE), (n, 10, 10), (n, *IMAGE_SIZE, 1)]))
        fill = draw(st.sampled_from([0.0, 1.0, 0.5, np.nan, 3.0]))
        masks = np.full(shape, fill)
        if fill == 1.0 and len(shape) == 3 and shape[1:] == IMAGE_SIZE:
            masks[:, : IMAGE_SIZE[0] // 2] = 0  # a binary mask with something in it
    return points, labels, masks


@FUZZ
@given(prompts=point_prompts(), with_points=st.sampled_from([True, True, True, False]))
def test_any_points_and_masks_are_recognised_or_refused(predictor, image, prompts, with_points):
    points, labels, masks = prompts
    predictor.set_image(image)
    kwargs = {"points": points if with_points else None, "point_labels": labels, "masks": masks}
    results = []
    error = refused(lambda: results.append(predictor.predict(vocabulary=VOCAB, top_k=1, **kwargs)))
    if error is None:
        given_prompts = [p for p in (kwargs["points"], masks) if p is not None]
        check_predictions(results[0], regions=len(given_prompts[0]), vocabulary=VOCAB, top_k=1, size=IMAGE_SIZE)
        assert results[0].boxes is None


def _bounded_peak_growth(call) -> tuple[float, object]:
    """Peak growth of the resident memory (MiB) while `call` runs, sampled from /proc every few ms (torch's
    allocations are invisible to tracemalloc), and what the call returned."""

    def resident() -> float:
        return int(Path("/proc/self/statm").read_text().split()[1]) * 4096 / 2**20

    start, peak, done = resident(), [0.0], threading.Event()

    def sample() -> None:
        while not done.is_set():
            peak[0] = max(peak[0], resident())
            time.sleep(0.002)

    sampler = threading.Thread(target=sample)
    sampler.start()
    try:
        result = call()
    finally:
        done.set()
        sampler.join()
    return max(peak[0], resident()) - start, result


@pytest.mark.skipif(not Path("/proc/self/statm").exists(), reason="reads the resident memory from /proc")
def test_ten_thousand_boxes_work_in_bounded_memory(predictor):
    """SAM decodes `prompt_batch_size` prompts at a time and masks are upscaled in chunks; the adapter's
    self-attention over the regions runs in linear memory (1.8 GB over 10,000 boxes before: its (N, N) matrix)."""
    image = np.random.default_rng(0).integers(0, 255, (32, 32, 3), dtype=np.uint8)
    predictor.set_image(image)
    rng = np.random.default_rng(1)
    corners = rng.uniform(0, 16, (10_000, 2))
    boxes = np.concatenate([corners, corners + rng.uniform(1, 16, (10_000, 2))], axis=1)
    fast_path = torch.backends.mha.get_fastpath_enabled()
    growth, result = _bounded_peak_growth(lambda: predictor.predict(boxes=boxes, vocabulary=VOCAB, top_k=2))
    check_predictions(result, regions=10_000, vocabulary=VOCAB, top_k=2, size=(32, 32))
    assert growth < 512, f"predicting 10,000 boxes grew the resident memory by {growth:.0f} MiB"
    assert torch.backends.mha.get_fastpath_enabled() == fast_path  # nothing flips the global switch


# ----- vocabularies -------------------------------------------------------------------------------------------------
NAMES = st.one_of(st.text(max_size=30), st.sampled_from(["cat", "Katze", "猫", "chat noir", "🐈", " ", ""]))


@FUZZ
@given(
    vocabulary=st.one_of(
        st.lists(NAMES, max_size=12),
        st.lists(NAMES, min_size=1, max_size=12, unique=True),
        st.lists(st.text(min_size=1, max_size=30).filter(str.strip), min_size=1, max_size=12, unique=True),
        st.lists(st.one_of(NAMES, st.integers(), st.none(), st.binary(max_size=4)), max_size=6),
        st.sampled_from([None, 7, "cat", b"cat", {"cat": 1}]),
    ),
    top_k=st.one_of(st.integers(1, 20), st.sampled_from([0, -2, 2.5, True, "3", None])),
)
def test_any_vocabulary_is_scored_or_refused(predictor, image, vocabulary, top_k):
    predictor.set_image(image)
    results = []
    error = refused(
        lambda: results.append(predictor.predict(boxes=[[5, 5, 30, 40]], vocabulary=vocabulary, top_k=top_k))
    )
    names_ok = (
        isinstance(vocabulary, list)
        and len(vocabulary) > 0
        and all(isinstance(n, str) and n.strip() for n in vocabulary)
        and len(set(vocabulary)) == len(vocabulary)
    )
    top_k_ok = isinstance(top_k, int) and not isinstance(top_k, bool) and top_k >= 1
    if isinstance(vocabulary, dict):  # a mapping is an iterable of names: its keys
        names_ok, vocabulary = True, list(vocabulary)
    assert (error is None) == (names_ok and top_k_ok), error
    if error is None:
        check_predictions(results[0], regions=1, vocabulary=vocabulary, top_k=top_k, size=IMAGE_SIZE)


def test_huge_vocabularies_and_names(predictor, image):
    predictor.set_image(image)
    many = [f"thing number {i}" for i in range(10_000)]
    result = predictor.predict(boxes=[[5, 5, 30, 40]], vocabulary=many, top_k=3, return_all_scores=True)
    check_predictions(result, regions=1, vocabulary=many, top_k=3, size=IMAGE_SIZE)
    assert result.all_scores.shape == (1, 10_000)
    long_names = ["a" * 10_000, "é" * 10_000, "猫 " * 5_000, "🐈" * 10_000]
    result = predictor.predict(boxes=[[5, 5, 30, 40]], vocabulary=long_names, top_k=4)
    check_predictions(result, regions=1, vocabulary=long_names, top_k=4, size=IMAGE_SIZE)


# ----- several images, and everything ------------------------------------------------------------------------------
@st.composite
def boxes_inside(draw, size: tuple[int, int]) -> list[list[float]]:
    """1 to 8 boxes with area inside an image of `size` (H, W), some reaching past its edges."""
    height, width = size
    boxes = []
    for _ in range(draw(st.integers(1, 8))):
        x1, y1 = draw(st.floats(-5, width - 1)), draw(st.floats(-5, height - 1))
        boxes.append(
            [x1, y1, max(x1, 0) + draw(st.floats(0.5, width + 5)), max(y1, 0) + draw(st.floats(0.5, height + 5))]
        )
    return boxes


@st.composite
def image_batches(draw):
    """Image sizes and one box set per image: mostly usable, sometimes fuzzed, sometimes one set too few."""
    sizes = draw(st.lists(st.tuples(st.integers(1, 80), st.integers(1, 80)), max_size=4))
    per_image = [draw(boxes_inside(size) if draw(st.integers(0, 3)) else box_sets()) for size in sizes]
    if per_image and draw(st.integers(0, 4)) == 0:
        per_image = per_image[:-1]
    return sizes, per_image


@FUZZ
@given(batch=image_batches(), batch_size=st.one_of(st.integers(1, 3), st.sampled_from([0, -1, 1.5, None])))
def test_predict_images_works_or_refuses(predictor, batch, batch_size):
    sizes, per_image = batch
    images = [np.full((h, w, 3), 120, np.uint8) for h, w in sizes]
    results = []
    error = refused(
        lambda: results.append(
            predictor.predict_images(images, boxes=per_image, vocabulary=VOCAB, batch_size=batch_size)
        )
    )
    boxes_ok = len(images) == len(per_image) and all(
        expected_boxes_ok(b, s) for b, s in zip(per_image, sizes, strict=False)
    )
    batch_ok = isinstance(batch_size, int) and batch_size >= 1
    assert (error is None) == (boxes_ok and batch_ok), error
    if error is None:
        assert len(results[0]) == len(images)
        for result, boxes, size in zip(results[0], per_image, sizes, strict=True):
            count = 1 if np.asarray(boxes, dtype=np.float64).ndim == 1 else len(boxes)
            check_predictions(result, regions=count, vocabulary=VOCAB, top_k=5, size=size)


@settings(FUZZ, max_examples=15)
@given(size=st.tuples(st.integers(1, 120), st.integers(1, 120)), points_per_side=st.integers(-1, 4))
def test_predict_everything_works_or_refuses(predictor, size, points_per_side):
    predictor.set_image(np.random.default_rng(0).integers(0, 255, (*size, 3), dtype=np.uint8))
    results = []
    settings_ = {"points_per_side": points_per_side, "pred_iou_thresh": 0.0, "stability_score_thresh": 0.0}
    error = refused(lambda: results.append(predictor.predict_everything(vocabulary=VOCAB, top_k=2, **settings_)))
    assert (error is None) == (points_per_side >= 1), error
    if error is None:
        check_predictions(results[0], regions=len(results[0]), vocabulary=VOCAB, top_k=2, size=size)


# ----- the recognize command ----------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def photo(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("recognize") / "photo.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (*IMAGE_SIZE, 3), dtype=np.uint8)).save(path)
    return path


def _as_json(boxes) -> str:
    """--boxes as a user would type it (NaN and Infinity included: Python's json reads them)."""
    return json.dumps(boxes.tolist() if isinstance(boxes, np.ndarray | torch.Tensor) else boxes)


@FUZZ
@given(
    # usable boxes and names half the time, so that the working path is fuzzed as much as the refusals
    boxes=st.one_of(boxes_inside(IMAGE_SIZE).map(_as_json), box_sets().map(_as_json), st.text(max_size=20)).flatmap(
        lambda fuzzed: st.sampled_from([fuzzed, "[[0, 0, 30, 20], [10, 5, 64, 48]]"])
    ),
    vocabulary=st.one_of(st.text(max_size=40), st.lists(st.sampled_from(VOCAB), min_size=1, unique=True).map(",".join)),
    top_k=st.integers(-1, 5),
)
def test_recognize_prints_one_line_per_box_or_exits_with_a_message(tiny_model, photo, boxes, vocabulary, top_k):
    argv = ["--config", "unused.yaml", "--image", str(photo), "--boxes", boxes, "--vocabulary", vocabulary]
    out, err = io.StringIO(), io.StringIO()
    with pytest.MonkeyPatch.context() as patch, contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        # One tiny model for every example; the command imports the package's factory after parsing its arguments.
        patch.setattr(regionspot, "build_regionspot", lambda config: tiny_model)
        try:
            recognize.main([*argv, "--top-k", str(top_k)])
        except SystemExit as exit_info:
            # argparse's usage error (code 2), or one line "error: ..." saying what to do
            assert exit_info.code == 2 or str(exit_info.code).startswith("error: "), exit_info.code
            event("usage error" if exit_info.code == 2 else "refused with a message")
            return
    event("worked")
    parsed = json.loads(boxes)
    # One "box [...]  mask ... px  ->  names" per box; a name may hold a line break, so lines are not counted.
    printed = re.findall(r"(?m)^box \[[-\d, ]+\]  mask \d+ px  ->  ", out.getvalue())
    assert len(printed) == (1 if np.asarray(parsed, dtype=np.float64).ndim == 1 else len(parsed))


def test_recognize_refuses_missing_corrupt_and_exif_images(tiny_model, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(regionspot, "build_regionspot", lambda config: tiny_model)
    (tmp_path / "broken.jpg").write_bytes(b"not a jpeg")
    for name, message in (("missing.jpg", "image not found"), ("broken.jpg", r"cannot read image .*broken\.jpg")):
        with pytest.raises(SystemExit, match=f"^error: {message}"):
            recognize.main(["--config", "x.yaml", "--image", str(tmp_path / name), "--boxes", "[[0, 0, 5, 5]]"])
    exif = Image.Exif()
    exif[0x0112] = 6  # stored sideways: upright it is 40 wide and 60 tall
    Image.fromarray(np.zeros((40, 60, 3), np.uint8)).save(tmp_path / "phone.jpg", exif=exif)
    recognize.main(["--config", "x.yaml", "--image", str(tmp_path / "phone.jpg"), "--boxes", "[[0, 0, 40, 60]]"])
    assert capsys.readouterr().out.startswith("box [0, 0, 40, 60]")  # not clipped to a 60-wide image
