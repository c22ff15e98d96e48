"""``instaseg serve`` with a keypoint model without masks: keypoints in the API's JSON and the model
info, no masks, joints and limbs in the PNG overlay, and a dataset review that matches by boxes."""

from __future__ import annotations

import base64
import io
import math
import shutil
import threading
import time

import numpy as np
import pytest
import torch
from PIL import Image

from instaseg.data.coco import CocoDataset
from instaseg.data.synthetic_keypoints import FIGURE_SKELETON, generate_keypoint_dataset
from instaseg.hub import model_from_config, resolve_config
from instaseg.serve import DatasetReview, InferenceGate, Limits, ModelService, create_app
from instaseg.structures.instances import Instances
from instaseg.viz.overlay import PALETTE
from tests.serve._client import multipart, request
from tests.serve.conftest import free_port

K = 13
SIZE = 64


def _figure() -> torch.Tensor:
    """(1, K, 3): the joints on a circle at pixel centres, every score 1 but the last one's (-1)."""
    angles = torch.arange(K, dtype=torch.float32) * (2 * math.pi / K)
    xs, ys = (34 + 18 * angles.cos()).floor() + 0.5, (38 + 18 * angles.sin()).floor() + 0.5
    scores = torch.ones(K)
    scores[-1] = -1.0
    return torch.stack([xs, ys, scores], dim=1)[None]


def _known(images: list[torch.Tensor]) -> list[Instances]:
    return [Instances(boxes=torch.tensor([[2.0, 2.0, 62.0, 62.0]]), scores=torch.tensor([0.9]),
                      labels=torch.tensor([0]), masks=None, keypoints=_figure()) for _ in images]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    import uvicorn

    root = tmp_path_factory.mktemp("serve_keypoints")
    data = generate_keypoint_dataset(root / "data", num_images=3, image_size=SIZE, seed=1, val_fraction=0.34)
    dataset = CocoDataset(data.train_annotations, data.train_images)
    torch.manual_seed(0)
    config = resolve_config("keypoint_rcnn_r18_fpn_tiny", dataset.num_classes)
    service = ModelService.from_model(model_from_config(config).eval(), config, dataset.category_names,
                                      dataset.category_ids, gate=InferenceGate(workers=1, queue=8),
                                      keypoints=dataset.keypoint_schema)
    service.predictor.predict = _known  # a known detection: the pictures and the JSON can be checked exactly
    review = DatasetReview(dataset, service, 0.5)
    app = create_app(service, review, Limits(score_threshold=0.5), allowed_hosts=("127.0.0.1",))
    port = free_port()
    uv = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=uv.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 60
    while not (uv.started and review.status()["finished"]):
        assert thread.is_alive() and time.monotonic() < deadline, "the test server did not start"
        time.sleep(0.05)
    yield f"http://127.0.0.1:{port}", review
    uv.should_exit = True
    thread.join(10)


def _post(url: str, query: str = ""):
    buffer = io.BytesIO()
    Image.fromarray(np.full((SIZE, SIZE, 3), 128, np.uint8)).save(buffer, format="PNG")
    body, headers = multipart("file", "gray.png", buffer.getvalue())
    return request(url, "POST", f"/v1/predict{query}", body, headers)


def test_predict_json_has_keypoints_and_no_mask(server):
    url, _ = server
    answer = _post(url)
    assert answer.status == 200, answer.body
    [instance] = answer.json()["instances"]
    assert instance["mask"] is None
    assert np.allclose(instance["keypoints"], _figure()[0].tolist())  # the boxes' continuous frame
    info = request(url, path="/v1/model").json()
    assert info["keypoints"]["skeleton"] == [list(p) for p in FIGURE_SKELETON]
    assert len(info["keypoints"]["names"]) == K and info["keypoints"]["threshold"] == 0.0


