"""`regionspot-serve` as a user meets it: started on a free port of 127.0.0.1, asked over HTTP, refused clearly on bad
requests, and shut down. Traffic goes to 127.0.0.1 only."""

from __future__ import annotations

import base64
import io
import os
import signal
import socket
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import numpy as np
import pytest
from PIL import Image
from pycocotools import mask as mask_utils
from skimage import data as skimage_data

from regionspot.onnx import OnnxRegionPredictor

VOCAB = ["person", "cat", "coffee cup", "rocket"]
BOXES = [[10, 20, 200, 300], [100, 100, 400, 380]]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _start(*args: str) -> tuple[subprocess.Popen, str]:
    port = _free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "regionspot.serve", *args, "--port", str(port), "--threads", "1"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env={**os.environ, "OMP_WAIT_POLICY": "PASSIVE"},
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"the server exited with {process.returncode}: {process.stdout.read()[-2000:]}")
        try:
            if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                return process, url
        except httpx.TransportError:
            time.sleep(0.3)
    process.kill()
    raise RuntimeError("the server did not answer /health within 120 s")


def _stop(process: subprocess.Popen) -> int:
    process.send_signal(signal.SIGINT)
    return process.wait(timeout=30)


@pytest.fixture(scope="module")
def server(tiny_onnx_export):
    process, url = _start("--onnx", str(tiny_onnx_export[0]), "--cache-size", "3", "--max-regions", "1000")
    yield url
    _stop(process)


def _png(rgb: np.ndarray) -> str:
    buffer = io.BytesIO()
    Image.fromarray(rgb).save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode()


def _post(url: str, body: dict | bytes) -> httpx.Response:
    if isinstance(body, bytes):
        return httpx.post(f"{url}/predict", content=body, headers={"content-type": "application/json"}, timeout=60)
    return httpx.post(f"{url}/predict", json=body, timeout=60)


def test_predict_by_image_then_by_id_matches_the_predictor(server, tiny_onnx_export):
    rgb = skimage_data.astronaut()
    first = _post(server, {"image": _png(rgb), "boxes": BOXES, "vocabulary": VOCAB, "top_k": 2})
    assert first.status_code == 200, first.text
    answer = first.json()
    assert answer["cached"] is False and len(answer["regions"]) == 2
    local = OnnxRegionPredictor(tiny_onnx_export[0])
    local.set_image(rgb)
    want = local.predict(vocabulary=VOCAB, boxes=BOXES, top_k=2)
    for region, labels, scores, mask in zip(answer["regions"], want.labels, want.scores, want.masks, strict=True):
        assert region["labels"] == labels and np.allclose(region["scores"], scores, atol=1e-5)
        decoded = mask_utils.decode({"size": region["mask"]["size"], "counts": region["mask"]["counts"].encode()})
        assert np.array_equal(decoded.astype(bool), mask)
    again = _post(server, {"image_id": answer["image_id"], "points": [[[50, 60]]], "vocabulary": VOCAB[:2]})
    assert again.status_code == 200 and again.json()["cached"] is True
    assert "mask" in again.json()["regions"][0] and "box" not in again.json()["regions"][0]
    no_masks = _post(
        server, {"image_id": answer["image_id"], "boxes": BOXES, "vocabulary": VOCAB, "return_masks": False}
    )
    assert "mask" not in no_masks.json()["regions"][0]


def test_segment_everything_is_served(server, tiny_onnx_export):
    """An "everything" field in place of prompts: predict_everything's regions (the tiny SAM keeps one mask at
    thresholds of 0, none at the published ones: the answer then says why), and a clear 400 with prompts."""
    rgb = skimage_data.coffee()
    settings = {"points_per_side": 4, "pred_iou_thresh": 0.0, "stability_score_thresh": 0.0}
    answer = _post(server, {"image": _png(rgb), "vocabulary": VOCAB, "everything": settings, "top_k": 2})
    assert answer.status_code == 200, answer.text
    local = OnnxRegionPredictor(tiny_onnx_export[0])
    local.set_image(rgb)
    want = local.predict_everything(vocabulary=VOCAB, top_k=2, **settings)
    regions = answer.json()["regions"]
    assert len(regions) == len(want) > 0 and [r["labels"] for r in regions] == want.labels
    assert [r["box"] for r in regions] == want.boxes.tolist() and "notes" not in answer.json()
    image_id = answer.json()["image_id"]
    nothing = _post(server, {"image_id": image_id, "vocabulary": VOCAB, "everything": True})
    assert nothing.status_code == 200 and nothing.json()["regions"] == []
    assert "kept no mask" in nothing.json()["notes"][0]
    for body in ({"boxes": BOXES}, {"everything": {"points": 3}}, {"return_masks": False}):
        refused = _post(server, {"image_id": image_id, "vocabulary": VOCAB, "everything": True, **body})
        assert refused.status_code == 400 and "everything" in refused.json()["error"], refused.text


