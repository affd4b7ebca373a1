"""regionspot-serve under load: N concurrent clients on 127.0.0.1, a fixed number of requests each.

    python benchmarks/bench_serve.py                                  # tiny config, ONNX backend
    python benchmarks/bench_serve.py --clients 1 4 16 --requests 64 --regions 100
    python benchmarks/bench_serve.py --config regionspot_bb --random-weights --requests 8

Starts the server (the ONNX export of onnx_setup.py, or --backend torch) on a free port of 127.0.0.1, then, per
client count, two runs: "new image" (every request sends a different photo: scikit-image's, cropped and flipped
differently, so each is embedded) and "same image" (one photo sent once, then every request asks new regions of it
by image_id). Reports requests/s, p50/p95 latency, errors (non-200 answers; 5xx counted apart) and the server's
peak memory (VmHWM). Only 127.0.0.1 is ever contacted.
"""

from __future__ import annotations

import argparse
import base64
import io
import os
import signal
import socket
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import onnx_setup
from bench_onnx import random_boxes
from PIL import Image
from skimage import data as skimage_data

PHOTOS = (skimage_data.astronaut, skimage_data.coffee, skimage_data.chelsea, skimage_data.rocket)


def distinct_photos(count: int, start: int) -> list[np.ndarray]:
    """`count` different images (the photos in turn, numbered from `start` in their first pixels' bytes: each hashes
    apart, so the server embeds each, at the cost of a real photo)."""
    images = []
    for i in range(start, start + count):
        rgb = PHOTOS[i % len(PHOTOS)]().copy()
        rgb[0, :2] = np.frombuffer(i.to_bytes(6, "little"), np.uint8).reshape(2, 3)
        images.append(rgb)
    return images


def png64(rgb: np.ndarray) -> str:
    buffer = io.BytesIO()
    Image.fromarray(rgb).save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode()


def start_server(args: list[str]) -> tuple[subprocess.Popen, str]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    process = subprocess.Popen([sys.executable, "-m", "regionspot.serve", *args, "--port", str(port)])
    url = f"http://127.0.0.1:{port}"
    for _ in range(600):
        try:
            if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                return process, url
        except httpx.TransportError:
            time.sleep(0.5)
    process.kill()
    raise RuntimeError("the server did not start")


def peak_rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def load(url: str, bodies: list[dict], clients: int) -> dict:
    """Send `bodies` from `clients` threads (each its own connection); latencies and status codes."""

    def send(body: dict) -> tuple[float, int]:
        start = time.perf_counter()
        try:
            response = httpx.post(f"{url}/predict", json=body, timeout=600)
            status = response.status_code
            if status != 200:
                print(f"# {status}: {response.text[:200]}", flush=True)
        except httpx.TransportError:
            status = 0  # dropped
        return time.perf_counter() - start, status

    start = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        results = list(pool.map(send, bodies))
    wall = time.perf_counter() - start
    latencies = sorted(t for t, _ in results)
    statuses = [s for _, s in results]
    return {
        "rps": len(bodies) / wall,
        "p50": statistics.median(latencies) * 1e3,
        "p95": latencies[min(len(latencies) - 1, int(0.95 * len(latencies)))] * 1e3,
        "errors": sum(s != 200 for s in statuses),
        "5xx": sum(s >= 500 or s == 0 for s in statuses),
    }


def report(case: str, clients: int, row: dict) -> None:
    print(f"| {case} | {clients} | {row['rps']:.2f} | {row['p50']:.0f} | {row['p95']:.0f} | {row['errors']} | "
          f"{row['5xx']} |", flush=True)  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", default="tiny")
    parser.add_argument("--one-template", action="store_true", help="names as '{}.' alone (see onnx_setup.py)")
    parser.add_argument("--random-weights", action="store_true")
    parser.add_argument("--backend", choices=("onnx", "torch"), default="onnx")
    parser.add_argument("--clients", type=int, nargs="+", default=[1, 4, 16])
    parser.add_argument("--requests", type=int, default=48, help="requests per run (all clients together)")
    parser.add_argument("--regions", type=int, default=10)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--providers", nargs="+", help="the ONNX server's onnxruntime providers (default CPU)")
    args = parser.parse_args()
    work, config = onnx_setup.held_config_of(args)
    if args.backend == "onnx":
        source = [
            "--onnx",
            str(onnx_setup.exported(config, work)),
            *(["--providers", *args.providers] if args.providers else []),
        ]
    else:
        source = ["--config", args.config, "--adapter", config.adapter.checkpoint]
    process, url = start_server([*source, "--threads", str(args.threads), "--cache-size", "32"])
    names = [f"object number {i}" for i in range(80)]
    print(f"# {args.config} ({args.backend}), {args.requests} requests per run, {args.regions} boxes, 80 names, "
          f"server threads {args.threads}, {os.cpu_count()} CPUs")  # fmt: skip
    print("\n| case | clients | req/s | p50 (ms) | p95 (ms) | errors | 5xx or dropped |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    try:
        photo = skimage_data.astronaut()
        # inside the smallest photo (chelsea, 300 x 451), so that every box fits every image
        boxes = [random_boxes(args.regions, 300, 450, seed=i).tolist() for i in range(args.requests)]
        photo64 = png64(photo)
        for clients in args.clients:
            images = [png64(p) for p in distinct_photos(args.requests, start=1 + 10_000 * clients)]
            new = [{"image": i, "boxes": b, "vocabulary": names} for i, b in zip(images, boxes, strict=True)]
            report("new image", clients, load(url, new, clients))
            # sent once (again: the new-image run has pushed it out of the cache), then asked by its id
            first = httpx.post(
                f"{url}/predict", json={"image": photo64, "boxes": boxes[0], "vocabulary": names}, timeout=600
            ).json()
            same = [{"image_id": first["image_id"], "boxes": b, "vocabulary": names} for b in boxes]
            report("same image", clients, load(url, same, clients))
        print(f"\nserver peak memory (VmHWM): {peak_rss_mib(process.pid):.0f} MiB")
    finally:
        process.send_signal(signal.SIGINT)
        process.wait(timeout=60)


if __name__ == "__main__":
    main()
