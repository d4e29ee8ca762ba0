"""The dashboard (GET /ui) over real HTTP in front of a real worker, and in headless Chromium."""

from __future__ import annotations

import base64
import hashlib
import io
import json
import re
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from PIL import Image

from diagnostics import Splat
from generation.contract import WorkerMemory
from generation.front.dashboard import STATIC_DIR
from generation.front.memory_series import MemorySeries
from generation.front.worker_pool import WorkerHandle
from generation.testing import Service, running

SMALL = {"SPLATGEN_PROCEDURAL_GAUSSIANS": "20000"}
# Prompt text that would run script if it ever reached the page as HTML.
HOSTILE_PROMPT = "<img src=x onerror=\"document.title='pwned'\"><b>bold</b> red chair"
VENDORED = STATIC_DIR / "vendor"


def front_env(worker: Service, history_dir: Path, **extra: str) -> dict[str, str]:
    return {
        "SPLATGEN_WORKERS": worker.url,
        "SPLATGEN_WORKER_PROBE_INTERVAL_S": "0.3",
        "SPLATGEN_HISTORY_DIR": str(history_dir),
        "SPLATGEN_MEMORY_SAMPLE_INTERVAL_S": "0.2",
        "SPLATGEN_MEMORY_SAMPLES": "10",
        **extra,
    }