def _big_png() -> str:
    buffer = io.BytesIO()
    Image.new("L", (10_000, 10_000)).save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode()


SMALL = np.full((40, 50, 3), 90, np.uint8)
BAD = {
    "not an image": ({"image": base64.b64encode(b"hello, not a picture").decode(), "boxes": BOXES, "vocabulary": VOCAB},
                     400, "not a decodable image"),
    "not base64": ({"image": "%%%", "boxes": BOXES, "vocabulary": VOCAB}, 400, "not valid base64"),
    "10k x 10k": ({"image": None, "boxes": BOXES, "vocabulary": VOCAB}, 413, "10000x10000 = 100.0 MP"),
    "malformed JSON": (b'{"image_id": "abc", "vocabulary": [', 400, "not valid JSON"),
    "a JSON list": (b"[1, 2]", 400, "must be a JSON object"),
    "empty vocabulary": ({"image": _png(SMALL), "boxes": [[0, 0, 9, 9]], "vocabulary": []}, 400, "vocabulary is empty"),
    "100k regions": ({"image": _png(SMALL), "boxes": [[0, 0, 9, 9]] * 100_000, "vocabulary": VOCAB}, 413,
                     "100000 boxes: this server takes at most 1000"),
    "unknown id": ({"image_id": "0" * 32, "boxes": BOXES, "vocabulary": VOCAB}, 404, "send the image"),
    "bad box": ({"image": _png(SMALL), "boxes": [[30, 30, 10, 10]], "vocabulary": VOCAB}, 400, "no area"),
    "unknown field": ({"image": _png(SMALL), "boxez": BOXES, "vocabulary": VOCAB}, 400, "unknown fields"),
    "bad RLE": ({"image": _png(SMALL), "masks": [{"size": [40, 50]}], "vocabulary": VOCAB}, 400, "COCO RLE"),
    "caption": ({"image": _png(SMALL), "boxes": [[0, 0, 9, 9]], "vocabulary": VOCAB, "caption": True}, 400,
                "captioner"),
}  # fmt: skip


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_requests_get_a_4xx_with_one_clear_line(server, case):
    body, status, message = BAD[case]
    if case == "10k x 10k":
        body = {**body, "image": _big_png()}
    response = _post(server, body)
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert message in error and "\n" not in error
    assert httpx.get(f"{server}/health", timeout=5).status_code == 200  # the worker lives on


def test_concurrent_requests_all_answered_and_the_cache_stays_bounded(server):
    photos = [skimage_data.coffee(), skimage_data.chelsea(), skimage_data.rocket(), skimage_data.astronaut()]
    bodies = [{"image": _png(p), "boxes": BOXES, "vocabulary": VOCAB, "return_masks": False} for p in photos] * 3
    with ThreadPoolExecutor(6) as pool:
        responses = list(pool.map(lambda b: _post(server, b), bodies))
    assert [r.status_code for r in responses] == [200] * len(bodies)
    ids = [r.json()["image_id"] for r in responses[:4]]
    assert len(set(ids)) == 4
    health = httpx.get(f"{server}/health", timeout=5).json()
    assert health["backend"] == "onnx" and health["cache_size"] == 3
    # Which three images the cache holds depends on the order the six threads finished in: ask twice, one after
    # the other, so that the second answer must come from the cache.
    _post(server, {"image": _png(photos[-1]), "boxes": BOXES, "vocabulary": VOCAB})
    last = _post(server, {"image": _png(photos[-1]), "boxes": BOXES, "vocabulary": VOCAB})
    assert last.json()["cached"] is True
    for photo in photos[:3]:  # three others after it: the cache of 3 has let it go
        _post(server, {"image": _png(photo[::2, ::2]), "boxes": [[0, 0, 9, 9]], "vocabulary": VOCAB})
    assert _post(server, {"image_id": last.json()["image_id"], "boxes": BOXES, "vocabulary": VOCAB}).status_code == 404


def test_the_torch_backend_serves_and_both_shut_down_cleanly(tiny_onnx_export):
    _, adapter = tiny_onnx_export
    process, url = _start("--config", "tiny", "--adapter", str(adapter))
    try:
        response = _post(url, {"image": _png(skimage_data.astronaut()), "boxes": BOXES, "vocabulary": VOCAB})
        assert response.status_code == 200, response.text
        assert httpx.get(f"{url}/health", timeout=5).json()["backend"] == "torch"
    finally:
        assert _stop(process) == 0
    with pytest.raises(httpx.TransportError):
        httpx.get(f"{url}/health", timeout=2)


def test_a_server_without_a_model_refuses_to_start():
    done = subprocess.run([sys.executable, "-m", "regionspot.serve"], capture_output=True, text=True, timeout=60)
    assert done.returncode == 1 and done.stderr.startswith("error: give exactly one of --onnx")
