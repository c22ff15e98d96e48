"""Tests for COCO keypoint annotations in CocoDataset: frame, schema, validation messages, skip policy."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from instaseg.data.coco import CocoDataset
from instaseg.errors import DatasetError

pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")

H, W = 8, 10
NAMES = ["head", "left_hand", "right_hand"]


def _doc() -> dict:
    """One 8x10 image, a keypoint category (id 5) and a plain one (id 9), two instances and a crowd."""
    return {
        "images": [{"id": 1, "file_name": "a.png", "height": H, "width": W}],
        "categories": [{"id": 5, "name": "figure", "keypoints": list(NAMES), "skeleton": [[1, 2], [1, 3]]},
                       {"id": 9, "name": "ball"}],
        "annotations": [
            {"id": 10, "image_id": 1, "category_id": 5, "bbox": [2, 1, 4, 3], "iscrowd": 0,
             "segmentation": [[2, 1, 6, 1, 6, 4, 2, 4]], "num_keypoints": 2,
             "keypoints": [3, 1, 2, 0, 0, 0, 9, 7, 1]},
            {"id": 11, "image_id": 1, "category_id": 9, "bbox": [5, 5, 3, 2], "iscrowd": 0,
             "segmentation": [[5, 5, 8, 5, 8, 7, 5, 7]]},
            {"id": 12, "image_id": 1, "category_id": 5, "bbox": [0, 0, 5, 5], "iscrowd": 1,
             "segmentation": {"size": [H, W], "counts": [5, 10, H * W - 15]}, "num_keypoints": 0,
             "keypoints": [0] * 9},
        ],
    }


def _load(root: Path, doc: dict, **kwargs) -> CocoDataset:
    (root / "img").mkdir(exist_ok=True)
    Image.fromarray(np.zeros((H, W, 3), np.uint8)).save(root / "img" / "a.png")
    (root / "ann.json").write_text(json.dumps(doc))
    return CocoDataset(root / "ann.json", root / "img", **kwargs)


def test_keypoints_in_the_continuous_frame(tmp_path: Path) -> None:
    ds = _load(tmp_path, _doc())
    assert ds.keypoint_names == tuple(NAMES) and ds.num_keypoints == 3
    assert ds.skeleton == [(0, 1), (0, 2)]  # 1-based in the json
    assert ds.keypoint_flip_map == [0, 2, 1]
    keypoints = ds[0].targets.keypoints
    assert keypoints.dtype == torch.float32 and keypoints.shape == (2, 3, 3)
    expected_first = torch.tensor([[3.5, 1.5, 2.0], [0.0, 0.0, 0.0], [9.5, 7.5, 1.0]])
    torch.testing.assert_close(keypoints[0], expected_first)
    torch.testing.assert_close(keypoints[1], torch.zeros(3, 3))  # category without keypoints: unlabelled


def test_unlabelled_keypoints_become_zero(tmp_path: Path) -> None:
    doc = _doc()
    doc["annotations"][0]["keypoints"] = [3, 1, 2, 7, 4, 0, 9, 7, 1]  # v = 0 with coordinates
    torch.testing.assert_close(_load(tmp_path, doc)[0].targets.keypoints[0, 1], torch.zeros(3))


def test_dataset_without_keypoints_is_unchanged(tmp_path: Path) -> None:
    doc = _doc()
    del doc["categories"][0]["keypoints"], doc["categories"][0]["skeleton"]
    for ann in doc["annotations"]:
        ann.pop("keypoints", None), ann.pop("num_keypoints", None)
    ds = _load(tmp_path, doc)
    assert ds.keypoint_names is None and ds.skeleton == [] and ds.num_keypoints == 0
    assert ds.keypoint_flip_map is None and ds[0].targets.keypoints is None


def test_empty_image_has_zero_rows(tmp_path: Path) -> None:
    doc = _doc()
    doc["annotations"] = []
    with pytest.warns(UserWarning, match="none of the 1 images"):
        ds = _load(tmp_path, doc)
    assert ds[0].targets.keypoints.shape == (0, 3, 3)


def _set_keypoints(values: list) -> dict:
    doc = _doc()
    doc["annotations"][0]["keypoints"] = values
    return doc


BAD_CASES = {
    "wrong length": (_set_keypoints([3, 1, 2, 0, 0, 0]), "6 values: expected 3 x 3 = 9"),
    "not numbers": (_set_keypoints([3, 1, 2, 0, 0, 0, "a", 7, 1]), "9 values: expected 3 x 3 = 9 finite"),
    "visibility 3": (_set_keypoints([3, 1, 3, 0, 0, 0, 9, 7, 1]), "keypoint 0 with visibility 3"),
    "visibility -1": (_set_keypoints([3, 1, 2, 0, 0, 0, 9, 7, -1]), "keypoint 2 with visibility -1"),
    "outside right": (_set_keypoints([3, 1, 2, 0, 0, 0, 12, 7, 2]), r"keypoint 2 at \(12, 7\) outside the image"),
    "outside top": (_set_keypoints([3, -3, 1, 0, 0, 0, 9, 7, 2]), r"keypoint 0 at \(3, -3\) outside"),
    "no names": ({**_doc(), "categories": [{"id": 5, "name": "figure"}, {"id": 9, "name": "ball"}]},
                 "no category declares keypoint names"),
}


@pytest.mark.parametrize("case", sorted(BAD_CASES))
def test_bad_keypoints_stop_naming_the_annotation(tmp_path: Path, case: str) -> None:
    doc, match = BAD_CASES[case]
    with pytest.raises(DatasetError, match=match) as info:
        _load(tmp_path, doc)
    assert "annotation id 10 (image id 1)" in str(info.value) and "ann.json" in str(info.value)


def test_bad_keypoints_skipped_and_counted(tmp_path: Path) -> None:
    with pytest.warns(UserWarning, match="1 bad keypoints"):
        ds = _load(tmp_path, BAD_CASES["visibility 3"][0], skip_bad=True)
    assert ds.skipped == {"bad keypoints": 1} and len(ds[0].targets) == 1


def test_outside_point_within_a_pixel_is_clipped(tmp_path: Path) -> None:
    ds = _load(tmp_path, _set_keypoints([3, 1, 2, 0, 0, 0, 10, 7, 2]))  # centre 10.5 in a 10 px image
    torch.testing.assert_close(ds[0].targets.keypoints[0, 2], torch.tensor([10.0, 7.5, 2.0]))


def test_num_keypoints_mismatch_warns_once_with_the_first_id(tmp_path: Path) -> None:
    doc = _doc()
    doc["annotations"][0]["num_keypoints"] = 3
    with pytest.warns(UserWarning, match=r"1 annotation\(s\) \(first: annotation id 10\).*num_keypoints"):
        ds = _load(tmp_path, doc)
    assert ds[0].targets.keypoints[0, :, 2].tolist() == [2.0, 0.0, 1.0]  # the visibilities rule


@pytest.mark.parametrize("change, match", [
    ({"keypoints": ["head", "left_hand", "hand"]}, "different keypoint names"),
    ({"keypoints": list(NAMES), "skeleton": [[1, 2]]}, "different skeleton"),
])
def test_categories_must_agree_on_keypoints(tmp_path: Path, change: dict, match: str) -> None:
    doc = _doc()
    doc["categories"][1].update(change)
    with pytest.raises(DatasetError, match=match):
        _load(tmp_path, doc)


@pytest.mark.parametrize("skeleton", [[[1, 4]], [[0, 1]], [[2, 2]], [[1, 2, 3]]])
def test_bad_skeleton_is_refused(tmp_path: Path, skeleton: list) -> None:
    doc = _doc()
    doc["categories"][0]["skeleton"] = skeleton
    with pytest.raises(DatasetError, match="category id 5 has skeleton entry"):
        _load(tmp_path, doc)


def test_unpaired_side_names_refuse_flipping_only(tmp_path: Path) -> None:
    doc = _doc()
    doc["categories"][0]["keypoints"] = ["head", "left_hand", "tail"]
    ds = _load(tmp_path, doc)
    assert ds[0].targets.keypoints.shape == (2, 3, 3)
    with pytest.raises(DatasetError, match="cannot flip its keypoints.*left_hand"):
        ds.keypoint_flip_map
