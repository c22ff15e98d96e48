"""The HTTP API on a real server (loopback, free port): answers equal Predictor's, bad input gets
its 4xx and the server keeps answering, a burst of requests all succeeds with memory bounded."""

from __future__ import annotations

import io
import os
import struct
import zlib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from instaseg.data.image_io import read_image
from instaseg.hub import Predictor
from tests.serve._client import multipart, post_image, request
from tests.serve.conftest import LIMITS, THRESHOLD, Served


def _png(pixels: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def _first_image(served: Served) -> Path:
    return sorted(served.image_dir.glob("*.png"))[0]


def _assert_serving(served: Served) -> None:
    answer = request(served.url, path="/health")
    assert answer.status == 200 and answer.json()["status"] == "ok"


def test_health_model_and_openapi(served: Served) -> None:
    assert request(served.url, path="/health").json() == {"status": "ok", "review": "6/6", "score_threshold": THRESHOLD}
    info = request(served.url, path="/v1/model").json()
    assert info["preset"] == "mask_rcnn_r18_fpn_tiny" and info["num_classes"] == served.dataset.num_classes
    assert [c["name"] for c in info["classes"]] == served.dataset.category_names
    assert [c["category_id"] for c in info["classes"]] == served.dataset.category_ids
    assert info["input"]["channel_order"] == "RGB" and info["weights"]["kind"] == "model object"
    schema = request(served.url, path="/openapi.json").json()
    assert {"/v1/predict", "/v1/model", "/health", "/v1/review/images"} <= set(schema["paths"])
    assert "multipart/form-data" in schema["paths"]["/v1/predict"]["post"]["requestBody"]["content"]
    assert request(served.url, path="/docs").status == 404  # its Swagger page would load from a CDN


@pytest.mark.parametrize("as_form", [True, False], ids=["multipart", "raw_bytes"])
def test_predict_equals_predictor(served: Served, as_form: bool) -> None:
    path = _first_image(served)
    answer = post_image(served.url, path.read_bytes(), as_form=as_form)
    assert answer.status == 200, answer.body
    body = answer.json()
    expected = Predictor(served.service.predictor.model, served.service.config,
                         score_threshold=THRESHOLD)(read_image(path))
    assert (body["width"], body["height"]) == (96, 96) and body["seconds"] > 0
    assert body["score_threshold"] == THRESHOLD and len(body["instances"]) == len(expected) > 0
    got = body["instances"]
    torch.testing.assert_close(torch.tensor([d["box"] for d in got]), expected.boxes)
    torch.testing.assert_close(torch.tensor([d["score"] for d in got]), expected.scores)
    assert [d["label"] for d in got] == expected.labels.tolist()
    assert [d["category_name"] for d in got] == [served.dataset.category_names[k] for k in expected.labels]
    assert [d["category_id"] for d in got] == [served.dataset.category_ids[k] for k in expected.labels]
    from instaseg.structures.masks import rle_to_bitmap

    masks = np.stack([rle_to_bitmap(d["mask"]) for d in got])
    assert np.array_equal(masks, expected.masks.numpy())


def test_score_threshold_and_overlay(served: Served) -> None:
    data = _first_image(served).read_bytes()
    everything = post_image(served.url, data, "?score_threshold=0").json()["instances"]
    assert all(d["score"] >= THRESHOLD for d in post_image(served.url, data).json()["instances"])
    assert len(everything) >= len(post_image(served.url, data).json()["instances"])
    answer = post_image(served.url, data, "?overlay=1")
    assert answer.status == 200 and answer.headers["content-type"] == "image/png"
    picture = np.asarray(Image.open(io.BytesIO(answer.body)).convert("RGB"))
    assert picture.shape == (96, 96, 3) and not np.array_equal(picture, read_image(_first_image(served)))


def _declaring(png: bytes, width: int, height: int) -> bytes:
    """The PNG with its header claiming ``width x height`` pixels (a decompression bomb's trick)."""
    ihdr = struct.pack(">II", width, height) + png[24:29]
    return png[:16] + ihdr + struct.pack(">I", zlib.crc32(b"IHDR" + ihdr) & 0xFFFFFFFF) + png[33:]


def _bad_inputs() -> dict[str, tuple[bytes, int, str]]:
    noise = np.random.default_rng(0).integers(0, 256, (400, 400, 3), dtype=np.uint8)
    image = _png(noise[:40, :40])
    return {  # name: (body, status, words of the message)
        "over_the_size_limit": (_png(noise), 413, "byte limit"),
        "not_an_image": (b"these are not pixels\n" * 20, 415, "not a format"),
        "truncated": (image[: len(image) // 2], 400, "truncated"),
        "decompression_bomb": (_declaring(_png(noise[:4, :4]), 30000, 30000), 413, "decompression bomb"),
        "too_many_pixels": (_png(np.zeros((700, 700, 3), np.uint8)), 413, "pixels"),
        "empty": (b"", 400, "no body"),
    }


@pytest.mark.parametrize("name", list(_bad_inputs()))
@pytest.mark.parametrize("as_form", [True, False], ids=["multipart", "raw_bytes"])
def test_bad_uploads_get_4xx_and_the_server_goes_on(served: Served, name: str, as_form: bool) -> None:
    data, status, words = _bad_inputs()[name]
    if name == "empty" and as_form:
        status, words = 415, "not an image"
    answer = post_image(served.url, data, as_form=as_form)
    assert answer.status == status, answer.body
    detail = answer.json()["detail"]
    assert words in detail and "Traceback" not in detail
    _assert_serving(served)


def test_other_bad_requests(served: Served) -> None:
    body, headers = multipart("notes", "a.txt", b"x")
    form_without_file = body.replace(b'; filename="a.txt"', b"")
    answer = request(served.url, "POST", "/v1/predict", form_without_file, headers)
    assert answer.status == 400 and "no file field" in answer.json()["detail"]
    assert post_image(served.url, _first_image(served).read_bytes(), "?score_threshold=7").status == 422
    declared = {"Content-Type": "image/png", "Content-Length": str(10 * LIMITS.max_upload_bytes)}
    assert request(served.url, "POST", "/v1/predict", b"", declared).status == 413
    assert request(served.url, path="/health", headers={"Host": "evil.example"}).status == 400  # DNS rebinding
    _assert_serving(served)


def test_a_failing_request_leaves_the_server_serving(served: Served, monkeypatch) -> None:
    def broken(image):
        raise RuntimeError("a bug")

    monkeypatch.setattr(served.service, "predict", broken)
    answer = post_image(served.url, _first_image(served).read_bytes())
    assert answer.status == 500 and answer.json()["detail"].startswith("internal error (RuntimeError)")
    monkeypatch.undo()
    assert post_image(served.url, _first_image(served).read_bytes()).status == 200


def _rss_bytes() -> int:
    for line in Path(f"/proc/{os.getpid()}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


def test_a_burst_of_requests_all_succeeds_with_memory_bounded(served: Served) -> None:
    data = _first_image(served).read_bytes()
    gate = served.service.gate
    gate.peak_running = 0
    before = _rss_bytes()
    with ThreadPoolExecutor(max_workers=50) as pool:
        answers = list(pool.map(lambda _: post_image(served.url, data, as_form=False), range(50)))
    assert [a.status for a in answers] == [200] * 50
    first = answers[0].json()["instances"]
    assert all(a.json()["instances"] == first for a in answers)  # one model, the same answer
    assert gate.peak_running == gate.workers == 1  # inferences ran one at a time
    assert gate.admitted == 0
    if before:  # Linux: the burst held at most one image's inference at a time
        assert _rss_bytes() - before < 300 * 1024 * 1024


def test_the_queue_is_bounded() -> None:
    from instaseg.serve import InferenceGate, ServerBusy

    gate = InferenceGate(workers=1, queue=2)
    for _ in range(3):
        gate.admit()
    with pytest.raises(ServerBusy):
        gate.admit()
    gate.leave()
    gate.admit()
