"""The page in a real headless Chromium (Debian's chromium and chromium-driver, driven by Selenium):
it loads without console errors, an image chosen in the file input shows its overlay, the score
slider hides low-score instances, and the dataset grid opens an image with its ground truth beside
the prediction. Screenshots are kept in a temporary folder (printed when the module ends; ``INSTASEG_SCREENSHOTS``
names another)."""

from __future__ import annotations

import base64
import io
import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from instaseg.data.image_io import read_image
from instaseg.structures.masks import rle_to_bitmap
from tests.serve._client import post_image, request
from tests.serve.conftest import THRESHOLD, Served

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMEDRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"
pytestmark = pytest.mark.skipif(not (Path(CHROMIUM).is_file() and Path(CHROMEDRIVER).is_file()),
                                reason="browser tests need Debian's chromium and chromium-driver "
                                       "(apt-get install chromium chromium-driver; .ci/run installs them)")
webdriver = pytest.importorskip("selenium.webdriver", reason="browser tests need selenium (the test extra)")
from selenium.webdriver.common.action_chains import ActionChains  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402

WAIT_SECONDS = 120  # a shared, busy CPU: the model may take seconds per image


@pytest.fixture(scope="module")
def shots(tmp_path_factory) -> Path:
    """The screenshots' folder: $INSTASEG_SCREENSHOTS (a temporary folder to keep them past pytest's
    rotation of its own), else one under pytest's temporary root."""
    chosen = os.environ.get("INSTASEG_SCREENSHOTS")
    folder = Path(chosen) if chosen else tmp_path_factory.mktemp("serve_shots")
    folder.mkdir(parents=True, exist_ok=True)
    yield folder
    print(f"\nbrowser screenshots: {folder}")


@pytest.fixture(scope="module")
def browser(served: Served):
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                     "--window-size=1200,900", "--disable-extensions", "--no-first-run"):
        options.add_argument(argument)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(options=options, service=webdriver.ChromeService(executable_path=CHROMEDRIVER))
    driver.set_script_timeout(WAIT_SECONDS)
    yield driver
    driver.quit()


def _open(browser, served: Served) -> None:
    browser.get(served.url + "/")
    WebDriverWait(browser, WAIT_SECONDS).until(lambda d: d.find_element(By.TAG_NAME, "body").get_attribute("data-ready"))


def _console_errors(browser) -> list[str]:
    return [entry["message"] for entry in browser.get_log("browser") if entry["level"] == "SEVERE"]


def _canvas_pixels(browser, canvas_id: str) -> np.ndarray:
    url = browser.execute_script(f"return document.getElementById('{canvas_id}').toDataURL('image/png');")
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(url.split(",", 1)[1]))).convert("RGB"))


def _set_slider(browser, value: float) -> None:
    browser.execute_script("const s = document.getElementById('score'); s.value = arguments[0];"
                           "s.dispatchEvent(new Event('input'));", str(value))


def _shown(browser, canvas_id: str) -> int:
    return int(browser.find_element(By.ID, canvas_id).get_attribute("data-shown"))


def test_page_loads_without_console_errors(browser, served: Served, shots: Path) -> None:
    _open(browser, served)
    assert browser.title == "instaseg serve"
    assert "mask_rcnn_r18_fpn_tiny" in browser.find_element(By.ID, "model-name").text
    toggles = browser.find_elements(By.CSS_SELECTOR, "#classes input[type=checkbox]")
    assert len(toggles) == served.dataset.num_classes
    assert browser.find_element(By.ID, "tab-review").is_displayed()
    assert float(browser.find_element(By.ID, "score").get_attribute("value")) == THRESHOLD
    browser.save_screenshot(str(shots / "page.png"))
    assert _console_errors(browser) == []


