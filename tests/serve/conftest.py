"""One small server for the serve tests: the tiny preset with random weights, a tiny synthetic
dataset under review, on a free loopback port, in a thread of the test process."""

from __future__ import annotations

import json
import socket
import threading
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

pytest.importorskip("fastapi", reason="the serve extra (fastapi, uvicorn, python-multipart) is not installed")
pytest.importorskip("uvicorn", reason="the serve extra (fastapi, uvicorn, python-multipart) is not installed")

from instaseg.data.coco import CocoDataset  # noqa: E402
from instaseg.data.synthetic import generate_synthetic_dataset  # noqa: E402
from instaseg.hub import model_from_config, resolve_config  # noqa: E402
from instaseg.serve import DatasetReview, InferenceGate, Limits, ModelService, create_app  # noqa: E402

# Random weights score low: a floor of 0.001 and a default threshold of 0.05 give detections to check.
SCORE_FLOOR = 0.001
THRESHOLD = 0.05
# A small test size and few detections keep each inference in the tens of milliseconds.
SMALL = {"model__inference__score_thresh": SCORE_FLOOR, "model__inference__detections_per_image": 10,
         "model__rpn__pre_nms_topk_test": 100, "model__rpn__post_nms_topk_test": 30,
         "input__min_size_test": 64, "input__max_size_test": 96}
LIMITS = Limits(max_upload_bytes=256 * 1024, max_pixels=600 * 600, score_threshold=THRESHOLD)


@dataclass
class Served:
    url: str
    service: ModelService
    review: DatasetReview
    image_dir: Path
    dataset: CocoDataset
    root: Path


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def get_json(url: str) -> dict:
    with urllib.request.urlopen(url, timeout=30) as response:
        return json.loads(response.read())


@pytest.fixture(scope="package")
def served(tmp_path_factory) -> Served:
    import uvicorn

    root = tmp_path_factory.mktemp("serve")
    data = generate_synthetic_dataset(root / "data", num_images=8, image_size=96, seed=3, val_fraction=0.25)
    dataset = CocoDataset(data.train_annotations, data.train_images)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the server's inferences are tiny: one thread is faster on a shared CPU
    torch.manual_seed(0)
    config = resolve_config("mask_rcnn_r18_fpn_tiny", dataset.num_classes, **SMALL)
    model = model_from_config(config).eval()
    service = ModelService.from_model(model, config, dataset.category_names, dataset.category_ids,
                                      gate=InferenceGate(workers=1, queue=64))
    review = DatasetReview(dataset, service, THRESHOLD)
    app = create_app(service, review, LIMITS, allowed_hosts=("127.0.0.1", "localhost"))
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while not (server.started and review.status()["finished"]):
        assert thread.is_alive() and time.monotonic() < deadline, "the test server did not start"
        time.sleep(0.05)
    yield Served(url, service, review, Path(data.train_images), dataset, root)
    server.should_exit = True
    thread.join(10)
    torch.set_num_threads(threads)
