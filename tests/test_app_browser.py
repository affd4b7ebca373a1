"""The web app as a user starts it, `python -m regionspot.app` (no arguments, so tiny random backbones): what it
prints on starting; then driven in Debian's headless chromium by Playwright: load the page, upload a photo, draw a
box by two clicks and type another, give a vocabulary, recognise, read the labels in the table, see the message for
an empty vocabulary, and save a screenshot.

Nothing downloads a browser: the test uses /usr/bin/chromium (`apt-get install chromium`; `.ci/run` installs it).
Without it the test skips, except where REGIONSPOT_REQUIRE_BROWSER=1 (CI), where it fails.
"""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from PIL import Image
from skimage import data

CHROMIUM = Path("/usr/bin/chromium")
# Headless, and quiet on a closed network: without the background-networking flags chromium keeps trying (and
# failing) to reach Google's services.
CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]  # fmt: skip
START_TIMEOUT_S = 120  # importing torch and gradio and building the model on a busy 2-core machine
VOCABULARY = ["person", "flag", "sky"]
TYPED_BOX = "140, 20, 330, 240"
CLICKED = ((350, 20), (500, 250))  # two corners of a box, in the photo's pixels


@pytest.fixture
def sync_playwright():
    """Playwright's sync API, or a skip (a failure where REGIONSPOT_REQUIRE_BROWSER=1) saying what is missing."""
    missing = None
    try:
        from playwright.sync_api import sync_playwright as api
    except ImportError:
        missing = "Playwright's Python package is not installed (pip install -e '.[dev]')"
    if missing is None and not CHROMIUM.is_file():
        missing = f"no browser at {CHROMIUM}: apt-get install chromium (the test never downloads one)"
    if missing is None:
        return api
    if os.environ.get("REGIONSPOT_REQUIRE_BROWSER") == "1":
        pytest.fail(f"REGIONSPOT_REQUIRE_BROWSER=1 but {missing}")
    pytest.skip(missing)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextlib.contextmanager
def started_app(folder: Path):
    """`python -m regionspot.app --port P` run from `folder` (empty: no demo outputs), as a user starts it: its URL
    and log once it answers; stopped on leaving."""
    port, log = _free_port(), folder / "app.log"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "OMP_WAIT_POLICY": "PASSIVE", "GRADIO_ANALYTICS_ENABLED": "False"}
    with log.open("w") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "regionspot.app", "--port", str(port)],
            cwd=folder, env=env, stdout=out, stderr=subprocess.STDOUT,
        )  # fmt: skip
    url = f"http://127.0.0.1:{port}/"
    try:
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            if process.poll() is not None:
                pytest.fail(f"the app exited with {process.returncode}:\n{log.read_text()}")
            try:
                urllib.request.urlopen(url, timeout=2).close()
                break
            except OSError:
                if time.monotonic() > deadline:
                    pytest.fail(f"the app did not answer on {url} in {START_TIMEOUT_S} s:\n{log.read_text()}")
                time.sleep(0.5)
        yield url, log
    finally:
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@pytest.fixture
def served(sync_playwright, tmp_path):
    """The app started (once a browser is known to be there): its URL and log."""
    with started_app(tmp_path) as (url, log):
        yield url, log


def test_the_app_says_where_it_listens_and_never_offers_to_share(tmp_path):
    """It never shares (share=False): Gradio's start-up hint "set share=True" would only mislead."""
    with started_app(tmp_path) as (url, log):
        time.sleep(1)  # whatever the server prints after it first answers
        printed = log.read_text()
    assert "share=True" not in printed and "public link" not in printed, printed
    assert f"regionspot app: open {url.rstrip('/')}" in printed and "serving tiny random backbones" in printed, printed


def test_the_app_names_a_drawn_and_a_typed_box_in_a_real_browser(sync_playwright, served, tmp_path):
    url, log = served
    assert "serving tiny random backbones" in log.read_text()  # the log says which model, and so does the page
    photo = tmp_path / "astronaut.png"
    Image.fromarray(data.astronaut()).save(photo)
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            page.set_default_timeout(60_000)
            page.goto(url, wait_until="load")
            assert "tiny random backbones" in page.locator("#model-description").inner_text()

            page.locator("#upload input[type=file]").set_input_files(photo)
            page.wait_for_function("() => document.querySelector('#canvas img')?.naturalWidth === 512")
            _click_pixels(page, CLICKED)
            page.wait_for_function(
                "() => document.querySelector('#boxes textarea').value.trim().length > 0", timeout=30_000
            )
            clicked = page.locator("#boxes textarea").input_value()
            corners = [float(v) for v in clicked.split(",")]
            assert corners == pytest.approx([*CLICKED[0], *CLICKED[1]], abs=2), clicked  # the photo's own pixels

            page.locator("#boxes textarea").fill(f"{clicked}\n{TYPED_BOX}")
            page.locator("#vocab textarea").fill(", ".join(VOCABULARY))
            page.locator("#recognise").click()
            table = page.locator("#labels")
            page.wait_for_function("() => document.querySelector('#labels').innerText.includes('140, 20, 330, 240')")
            rows = _table_rows(table.inner_text())
            assert [row[:2] for row in rows] == [["1", "box"], ["2", "box"]], rows
            for row in rows:  # "sky 0.52, flag 0.32, person 0.16": every name from the vocabulary, with a score
                named = [part.rsplit(" ", 1) for part in row[3].split(", ")]
                assert sorted(name for name, _ in named) == sorted(VOCABULARY), row
                assert all(0 <= float(score) <= 1 for _, score in named), row
            page.locator("#picture img").wait_for()

            shot = tmp_path / "app.png"
            page.screenshot(path=str(shot), full_page=True)
            assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and shot.stat().st_size > 10_000
            with Image.open(shot) as picture:
                assert picture.width >= 1400 and picture.height >= 1000

            page.locator("#vocab textarea").fill(" ")
            page.locator("#recognise").click()
            page.get_by_text("the vocabulary is empty").first.wait_for()
        finally:
            browser.close()


def _click_pixels(page, pixels) -> None:
    """Click the canvas at image pixels (x, y), each click once the last one's marks are drawn (the shown image
    may be scaled to fit its box)."""
    for x, y in pixels:
        canvas = page.locator("#canvas img")
        shown = canvas.bounding_box()
        width, height, before = canvas.evaluate("img => [img.naturalWidth, img.naturalHeight, img.src]")
        canvas.click(position={"x": x * shown["width"] / width, "y": y * shown["height"] / height})
        page.wait_for_function("src => document.querySelector('#canvas img')?.src !== src", arg=before)


def _table_rows(text: str) -> list[list[str]]:
    """The rows of the Regions table's text (cells split by tabs or lines), header and label left out."""
    cells = [cell.strip() for cell in text.replace("\t", "\n").splitlines() if cell.strip()]
    start = cells.index("mask px") + 1
    return [cells[i : i + 6] for i in range(start, len(cells), 6)]
