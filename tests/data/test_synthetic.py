"""Tests for the built-in synthetic COCO dataset: determinism, COCO validity, mask/pixel agreement."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from pycocotools.coco import COCO

from instaseg.data.synthetic import (
    SyntheticDataset,
    generate_synthetic_dataset,
    synthetic_category_names,
)

NUM_IMAGES = 60

# pycocotools 2.0.x on numpy 2 warns on every decode; not ours to fix.
pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")


@pytest.fixture(scope="module")
def standard(tmp_path_factory: pytest.TempPathFactory) -> SyntheticDataset:
    return generate_synthetic_dataset(tmp_path_factory.mktemp("standard"), num_images=NUM_IMAGES)


@pytest.fixture(scope="module")
def hard(tmp_path_factory: pytest.TempPathFactory) -> SyntheticDataset:
    return generate_synthetic_dataset(tmp_path_factory.mktemp("hard"), num_images=NUM_IMAGES,
                                      difficulty="hard")


def _splits(ds: SyntheticDataset) -> list[tuple[Path, Path]]:
    return [(ds.train_images, ds.train_annotations), (ds.val_images, ds.val_annotations)]


def _load(path: Path) -> dict:
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def _all_annotations(ds: SyntheticDataset) -> list[dict]:
    return [a for _, ann_path in _splits(ds) for a in _load(ann_path)["annotations"]]


def _image_masks(coco: COCO, image_id: int) -> list[tuple[dict, np.ndarray]]:
    anns = coco.loadAnns(coco.getAnnIds(imgIds=[image_id], iscrowd=None))
    return [(a, coco.annToMask(a).astype(bool)) for a in anns]


def _reference_tight_box(mask: np.ndarray) -> list[float]:
    """COCO [x, y, w, h] of a mask by explicit loops (x + w = last column + 1)."""
    grid = mask.tolist()
    rows = [r for r, line in enumerate(grid) if any(line)]
    cols = [c for c in range(mask.shape[1]) if any(grid[r][c] for r in rows)]
    return [float(cols[0]), float(rows[0]), float(cols[-1] + 1 - cols[0]),
            float(rows[-1] + 1 - rows[0])]


def _dilate(mask: np.ndarray, steps: int) -> np.ndarray:
    out = mask.copy()
    for _ in range(steps):
        grown = out.copy()
        grown[1:] |= out[:-1]
        grown[:-1] |= out[1:]
        grown[:, 1:] |= out[:, :-1]
        grown[:, :-1] |= out[:, 1:]
        out = grown
    return out


# ---------------------------------------------------------------------------------------------


def test_same_seed_same_bytes_and_different_seed_differs(tmp_path: Path) -> None:
    runs = [generate_synthetic_dataset(tmp_path / name, num_images=10, seed=seed, image_size=64)
            for name, seed in (("a", 3), ("b", 3), ("c", 4))]
    a, b, c = runs
    for (img_a, ann_a), (img_b, ann_b), (img_c, ann_c) in zip(*map(_splits, runs)):
        assert ann_a.read_bytes() == ann_b.read_bytes()
        assert ann_a.read_bytes() != ann_c.read_bytes()
        names = sorted(p.name for p in img_a.glob("*.png"))
        assert names == sorted(p.name for p in img_b.glob("*.png"))
        assert all((img_a / n).read_bytes() == (img_b / n).read_bytes() for n in names)
        assert any((img_a / n).read_bytes() != (img_c / n).read_bytes() for n in names)
    assert a.category_names == c.category_names


def test_layout_ids_and_splits(standard: SyntheticDataset) -> None:
    train, val = _load(standard.train_annotations), _load(standard.val_annotations)
    assert len(val["images"]) == round(0.2 * NUM_IMAGES)
    image_ids = [im["id"] for im in train["images"] + val["images"]]
    assert sorted(image_ids) == list(range(1, NUM_IMAGES + 1))  # ids start at 1, unique
    ann_ids = [a["id"] for a in train["annotations"] + val["annotations"]]
    assert len(set(ann_ids)) == len(ann_ids) and min(ann_ids) == 1
    for image_dir, ann_path in _splits(standard):
        for im in _load(ann_path)["images"]:
            assert im["file_name"] == f"{im['id']:06d}.png"
            with Image.open(image_dir / im["file_name"]) as pil:
                assert pil.mode == "RGB" and pil.size == (im["width"], im["height"]) == (128, 128)


def test_categories_are_non_contiguous_and_named(standard: SyntheticDataset) -> None:
    names = synthetic_category_names()
    assert len(names) >= 5 and len(set(names)) == len(names)
    for _, ann_path in _splits(standard):
        cats = _load(ann_path)["categories"]
        ids = [c["id"] for c in cats]
        assert [c["name"] for c in cats] == names == list(standard.category_names)
        assert ids == list(standard.category_ids)
        assert min(ids) > 1 and ids != list(range(ids[0], ids[0] + len(ids)))
        assert all(set(c) >= {"id", "name", "supercategory"} for c in cats)
    used = {a["category_id"] for a in _all_annotations(standard)}
    assert used == set(standard.category_ids)  # every class appears


def test_annotations_decode_to_masks_matching_area_and_bbox(standard: SyntheticDataset) -> None:
    for _, ann_path in _splits(standard):
        coco = COCO(str(ann_path))
        for ann in coco.dataset["annotations"]:
            assert set(ann) >= {"id", "image_id", "category_id", "segmentation", "area", "bbox",
                                "iscrowd"}
            image = coco.imgs[ann["image_id"]]
            mask = coco.annToMask(ann).astype(bool)
            assert mask.shape == (image["height"], image["width"])
            assert mask.sum() > 0
            assert ann["area"] == float(mask.sum())
            assert ann["bbox"] == _reference_tight_box(mask)


def test_instances_do_not_overlap(standard: SyntheticDataset, hard: SyntheticDataset) -> None:
    for ds in (standard, hard):
        for _, ann_path in _splits(ds):
            coco = COCO(str(ann_path))
            for image_id in coco.getImgIds():
                masks = [m for _, m in _image_masks(coco, image_id)]
                if masks:
                    count = np.sum(np.stack(masks).astype(np.int32), axis=0)
                    assert count.max() <= 1, f"overlapping instances in image {image_id}"


def _check_pixels_agree(image: np.ndarray, masks: list[np.ndarray]) -> tuple[int, int]:
    """Per mask: inside pixels differ from the nearby background, the border ring matches it.

    Returns (masks checked, masks that failed). Background reference = median colour of the
    unannotated pixels within 2 px of the mask.
    """
    union = np.any(np.stack(masks), axis=0)
    checked = failed = 0
    for mask in masks:
        ring = _dilate(mask, 2) & ~union
        if ring.sum() < 10:
            continue
        reference = np.median(image[ring], axis=0)
        inside_far = np.abs(image[mask] - reference).max(axis=1) > 30
        ring_near = np.abs(image[ring] - reference).max(axis=1) <= 30
        checked += 1
        failed += int(inside_far.mean() < 0.95 or ring_near.mean() < 0.95)
    return checked, failed


def test_masks_agree_with_image_pixels(standard: SyntheticDataset, hard: SyntheticDataset) -> None:
    for ds in (standard, hard):
        checked = failed = 0
        for image_dir, ann_path in _splits(ds):
            coco = COCO(str(ann_path))
            for image_id in coco.getImgIds():
                pairs = _image_masks(coco, image_id)
                if not pairs:
                    continue
                path = image_dir / coco.imgs[image_id]["file_name"]
                image = np.asarray(Image.open(path), dtype=np.float64)
                c, f = _check_pixels_agree(image, [m for _, m in pairs])
                checked, failed = checked + c, failed + f
        assert checked > 50
        assert failed == 0


def test_unannotated_pixels_look_like_background(standard: SyntheticDataset,
                                                  hard: SyntheticDataset) -> None:
    """No object is drawn without an annotation: unannotated pixels stay close to the median of
    the unannotated pixels of their 16x16 block. The background varies slowly (within a block by
    well under 40), while objects differ from any background pixel by over 50."""
    for ds in (standard, hard):
        outliers = total = 0
        for image_dir, ann_path in _splits(ds):
            coco = COCO(str(ann_path))
            for image_id in coco.getImgIds():
                image = np.asarray(Image.open(image_dir / coco.imgs[image_id]["file_name"]),
                                   dtype=np.float64)
                union = np.zeros(image.shape[:2], dtype=bool)
                for _, mask in _image_masks(coco, image_id):
                    union |= mask
                for r in range(0, image.shape[0], 16):
                    for c in range(0, image.shape[1], 16):
                        pixels = image[r:r + 16, c:c + 16][~union[r:r + 16, c:c + 16]]
                        if len(pixels) >= 20:
                            dev = np.abs(pixels - np.median(pixels, axis=0)).max(axis=1)
                            outliers += int((dev > 40).sum())
                            total += len(pixels)
        assert total > 0 and outliers == 0


def test_both_encodings_negatives_and_crowd(standard: SyntheticDataset) -> None:
    train, val = _load(standard.train_annotations), _load(standard.val_annotations)
    anns = train["annotations"] + val["annotations"]
    polygons = [a for a in anns if isinstance(a["segmentation"], list)]
    rles = [a for a in anns if isinstance(a["segmentation"], dict) and not a["iscrowd"]]
    assert polygons and rles
    assert all(isinstance(a["segmentation"]["counts"], str) for a in rles)  # compressed RLE
    assert all(len(p) >= 6 and len(p) % 2 == 0 for a in polygons for p in a["segmentation"])
    names = dict(zip(standard.category_ids, standard.category_names))
    # Shapes with holes are never polygons.
    assert not {names[a["category_id"]] for a in polygons} & {"ring", "square_frame"}
    for split in (train, val):  # negatives in each split
        annotated = {a["image_id"] for a in split["annotations"]}
        assert any(im["id"] not in annotated for im in split["images"])
    crowds = [a for a in train["annotations"] if a["iscrowd"]]
    assert crowds and not any(a["iscrowd"] for a in val["annotations"])
    assert all(isinstance(a["segmentation"]["counts"], list) for a in crowds)
    assert all(a["iscrowd"] in (0, 1) for a in anns)


def test_crowd_flag_off(tmp_path: Path) -> None:
    ds = generate_synthetic_dataset(tmp_path, num_images=30, image_size=48, crowd=False)
    assert not any(a["iscrowd"] for a in _all_annotations(ds))


def test_hard_has_more_and_smaller_objects(standard: SyntheticDataset,
                                           hard: SyntheticDataset) -> None:
    def stats(ds: SyntheticDataset) -> tuple[float, float]:
        anns = [a for a in _all_annotations(ds) if not a["iscrowd"]]
        per_image = len(anns) / len({a["image_id"] for a in anns})
        return per_image, float(np.median([a["area"] for a in anns]))

    (std_count, std_area), (hard_count, hard_area) = stats(standard), stats(hard)
    assert hard_count > 1.5 * std_count
    assert hard_area < 0.5 * std_area
    assert max(np.bincount([a["image_id"] for a in _all_annotations(hard)])) <= 16  # 15 + crowd


def test_rectangular_size_and_progress(tmp_path: Path) -> None:
    ds = generate_synthetic_dataset(tmp_path, num_images=6, image_size=(40, 72), val_fraction=0.5,
                                    progress=True)
    for image_dir, ann_path in _splits(ds):
        data = _load(ann_path)
        assert len(data["images"]) == 3
        for im in data["images"]:
            assert (im["height"], im["width"]) == (40, 72)
            with Image.open(image_dir / im["file_name"]) as pil:
                assert pil.size == (72, 40)
        for ann in data["annotations"]:
            x, y, w, h = ann["bbox"]
            assert 0 <= x and 0 <= y and x + w <= 72 and y + h <= 40


@pytest.mark.parametrize("kwargs", [{"difficulty": "extreme"}, {"val_fraction": 1.0},
                                    {"num_images": 0}, {"image_size": 8}, {"seed": -1}])
def test_bad_arguments_raise(tmp_path: Path, kwargs: dict) -> None:
    with pytest.raises(ValueError):
        generate_synthetic_dataset(tmp_path, **kwargs)