def wait_for(check: Callable[[], Any], timeout_s: float = 30.0, what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if value := check():
            return value
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


def png_b64(size: tuple[int, int] = (200, 120)) -> str:
    out = io.BytesIO()
    Image.new("RGB", size, (30, 160, 40)).save(out, "PNG")
    return base64.b64encode(out.getvalue()).decode()


class Stack:
    def __init__(self, worker: Service, front: Service, history_dir: Path) -> None:
        self.worker, self.front, self.history_dir = worker, front, history_dir
        self.served: dict[int, bytes] = {}

    def summary(self) -> dict[str, Any]:
        r = httpx.get(f"{self.front.url}/ui/api/summary", timeout=10)
        assert r.status_code == 200, r.text
        return r.json()

    def generation(self, gen_id: int) -> dict[str, Any]:
        return next(g for g in self.summary()["generations"] if g["id"] == gen_id)


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    tmp = tmp_path_factory.mktemp("dashboard")
    history_dir = tmp / "history"
    with (
        running("worker", tmp, SMALL) as worker,
        running("front", tmp, front_env(worker, history_dir)) as front,
    ):
        stack = Stack(worker, front, history_dir)
        text = httpx.post(f"{front.url}/generate/", data={"prompt": HOSTILE_PROMPT}, timeout=60)
        assert text.status_code == 200, text.text
        image = httpx.post(f"{front.url}/v1/generate", json={"image_b64": png_b64(), "seed": 3}, timeout=60)
        assert image.status_code == 200, image.text
        # Too few gaussians for the gates: refused, and counted under its outcome code.
        refused = httpx.post(
            f"{front.url}/v1/generate",
            json={"prompt": "a cup", "params": {"num_gaussians": 5000}},
            timeout=60,
        )
        assert refused.status_code == 503, refused.text
        stack.served = {1: text.content, 2: image.content}
        yield stack


def test_summary_lists_generations_newest_first_with_what_the_table_shows(stack: Stack) -> None:
    summary = stack.summary()
    newest, oldest = summary["generations"]
    assert (newest["id"], newest["kind"], newest["image_format"]) == (2, "image", "PNG")
    assert (oldest["id"], oldest["prompt"]) == (1, HOSTILE_PROMPT)
    for g in (newest, oldest):
        assert g["gaussians"] == 20000
        assert g["ply"] is True and g["ply_bytes"] == len(stack.served[g["id"]])
        assert g["gates"] == []
        assert isinstance(g["fixed"], bool)
        for key in ("opacity_mean_before", "opacity_std_before", "seconds", "time"):
            assert isinstance(g[key], float), key
        assert "stats" not in g
    assert summary["outcomes"] == {"ok": 2, "degenerate_output": 1}
    assert summary["workers"][0]["url"] == stack.worker.url and summary["workers"][0]["healthy"]
    assert summary["thresholds"]["memory_refuse_bytes"] > summary["thresholds"]["memory_cleanup_bytes"] > 0
    assert summary["history"]["on_disk"] is True and summary["history"]["count"] == 2
    # The full record, statistics included, is one more call away.
    full = httpx.get(f"{stack.front.url}/ui/api/generations/1").json()
    assert full["stats"]["count"] == 20000 and full["prompt"] == HOSTILE_PROMPT


def test_files_of_a_generation(stack: Stack) -> None:
    url = stack.front.url
    for gen_id, served in stack.served.items():
        r = httpx.get(f"{url}/ui/generations/{gen_id}.ply", timeout=10)
        assert r.status_code == 200
        assert r.content == served and int(r.headers["content-length"]) == len(served)
        assert len(Splat.from_ply_bytes(r.content)) == 20000
    wait_for(lambda: all(stack.generation(i)["preview"] == "ready" for i in (1, 2)), 60, "previews")
    preview = Image.open(io.BytesIO(httpx.get(f"{url}/ui/generations/1/preview.png").content))
    assert preview.format == "PNG" and preview.size == (320, 320)
    thumb_r = httpx.get(f"{url}/ui/generations/2/thumbnail.png")
    thumb = Image.open(io.BytesIO(thumb_r.content))
    assert thumb.format == "PNG" and max(thumb.size) == 96
    assert stack.generation(2)["thumbnail"] is True
    for missing in ("/ui/generations/99.ply", "/ui/generations/1/thumbnail.png", "/ui/api/generations/99"):
        r = httpx.get(url + missing)
        assert r.status_code == 404 and r.json()["error"] == "not_found", missing
    # Written where SPLATGEN_HISTORY_DIR points, nothing half-written left behind.
    names = sorted(p.name for p in stack.history_dir.iterdir())
    assert "00000001.ply" in names and "00000002.thumb.png" in names
    assert not [n for n in names if n.endswith(".tmp")]


def test_memory_series_is_a_bounded_ring_per_process(stack: Stack) -> None:
    url = stack.front.url

    def full() -> dict[str, Any] | None:
        body = httpx.get(f"{url}/ui/api/memory").json()
        return body if len(body["times"]) == 10 else None

    body = wait_for(full, 20, "ten samples")

    def newer() -> dict[str, Any] | None:
        later = httpx.get(f"{url}/ui/api/memory").json()
        return later if later["times"][-1] > body["times"][-1] else None

    later = wait_for(newer, 20, "a sample after the first ten")
    assert len(later["times"]) == 10
    assert later["times"] == sorted(later["times"])
    front, worker = later["processes"]
    assert front["kind"] == "front" and worker["name"] == stack.worker.url
    assert all(v > 10 * 1024 * 1024 for v in front["rss"])
    assert all(v is None or v > 10 * 1024 * 1024 for v in worker["rss"])
    assert worker["gpu"] is None


def test_memory_series_unit_ring_buffer() -> None:
    memory = WorkerMemory(pid=1, rss_bytes=5, gpu={"reserved_bytes": 3, "total_bytes": 8})
    worker = WorkerHandle("http://w", memory=memory)
    silent = WorkerHandle("http://silent")
    rss = iter(range(100, 200))
    series = MemorySeries([worker, silent], capacity=4, interval_s=2.0, front_rss=lambda: next(rss))
    for _ in range(7):
        series.sample()
    body = series.to_dict()
    assert len(series) == 4 and len(body["times"]) == 4
    front, w, s = body["processes"]
    assert front["rss"] == [103, 104, 105, 106]
    assert w["rss"] == [5] * 4 and w["gpu"] == [3] * 4 and w["gpu_total"] == 8
    assert s["rss"] == [None] * 4 and s["gpu"] is None


def test_page_and_assets_are_all_local(stack: Stack) -> None:
    r = httpx.get(f"{stack.front.url}/ui")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
    csp = r.headers["content-security-policy"]
    assert "default-src 'self'" in csp and "http" not in csp
    html = r.text
    referenced = re.findall(r'(?:src|href)="([^"]+)"', html)
    referenced += re.findall(r'"(/ui/static/[^"]+)"', html)
    assert referenced and all(u.startswith(("/ui/", "data:")) for u in referenced), referenced
    for path in referenced:
        if path.startswith("/ui/static/") and not path.endswith("/"):
            assert httpx.get(stack.front.url + path).status_code == 200, path
    # Our own scripts load nothing from another origin.
    for script in STATIC_DIR.glob("*.js"):
        assert not re.search(r"(import|fetch)\s*\(?\s*[\"']https?:", script.read_text()), script


def test_vendored_viewer_matches_its_manifest_and_licences() -> None:
    manifest = (VENDORED / "VENDORED.txt").read_text().splitlines()
    assert any(line.startswith("@sparkjsdev/spark 2.") for line in manifest)
    assert any(line.startswith("three 0.") for line in manifest)
    listed = [line.split() for line in manifest if re.match(r"^[0-9a-f]{64}  ", line)]
    assert {name for _, name in listed} >= {"spark/LICENSE", "three/LICENSE", "spark/spark.module.min.js"}
    for digest, name in listed:
        assert hashlib.sha256((VENDORED / name).read_bytes()).hexdigest() == digest, name
    for licence in ("spark/LICENSE", "three/LICENSE"):
        assert "Permission is hereby granted, free of charge" in (VENDORED / licence).read_text()


def test_history_survives_a_restart(stack: Stack, tmp_path: Path) -> None:
    wait_for(lambda: all(stack.generation(i)["preview"] == "ready" for i in (1, 2)), 60, "previews")
    copy = tmp_path / "history"
    shutil.copytree(stack.history_dir, copy)
    with running("front", tmp_path, front_env(stack.worker, copy)) as again:
        rows = httpx.get(f"{again.url}/ui/api/summary").json()["generations"]
        assert [(g["id"], g["ply"], g["preview"]) for g in rows] == [(2, True, "ready"), (1, True, "ready")]
        assert rows[1]["prompt"] == HOSTILE_PROMPT
        assert httpx.get(f"{again.url}/ui/generations/1.ply").content == stack.served[1]


def test_token_guards_the_dashboard(stack: Stack, tmp_path: Path) -> None:
    env = front_env(stack.worker, tmp_path / "h", SPLATGEN_API_TOKEN="tok")
    with running("front", tmp_path, env) as guarded:
        for path in ("/ui", "/ui/api/summary", "/ui/static/dashboard.js", "/ui/generations/1.ply"):
            assert httpx.get(guarded.url + path).status_code == 401, path
        ok = httpx.get(f"{guarded.url}/ui/api/summary", headers={"Authorization": "Bearer tok"})
        assert ok.status_code == 200 and ok.json()["generations"] == []


# The browser.


def _chromium() -> tuple[str, str]:
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    driver = shutil.which("chromedriver")
    if not browser or not driver:
        pytest.skip("Debian chromium + chromium-driver are not installed")
    return browser, driver


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    binary, driver_path = _chromium()
    webdriver = pytest.importorskip("selenium.webdriver")
    profile = tempfile.mkdtemp(prefix="splatgen-chromium-")
    options = webdriver.ChromeOptions()
    options.binary_location = binary
    for arg in (
        "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync",
        "--disable-dev-shm-usage", f"--user-data-dir={profile}", "--window-size=1400,1000",
        # WebGL on the CPU: ANGLE over SwiftShader.
        "--use-gl=angle", "--use-angle=swiftshader", "--enable-unsafe-swiftshader",
    ):  # fmt: skip
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL", "performance": "ALL"})
    driver = webdriver.Chrome(service=webdriver.ChromeService(executable_path=driver_path), options=options)
    # WebGL here is SwiftShader on the CPU: on a loaded 2-core machine the frames drawn while the camera's
    # damping settles after a drag can hold the page's main thread for tens of seconds, and a script waits
    # for it. The limit only bounds a hung browser (selenium's default of 30 s flipped the test under load).
    driver.set_script_timeout(300)
    try:
        yield driver
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


def _requested_urls(driver: Any) -> list[str]:
    """Every request a web page made (the browser's own chrome:// pages, e.g. its new-tab page, left out)."""
    urls = []
    for entry in driver.get_log("performance"):
        message = json.loads(entry["message"])["message"]
        if message.get("method") != "Network.requestWillBeSent":
            continue
        if message["params"].get("documentURL", "").startswith("chrome://"):
            continue
        urls.append(message["params"]["request"]["url"])
    return urls


def _severe(driver: Any) -> list[str]:
    return [e["message"] for e in driver.get_log("browser") if e["level"] == "SEVERE"]


def _canvas_pixels(driver: Any) -> np.ndarray:
    data_url = driver.execute_script(
        "return document.querySelector('#viewer-stage canvas').toDataURL('image/png')"
    )
    png = base64.b64decode(data_url.split(",", 1)[1])
    return np.asarray(Image.open(io.BytesIO(png)).convert("RGBA"))


@pytest.mark.browser
def test_dashboard_in_a_browser(stack: Stack, browser: Any, tmp_path: Path) -> None:
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By

    origin = stack.front.url
    browser.get(f"{origin}/ui")
    wait_for(lambda: int(browser.execute_script("return document.body.dataset.polls || 0")) >= 2, 20, "polls")
    rows = browser.find_elements(By.CSS_SELECTOR, "#generations tbody tr")
    assert [r.get_attribute("data-id") for r in rows] == ["2", "1"]
    # The hostile prompt is shown as text: no element made from it, no script run.
    prompt_cell = rows[1].find_element(By.CSS_SELECTOR, "td.prompt")
    assert prompt_cell.get_attribute("textContent") == HOSTILE_PROMPT
    assert not prompt_cell.find_elements(By.CSS_SELECTOR, "img, b")
    assert browser.title == "splatgen dashboard"
    assert rows[0].find_element(By.CSS_SELECTOR, "td.prompt img").get_attribute("naturalWidth") == "96"
    wait_for(lambda: browser.find_elements(By.CSS_SELECTOR, "tr[data-id='1'] img.preview-img"), 30, "preview")
    outcomes = browser.find_elements(By.CSS_SELECTOR, "#outcomes li")
    assert {o.get_attribute("data-outcome") for o in outcomes} == {"ok", "degenerate_output"}
    assert len(browser.find_elements(By.CSS_SELECTOR, "#memory-chart path.series")) == 2
    assert len(browser.find_elements(By.CSS_SELECTOR, "#memory-chart line.threshold")) == 2
    browser.save_screenshot(str(tmp_path / "dashboard.png"))

    browser.find_element(By.CSS_SELECTOR, "#generations tr[data-id='1']").click()
    state = wait_for(
        lambda: (
            browser.find_element(By.ID, "viewer").get_attribute("data-state") in ("ready", "error")
            and browser.find_element(By.ID, "viewer").get_attribute("data-state")
        ),
        60,
        "the viewer",
    )
    status = browser.find_element(By.ID, "viewer-status").text
    assert state == "ready", status
    assert browser.find_element(By.ID, "viewer-title").get_attribute("textContent").endswith(HOSTILE_PROMPT)

    def splat_mask() -> tuple[np.ndarray] | None:
        pixels = _canvas_pixels(browser)
        # A frame was drawn (opaque white background) and the splat covers part of it.
        if (pixels[..., 3] == 255).mean() < 0.99:
            return None
        mask = (pixels[..., :3] < 235).any(axis=2)
        return (mask,) if 0.01 < mask.mean() < 0.9 else None

    (first,) = wait_for(splat_mask, 30, "splat pixels on the canvas")
    browser.save_screenshot(str(tmp_path / "viewer.png"))
    # Dragging orbits the camera: the picture changes.
    canvas = browser.find_element(By.CSS_SELECTOR, "#viewer-stage canvas")
    ActionChains(browser).click_and_hold(canvas).move_by_offset(160, 0).release().perform()
    wait_for(lambda: (now := splat_mask()) is not None and (now[0] != first).mean() > 0.01, 30, "an orbit")

    urls = _requested_urls(browser)
    urls += browser.execute_script("return performance.getEntriesByType('resource').map(e => e.name)")
    outside = [u for u in urls if not u.startswith((origin + "/", "data:", "blob:"))]
    assert not outside, outside
    assert f"{origin}/ui/static/vendor/spark/spark.module.min.js" in urls
    assert _severe(browser) == []
    assert browser.title == "splatgen dashboard"