def test_chosen_image_shows_its_overlay_and_the_slider_hides_low_scores(browser, served: Served, shots: Path) -> None:
    path = sorted(served.image_dir.glob("*.png"))[1]
    found = post_image(served.url, path.read_bytes(), "?score_threshold=0").json()["instances"]
    scores = sorted(d["score"] for d in found)
    assert len(scores) >= 2 and scores[0] < scores[-1]
    _open(browser, served)
    _set_slider(browser, 0.0)
    browser.find_element(By.ID, "file").send_keys(str(path))
    WebDriverWait(browser, WAIT_SECONDS).until(
        lambda d: d.find_element(By.ID, "predict-canvas").get_attribute("data-shown") is not None)
    assert _shown(browser, "predict-canvas") == len(found)
    original = read_image(path)
    drawn = _canvas_pixels(browser, "predict-canvas")
    union = np.any([rle_to_bitmap(d["mask"]) for d in found], axis=0)
    changed = np.any(drawn != original, axis=2)
    assert changed.any() and not changed[~union].any()  # the overlay is drawn on the masks, nowhere else
    browser.save_screenshot(str(shots / "predict_all.png"))

    cut = round((scores[len(scores) // 2] + scores[len(scores) // 2 - 1]) / 2, 2)
    kept = [d for d in found if d["score"] >= cut]
    _set_slider(browser, cut)
    assert _shown(browser, "predict-canvas") == len(kept) < len(found)
    after = np.any(_canvas_pixels(browser, "predict-canvas") != original, axis=2)
    hidden = np.any([rle_to_bitmap(d["mask"]) for d in found if d["score"] < cut], axis=0)
    kept_union = np.any([rle_to_bitmap(d["mask"]) for d in kept], axis=0) if kept else np.zeros_like(union)
    assert after.sum() < changed.sum() and not after[hidden & ~kept_union].any()
    assert f"{len(kept)} of {len(found)} instances shown" in browser.find_element(By.ID, "predict-status").text
    browser.save_screenshot(str(shots / "predict_slider.png"))
    _hover_names_the_instance(browser, kept)
    assert _console_errors(browser) == []


def _hover_names_the_instance(browser, kept: list[dict]) -> None:
    """The pointer over the smallest shown instance: the tooltip says its class and score."""
    areas = [rle_to_bitmap(d["mask"]).sum() for d in kept]
    target = kept[int(np.argmin(areas))]
    mask = rle_to_bitmap(target["mask"])
    inside = mask.copy()  # pixels whose 3x3 neighbourhood is in the mask: rounding cannot leave it
    inside[1:-1, 1:-1] &= mask[:-2, 1:-1] & mask[2:, 1:-1] & mask[1:-1, :-2] & mask[1:-1, 2:]
    ys, xs = np.nonzero(inside if inside.any() else mask)
    y, x = int(ys[len(ys) // 2]), int(xs[len(xs) // 2])
    canvas = browser.find_element(By.ID, "predict-canvas")
    size = canvas.size  # displayed CSS pixels; offsets are from the element's centre
    scale_x, scale_y = size["width"] / int(canvas.get_attribute("width")), size["height"] / int(canvas.get_attribute("height"))
    ActionChains(browser).move_to_element_with_offset(
        canvas, int((x + 0.5) * scale_x - size["width"] / 2), int((y + 0.5) * scale_y - size["height"] / 2)).perform()
    tooltip = browser.find_element(By.ID, "tooltip")
    WebDriverWait(browser, 10).until(lambda d: tooltip.is_displayed())
    assert tooltip.text == f"{target['category_name']} {target['score']:.2f}"


def test_dataset_grid_opens_truth_beside_prediction(browser, served: Served, shots: Path) -> None:
    _open(browser, served)
    browser.find_element(By.ID, "tab-review").click()
    WebDriverWait(browser, WAIT_SECONDS).until(lambda d: len(d.find_elements(By.CSS_SELECTOR, "#grid .card")) == 6)
    WebDriverWait(browser, WAIT_SECONDS).until(lambda d: d.execute_script(
        "return [...document.querySelectorAll('#grid img')].every((i) => i.complete && i.naturalWidth > 0);"))
    rows = request(served.url, path="/v1/review/images").json()
    cards = browser.find_elements(By.CSS_SELECTOR, "#grid .card")
    assert [int(c.get_attribute("data-image-id")) for c in cards] == [r["image_id"] for r in rows]  # worst first
    browser.save_screenshot(str(shots / "review_grid.png"))
    cards[0].click()
    WebDriverWait(browser, WAIT_SECONDS).until(
        lambda d: d.find_element(By.ID, "pred-canvas").get_attribute("data-total") is not None)
    detail = request(served.url, path=f"/v1/review/images/{rows[0]['image_id']}").json()
    truth, prediction = browser.find_element(By.ID, "truth-canvas"), browser.find_element(By.ID, "pred-canvas")
    assert int(truth.get_attribute("data-total")) == int(truth.get_attribute("data-shown")) == len(detail["truth"]) > 0
    assert int(prediction.get_attribute("data-total")) == len(detail["predictions"])
    assert truth.is_displayed() and prediction.is_displayed()
    assert truth.location["y"] == prediction.location["y"] and truth.location["x"] < prediction.location["x"]
    assert not browser.find_element(By.ID, "grid").is_displayed()
    assert f"missed {detail['missed']}" in browser.find_element(By.ID, "detail-title").text
    browser.save_screenshot(str(shots / "review_detail.png"))
    assert _console_errors(browser) == []
    (shots / "shots.json").write_text(json.dumps(sorted(p.name for p in shots.glob("*.png"))))