def test_overlay_png_draws_joints_and_limbs(server):
    url, _ = server
    answer = _post(url, "?overlay=true")
    assert answer.status == 200 and answer.headers["content-type"] == "image/png"
    picture = np.asarray(Image.open(io.BytesIO(answer.body)).convert("RGB")).astype(int)
    points = _figure()[0]
    shown = [(a, b) for a, b in FIGURE_SKELETON if K - 1 not in (a, b)]
    for joint in {j for pair in shown for j in pair}:
        assert (picture[int(points[joint, 1]), int(points[joint, 0])] >= 230).all(), joint
    a, b = shown[0]
    along = [points[a, :2] + t * (points[b, :2] - points[a, :2]) for t in torch.linspace(0.2, 0.8, 13)]
    spot = max(along, key=lambda p: float((points[:, :2] - p).norm(dim=1).min()))
    patch = picture[int(spot[1]) - 1:int(spot[1]) + 2, int(spot[0]) - 1:int(spot[0]) + 2].reshape(-1, 3)
    assert (np.abs(patch - PALETTE[0].astype(int)).sum(axis=1) <= 30).any()
    hidden = points[K - 1]
    assert (picture[int(hidden[1]), int(hidden[0])] == 128).all()


def test_review_matches_by_boxes_and_carries_keypoints(server):
    url, review = server
    status = review.status()
    assert status["failed"] == [] and status["done"] == status["total"] > 0
    rows = request(url, path="/v1/review/images").json()
    detail = request(url, path=f"/v1/review/images/{rows[0]['image_id']}").json()
    assert detail["predictions"][0]["mask"] is None and len(detail["predictions"][0]["keypoints"]) == K
    assert all(len(t["keypoints"]) == K and t["mask"] is not None for t in detail["truth"])
    assert detail["matched"] + detail["missed"] == len(detail["truth"])


def test_pair_iou_falls_back_to_boxes_without_masks():
    from instaseg.serve.review import _pair_iou

    truth = [{"box": [0.0, 0.0, 10.0, 10.0], "mask": {"size": [20, 20], "counts": "0"}}]
    predictions = [{"box": [5.0, 0.0, 15.0, 10.0], "mask": None}]
    assert np.allclose(_pair_iou(predictions, truth), [[50 / 150]])


@pytest.mark.skipif(not (shutil.which("chromium") and shutil.which("chromedriver")),
                    reason="the page test needs Debian's chromium and chromium-driver")
def test_page_draws_joints_limbs_and_the_box(server, tmp_path):
    webdriver = pytest.importorskip("selenium.webdriver", reason="the page test needs selenium (the test extra)")
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    url, _ = server
    options = webdriver.ChromeOptions()
    options.binary_location = shutil.which("chromium")
    for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                     "--window-size=1000,800"):
        options.add_argument(argument)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.ChromeService(executable_path=shutil.which("chromedriver"))
    browser = webdriver.Chrome(options=options, service=driver)
    try:
        browser.get(url + "/")
        WebDriverWait(browser, 120).until(lambda d: d.find_element(By.TAG_NAME, "body").get_attribute("data-ready"))
        path = tmp_path / "gray.png"
        Image.fromarray(np.full((SIZE, SIZE, 3), 128, np.uint8)).save(path)
        browser.find_element(By.ID, "file").send_keys(str(path))
        WebDriverWait(browser, 120).until(
            lambda d: d.find_element(By.ID, "predict-canvas").get_attribute("data-shown") == "1")
        data = browser.execute_script("return document.getElementById('predict-canvas').toDataURL('image/png');")
        png = base64.b64decode(data.split(",", 1)[1])
        picture = np.asarray(Image.open(io.BytesIO(png)).convert("RGB")).astype(int)
        errors = [e["message"] for e in browser.get_log("browser") if e["level"] == "SEVERE"]
    finally:
        browser.quit()
    assert errors == []
    points = _figure()[0]
    for joint in range(K - 1):
        assert (picture[int(points[joint, 1]), int(points[joint, 0])] >= 230).all(), joint
    assert (picture[int(points[K - 1, 1]), int(points[K - 1, 0])] == 128).all()  # score -1: hidden
    assert (np.abs(picture[2, 10:50] - PALETTE[0].astype(int)).sum(axis=1) <= 30).all()  # the box's top edge
