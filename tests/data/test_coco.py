"""Tests for CocoDataset: validation messages, skip policy, label mapping, crowds, negatives, image modes."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import numpy as np
import pycocotools.mask as mask_util
import pytest
import torch
from PIL import Image
from pycocotools.coco import COCO

import instaseg.data.coco as coco_module
from instaseg.data.coco import CocoDataset, compressed_rle_runs
from instaseg.data.synthetic import SyntheticDataset, generate_synthetic_dataset
from instaseg.errors import DatasetError

# pycocotools 2.0.x on numpy 2 warns on every decode; not ours to fix.
pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")

H, W = 8, 10  # size of the hand-made images


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory: pytest.TempPathFactory) -> SyntheticDataset:
    return generate_synthetic_dataset(tmp_path_factory.mktemp("syn"), num_images=16, image_size=64,
                                      val_fraction=0.25)


def _rle(mask: np.ndarray) -> dict:
    rle = mask_util.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {"size": [int(v) for v in rle["size"]], "counts": rle["counts"].decode("ascii")}


def _base_doc() -> dict:
    """Two 8x10 images; category ids deliberately unsorted and non-contiguous."""
    square = np.zeros((H, W), bool)
    square[1:4, 2:6] = True
    return {
        "images": [{"id": 1, "file_name": "a.png", "height": H, "width": W},
                   {"id": 2, "file_name": "sub/b.png", "height": H, "width": W}],
        "categories": [{"id": 40, "name": "dog"}, {"id": 3, "name": "cat"}, {"id": 17, "name": "cow"}],
        "annotations": [
            {"id": 10, "image_id": 1, "category_id": 40, "bbox": [2, 1, 4, 3], "iscrowd": 0,
             "segmentation": [[2, 1, 6, 1, 6, 4, 2, 4]]},
            {"id": 11, "image_id": 1, "category_id": 3, "bbox": [2, 1, 4, 3], "iscrowd": 0,
             "segmentation": _rle(square)},
            {"id": 12, "image_id": 2, "category_id": 17, "bbox": [0, 0, 5, 5], "iscrowd": 1,
             "segmentation": {"size": [H, W], "counts": [5, 10, H * W - 15]}},
            {"id": 13, "image_id": 2, "category_id": 3, "bbox": [5, 5, 3, 2], "iscrowd": 0,
             "segmentation": [[5, 5, 8, 5, 8, 7, 5, 7]]},
        ],
    }


def _write(root: Path, doc: dict | str, image_sizes: dict[str, tuple[int, int]] | None = None) -> Path:
    """Write ``doc`` as ``root/ann.json`` and random PNG images for its file names under ``root/img``."""
    (root / "img" / "sub").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for name in ("a.png", "sub/b.png", "c.png"):
        h, w = (image_sizes or {}).get(name, (H, W))
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(root / "img" / name)
    path = root / "ann.json"
    path.write_text(doc if isinstance(doc, str) else json.dumps(doc))
    return path


def _load(tmp_path: Path, doc: dict | str, **kwargs) -> CocoDataset:
    return CocoDataset(_write(tmp_path, doc), tmp_path / "img", **kwargs)


# --- a good dataset -------------------------------------------------------------------------------


def test_synthetic_dataset_matches_pycocotools(synthetic: SyntheticDataset) -> None:
    ds = CocoDataset(synthetic.train_annotations, synthetic.train_images)
    reference = COCO(str(synthetic.train_annotations))
    assert len(ds) == 12 and ds.num_classes == 6 and ds.json_path == synthetic.train_annotations
    assert ds.category_ids == sorted(c["id"] for c in reference.dataset["categories"])
    assert ds.image_ids == [img["id"] for img in reference.dataset["images"]]
    saw_crowd = False
    for i in range(len(ds)):
        sample = ds[i]
        anns = reference.loadAnns(reference.getAnnIds(imgIds=[sample.image_id]))
        plain = [a for a in anns if not a["iscrowd"]]
        crowd = [a for a in anns if a["iscrowd"]]
        saw_crowd |= bool(crowd)
        assert sample.image.dtype == torch.uint8 and sample.image.shape == (3, 64, 64)
        pixels = np.asarray(Image.open(synthetic.train_images / reference.imgs[sample.image_id]["file_name"]))
        assert np.array_equal(sample.image.permute(1, 2, 0).numpy(), pixels)
        assert len(sample.targets) == len(plain) and sample.crowd_boxes.shape == (len(crowd), 4)
        for k, ann in enumerate(plain):
            assert ds.category_ids[int(sample.targets.labels[k])] == ann["category_id"]
            x, y, w, h = ann["bbox"]
            assert sample.targets.boxes[k].tolist() == pytest.approx([x, y, x + w, y + h])
            assert np.array_equal(sample.targets.masks[k].numpy(), reference.annToMask(ann).astype(bool))
        for k, ann in enumerate(crowd):
            x, y, w, h = ann["bbox"]
            assert sample.crowd_boxes[k].tolist() == pytest.approx([x, y, x + w, y + h])
    assert saw_crowd, "the synthetic train split should hold a crowd region"


def test_category_mapping_round_trips(tmp_path: Path) -> None:
    ds = _load(tmp_path, _base_doc())
    assert ds.category_ids == [3, 17, 40] and ds.category_names == ["cat", "cow", "dog"]
    doc = _base_doc()
    by_id = {a["id"]: a for a in doc["annotations"]}
    first = ds[0]
    expected = [by_id[10]["category_id"], by_id[11]["category_id"]]
    assert [ds.category_ids[int(k)] for k in first.targets.labels] == expected
    assert ds.class_counts() == {"cat": 2, "cow": 0, "dog": 1}


def test_crowd_excluded_from_targets_but_boxes_returned(tmp_path: Path) -> None:
    second = _load(tmp_path, _base_doc())[1]
    assert second.image_id == 2 and len(second.targets) == 1
    assert second.targets.labels.tolist() == [0]  # category 3 ("cat"), the crowd (17) is excluded
    assert second.crowd_boxes.tolist() == [[0.0, 0.0, 5.0, 5.0]]


def test_polygon_and_rle_decode_to_the_drawn_square(tmp_path: Path) -> None:
    first = _load(tmp_path, _base_doc())[0]
    expected = np.zeros((H, W), bool)
    expected[1:4, 2:6] = True
    for mask in first.targets.masks:
        assert np.array_equal(mask.numpy(), expected)
    assert first.targets.masks.dtype == torch.bool and first.targets.boxes.dtype == torch.float32


def test_negatives_kept_or_dropped(tmp_path: Path) -> None:
    doc = _base_doc()
    doc["images"].append({"id": 3, "file_name": "c.png", "height": H, "width": W})
    doc["annotations"] = [a for a in doc["annotations"] if a["id"] != 13]  # image 2: only a crowd
    kept = _load(tmp_path, doc)
    assert kept.image_ids == [1, 2, 3]
    assert len(kept[2].targets) == 0 and kept[2].targets.masks.shape == (0, H, W)
    dropped = _load(tmp_path, doc, keep_negatives=False)
    assert dropped.image_ids == [1]
    assert kept.size_stats()["negatives"] == 2.0


def test_all_negative_dataset_loads_with_a_warning(tmp_path: Path) -> None:
    doc = _base_doc()
    doc["annotations"] = []
    with pytest.warns(UserWarning, match="none of the 2 images"):
        ds = _load(tmp_path, doc)
    assert len(ds) == 2 and len(ds[0].targets) == 0


def test_masks_are_decoded_lazily(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls = []
    real = coco_module.annotation_to_bitmap
    monkeypatch.setattr(coco_module, "annotation_to_bitmap", lambda *a: calls.append(1) or real(*a))
    ds = _load(tmp_path, _base_doc())
    assert not calls
    ds[1]
    assert len(calls) == 1  # the one non-crowd instance of image 2


def test_stats_against_a_direct_count(synthetic: SyntheticDataset) -> None:
    ds = CocoDataset(synthetic.train_annotations, synthetic.train_images)
    doc = json.loads(synthetic.train_annotations.read_text())
    plain = [a for a in doc["annotations"] if not a["iscrowd"]]
    names = {c["id"]: c["name"] for c in doc["categories"]}
    expected = {name: 0 for name in ds.category_names}
    for ann in plain:
        expected[names[ann["category_id"]]] += 1
    assert ds.class_counts() == expected
    stats = ds.size_stats()
    per_image = [sum(a["image_id"] == img["id"] for a in plain) for img in doc["images"]]
    assert stats["images"] == len(doc["images"]) and stats["instances_max"] == max(per_image)
    assert stats["instances_mean"] == pytest.approx(sum(per_image) / len(per_image))
    small = sum(a["bbox"][2] * a["bbox"][3] < 32 * 32 for a in plain)
    assert stats["boxes_small"] == small and stats["crowd_regions"] == len(doc["annotations"]) - len(plain)


# --- validation -----------------------------------------------------------------------------------


def _set(path: list, value):
    """A mutation of the base document setting doc[path...] = value."""
    def mutate(doc: dict) -> None:
        target = doc
        for key in path[:-1]:
            target = target[key]
        target[path[-1]] = value
    return mutate


def _dup_image(doc: dict) -> None:
    doc["images"].append(copy.deepcopy(doc["images"][0]))


def _dup_annotation(doc: dict) -> None:
    doc["annotations"].append(dict(doc["annotations"][0]))


BAD_CASES = {
    "missing images": (lambda d: d.pop("images"), ["missing or non-list 'images'"]),
    "missing annotations": (lambda d: d.pop("annotations"), ["missing or non-list 'annotations'"]),
    "missing categories": (lambda d: d.pop("categories"), ["missing or non-list 'categories'"]),
    "duplicate image": (_dup_image, ["image id 1 appears more than once", "skip_bad=True"]),
    "duplicate annotation": (_dup_annotation, ["annotation id 10 appears more than once"]),
    "missing image": (_set(["annotations", 0, "image_id"], 99), ["annotation id 10 (image id 99)", "missing"]),
    "unknown category": (_set(["annotations", 1, "category_id"], 5), ["annotation id 11", "category_id 5"]),
    "negative width": (_set(["annotations", 0, "bbox"], [2, 1, -4, 3]), ["annotation id 10", "negative width"]),
    "zero height": (_set(["annotations", 3, "bbox"], [5, 5, 3, 0]), ["annotation id 13 (image id 2)", "zero"]),
    "bbox outside": (_set(["annotations", 0, "bbox"], [8, 1, 6, 3]), ["annotation id 10", "outside the image"]),
    "bbox not numbers": (_set(["annotations", 0, "bbox"], [1, 2, 3]), ["annotation id 10", "4 finite numbers"]),
    "odd polygon": (_set(["annotations", 0, "segmentation"], [[2, 1, 6, 1, 6, 4, 2]]),
                    ["annotation id 10", "malformed polygon"]),
    "two-point polygon": (_set(["annotations", 0, "segmentation"], [[2, 1, 6, 4]]),
                          ["annotation id 10", "malformed polygon"]),
    "rle wrong size": (_set(["annotations", 1, "segmentation", "size"], [5, 5]),
                       ["annotation id 11", "RLE of size [5, 5]", "[8, 10]"]),
    "uncompressed rle wrong sum": (_set(["annotations", 2, "segmentation", "counts"], [5, 10, 3]),
                                   ["annotation id 12", "summing to 80"]),
    "empty polygon": (_set(["annotations", 0, "segmentation"], []), ["annotation id 10", "empty segmentation"]),
    "empty rle": (_set(["annotations", 1, "segmentation", "counts"], ""), ["annotation id 11", "empty segmentation"]),
    "no height": (lambda d: d["images"][1].pop("height"), ["image id 2", "'height'"]),
    "duplicate category": (lambda d: d["categories"].append({"id": 3, "name": "x"}), ["duplicate category id 3"]),
}


@pytest.mark.parametrize("case", sorted(BAD_CASES))
def test_bad_json_stops_with_the_culprit_named(tmp_path: Path, case: str) -> None:
    mutate, fragments = BAD_CASES[case]
    doc = _base_doc()
    mutate(doc)
    path = _write(tmp_path, doc)
    with pytest.raises(DatasetError) as info:
        CocoDataset(path, tmp_path / "img")
    message = str(info.value)
    assert str(path) in message
    for fragment in fragments:
        assert fragment in message


def test_not_json_is_reported(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="not valid JSON"):
        _load(tmp_path, "{'images': [")


@pytest.mark.parametrize("file_name", ["../outside.png", "sub/../../outside.png", "/etc/passwd"])
@pytest.mark.parametrize("skip_bad", [False, True])
def test_file_name_escaping_the_image_folder_is_refused(tmp_path: Path, file_name: str, skip_bad: bool) -> None:
    doc = _base_doc()
    doc["images"][1]["file_name"] = file_name
    with pytest.raises(DatasetError, match="image id 2 .*escapes the image folder"):
        _load(tmp_path, doc, skip_bad=skip_bad)


def test_skip_bad_skips_and_counts(tmp_path: Path) -> None:
    doc = _base_doc()
    doc["annotations"][0]["bbox"] = [2, 1, 0, 3]  # bad bbox
    doc["annotations"][1]["category_id"] = 5  # unknown category
    doc["annotations"].append(dict(doc["annotations"][3]))  # duplicate annotation id 13
    doc["annotations"].append({**doc["annotations"][3], "id": 14, "image_id": 7})  # missing image
    _dup_image(doc)
    with pytest.warns(UserWarning, match="skipped 5 entries"):
        ds = _load(tmp_path, doc, skip_bad=True)
    assert dict(ds.skipped) == {"bad bbox": 1, "unknown category": 1, "duplicate annotation id": 1,
                                "annotation of a missing image": 1, "duplicate image id": 1}
    assert "1 bad bbox" in ds.skipped_summary and "1 unknown category" in ds.skipped_summary
    assert ds.image_ids == [1, 2] and len(ds[0].targets) == 0 and len(ds[1].targets) == 1


def test_image_size_disagreeing_with_json_stops_when_loaded(tmp_path: Path) -> None:
    path = _write(tmp_path, _base_doc(), image_sizes={"sub/b.png": (H + 1, W)})
    ds = CocoDataset(path, tmp_path / "img")  # sizes are checked when an image is read
    ds[0]
    with pytest.raises(DatasetError, match=r"image id 2 .* is 9x10 .* json says 8x10"):
        ds[1]
    with pytest.warns(UserWarning, match="skipping"):
        replaced = CocoDataset(path, tmp_path / "img", skip_bad=True)[1]
    assert replaced.image_id == 1  # the next good image, deterministically


def test_missing_image_file_is_named(tmp_path: Path) -> None:
    path = _write(tmp_path, _base_doc())
    (tmp_path / "img" / "a.png").unlink()
    with pytest.raises(DatasetError, match="a.png: image file not found"):
        CocoDataset(path, tmp_path / "img")[0]


# --- compressed RLE runs --------------------------------------------------------------------------


def _reference_runs(mask: np.ndarray) -> list[int]:
    """Column-major runs of a bool mask, starting with (possibly zero) background, by a plain loop."""
    runs, current, length = [], False, 0
    for value in mask.flatten(order="F"):
        if bool(value) != current:
            runs.append(length)
            current, length = bool(value), 0
        length += 1
    runs.append(length)
    return runs


@pytest.mark.parametrize("shape", [(1, 1), (7, 5), (40, 33)])
def test_compressed_rle_runs_match_a_loop(shape: tuple[int, int]) -> None:
    rng = np.random.default_rng(sum(shape))
    for density in (0.0, 0.1, 0.5, 1.0):
        mask = rng.random(shape) < density
        assert compressed_rle_runs(_rle(mask)["counts"]) == _reference_runs(mask)
    big = np.zeros((300, 300), bool)
    big[10:290, 5:250] = True  # long runs need several 5-bit groups and negative differences
    assert compressed_rle_runs(_rle(big)["counts"].encode()) == _reference_runs(big)


def test_compressed_rle_with_wrong_runs_is_caught_before_decoding(tmp_path: Path) -> None:
    doc = _base_doc()
    doc["annotations"][1]["segmentation"]["counts"] = _rle(np.ones((20, 20), bool))["counts"]  # 400 != 80
    ds = _load(tmp_path, doc)
    with pytest.raises(DatasetError, match="annotation id 11 .*runs sum to 400"):
        ds[0]
    with pytest.warns(UserWarning, match="annotation id 11"):
        sample = _load(tmp_path, doc, skip_bad=True)[0]
    assert len(sample.targets) == 1  # only the bad instance is dropped
    with pytest.raises(ValueError, match="invalid character"):
        compressed_rle_runs("ab\x01")


# --- image modes go through read_image ------------------------------------------------------------


def _one_image_doc(height: int, width: int, file_name: str) -> dict:
    return {"images": [{"id": 1, "file_name": file_name, "height": height, "width": width}],
            "categories": [{"id": 1, "name": "thing"}], "annotations": []}


def _load_single(tmp_path: Path, image: Image.Image, file_name: str, height: int, width: int,
                 **save_kwargs) -> torch.Tensor:
    (tmp_path / "img").mkdir(exist_ok=True)
    image.save(tmp_path / "img" / file_name, **save_kwargs)
    path = tmp_path / "ann.json"
    path.write_text(json.dumps(_one_image_doc(height, width, file_name)))
    with pytest.warns(UserWarning, match="none of the 1 images"):
        ds = CocoDataset(path, tmp_path / "img")
    image_tensor = ds[0].image
    assert image_tensor.dtype == torch.uint8 and image_tensor.shape == (3, height, width)
    return image_tensor


def test_grayscale_image(tmp_path: Path) -> None:
    gray = np.random.default_rng(1).integers(0, 256, (5, 7), dtype=np.uint8)
    out = _load_single(tmp_path, Image.fromarray(gray, mode="L"), "g.png", 5, 7)
    for channel in out:
        assert np.array_equal(channel.numpy(), gray)


def test_rgba_image_is_composited_on_black(tmp_path: Path) -> None:
    rgba = np.random.default_rng(2).integers(0, 256, (4, 6, 4), dtype=np.uint8)
    out = _load_single(tmp_path, Image.fromarray(rgba, mode="RGBA"), "rgba.png", 4, 6)
    expected = rgba[..., :3].astype(np.float64) * rgba[..., 3:].astype(np.float64) / 255.0
    assert np.abs(out.permute(1, 2, 0).numpy().astype(np.float64) - expected).max() <= 1.0


def test_16_bit_image_is_scaled(tmp_path: Path) -> None:
    values = np.random.default_rng(3).integers(0, 65536, (3, 5), dtype=np.uint16)
    out = _load_single(tmp_path, Image.fromarray(values), "deep.png", 3, 5)
    expected = values.astype(np.float64) / 65535.0 * 255.0
    assert np.abs(out[0].numpy().astype(np.float64) - expected).max() <= 0.5 + 1e-9


def test_exif_orientation_is_applied(tmp_path: Path) -> None:
    pixels = np.random.default_rng(4).integers(0, 256, (4, 6, 3), dtype=np.uint8)
    image = Image.fromarray(pixels)
    exif = image.getexif()
    exif[0x0112] = 6  # orientation: the stored image must be turned 90 degrees clockwise for display
    out = _load_single(tmp_path, image, "rot.png", 6, 4, exif=exif.tobytes())
    turned = np.rot90(pixels, k=-1)  # clockwise
    assert np.array_equal(out.permute(1, 2, 0).numpy(), turned)


def test_image_ids_of_files_match_the_longest_trailing_part(tmp_path: Path) -> None:
    doc = _base_doc()
    doc["images"] += [{"id": 3, "file_name": "other/b.png", "height": H, "width": W},
                      {"id": 4, "file_name": "train/d.png", "height": H, "width": W}]
    ds = _load(tmp_path, doc)
    found = ds.image_ids_of_files([tmp_path / "copy" / "a.png", "x/sub/b.png", "/data/other/b.png", "c.png",
                                   "b.png", "images/d.png"])
    assert found == [1, 2, 3, None, None, 4]  # b.png alone is ambiguous; d.png's base name is unique
