"""Dataset review: the error rule on hand-made cases, the review API, and that only image files
under the dataset's image folder can be read through the server."""

from __future__ import annotations

import os

import numpy as np
import pytest

from instaseg.serve.review import ImageReview, image_errors, safe_image_path
from tests.serve._client import request
from tests.serve.conftest import THRESHOLD, Served


def _item(label: int, score: float | None = None) -> dict:
    return {"label": label, "score": score, "category_name": f"c{label}"}


def test_errors_count_misses_false_positives_and_poor_masks() -> None:
    truth = [_item(0), _item(1), _item(0)]
    predictions = [_item(0, 0.9), _item(1, 0.8), _item(0, 0.7), _item(0, 0.1)]
    iou = np.array([[0.8, 0.0, 0.6],   # takes truth 0 (best IoU of its class)
                    [0.0, 0.4, 0.0],   # its class's only truth is under IoU 0.5: a false positive
                    [0.9, 0.0, 0.55],  # truth 0 is taken: takes truth 2
                    [0.0, 0.0, 0.0]])  # below the threshold: not counted
    review = ImageReview(1, "a.png", 4, 4, truth, predictions, iou)
    found = image_errors(review, score_threshold=0.5)
    assert found == {"missed": 1, "false_positives": 1, "matched": 2, "mean_iou": pytest.approx(0.675),
                     "error": pytest.approx(2 + 0.2 + 0.45)}
    assert image_errors(review, score_threshold=0.95) == {"missed": 3, "false_positives": 0, "matched": 0,
                                                          "mean_iou": None, "error": 3.0}


def test_safe_image_path_stays_in_its_folder(tmp_path) -> None:
    root, outside = tmp_path / "images", tmp_path / "secret.png"
    (root / "sub").mkdir(parents=True)
    outside.write_bytes(b"x")
    (root / "sub" / "a.png").write_bytes(b"x")
    (root / "notes.txt").write_text("x")
    os.symlink(outside, root / "link.png")
    assert safe_image_path(root, "sub/a.png") == (root / "sub" / "a.png").resolve()
    for bad in ("../secret.png", "sub/../../secret.png", str(outside), "/etc/passwd", "link.png", "notes.txt",
                "missing.png", "", "sub\\..\\..\\secret.png"):
        assert safe_image_path(root, bad) is None, bad


def test_review_api_sorts_filters_and_details(served: Served) -> None:
    assert request(served.url, path="/v1/review/status").json() == {
        "total": 6, "done": 6, "failed": [], "running": False, "finished": True}
    rows = request(served.url, path="/v1/review/images").json()
    assert len(rows) == 6 and [r["error"] for r in rows] == sorted((r["error"] for r in rows), reverse=True)
    by_id = request(served.url, path="/v1/review/images?sort=id").json()
    assert [r["image_id"] for r in by_id] == sorted(served.dataset.image_ids)
    name = rows[0]["classes"][0]
    filtered = request(served.url, path=f"/v1/review/images?class_name={name}").json()
    assert filtered and all(name in r["classes"] for r in filtered)
    detail = request(served.url, path=f"/v1/review/images/{rows[0]['image_id']}").json()
    assert detail["score_threshold"] == THRESHOLD and len(detail["truth"]) == rows[0]["truth_count"]
    assert {k: detail[k] for k in ("missed", "false_positives", "error")} == {
        k: rows[0][k] for k in ("missed", "false_positives", "error")}
    assert request(served.url, path="/v1/review/images/999999").status == 404
    assert request(served.url, path="/v1/review/images?sort=nonsense").status == 400


def test_only_dataset_images_are_served(served: Served) -> None:
    name = served.dataset.file_name(0)
    answer = request(served.url, path=f"/v1/review/files/{name}")
    assert answer.status == 200 and answer.body == (served.image_dir / name).read_bytes()
    secret = served.root / "secret.png"
    secret.write_bytes((served.image_dir / name).read_bytes())
    link = served.image_dir / "link_out.png"
    link.symlink_to(secret)
    try:
        for path in ("../secret.png", "..%2Fsecret.png", "%2E%2E/secret.png", "sub/../../secret.png",
                     "/etc/passwd", "%2Fetc%2Fpasswd", "link_out.png", "..%5Csecret.png",
                     f"{served.root}/secret.png"):
            answer = request(served.url, path=f"/v1/review/files/{path}")
            assert answer.status in (400, 404), path
            assert answer.body != secret.read_bytes()
    finally:
        link.unlink()
    assert request(served.url, path="/health").status == 200
