"""Overlay pictures: light fills and outlines in the class colour, labels inside the picture, and a
legend instead of labels when objects are many or small."""

import numpy as np
import pytest
import torch

from instaseg.viz.overlay import (PALETTE, add_title, class_colours, draw_instances, plan_labels, side_by_side,
                                  tile_pictures)


def _one_instance(box, size=64):
    image = np.zeros((size, size, 3), dtype=np.uint8)
    masks = torch.zeros(1, size, size, dtype=torch.bool)
    x1, y1, x2, y2 = box
    masks[0, y1 + 2:y2 - 2, x1 + 2:x2 - 2] = True
    boxes = torch.tensor([box], dtype=torch.float32)
    return image, boxes, masks


def test_mask_is_filled_lightly_and_outlined_in_the_class_colour_and_nothing_else_changes():
    image, boxes, masks = _one_instance((10, 20, 30, 40))
    picture = np.asarray(draw_instances(image, boxes, torch.tensor([2]), masks, alpha=0.5, show_labels=False))
    colour = class_colours([2])[0]
    assert (colour == PALETTE[2]).all()
    inside = picture[24:36, 14:26]  # the mask without its one-pixel border
    np.testing.assert_allclose(inside, np.broadcast_to(0.5 * 0.8 * colour, inside.shape), atol=1)  # shade 0.8
    border = picture[22, 12:28]  # the mask's top row: the outline
    assert (border == colour).all()
    outside = np.ones(picture.shape[:2], bool)
    outside[22:38, 12:28] = False
    assert picture[outside].max() == 0  # with a mask no box is drawn, and labels were asked away


def test_label_near_the_right_edge_stays_inside_the_picture():
    image, boxes, masks = _one_instance((50, 30, 64, 44))
    plain = np.asarray(draw_instances(image, boxes, torch.tensor([0]), masks, show_labels=False))
    picture = np.asarray(draw_instances(image, boxes, torch.tensor([0]), masks, torch.tensor([0.99]),
                                        class_names=["square_frame"]))
    changed = np.nonzero((picture != plain).any(axis=-1))
    colour = PALETTE[0]
    # "square_frame 0.99" is wider than the 14 px left of x=50: it is moved left, ending at the edge
    assert changed[1].min() < 50 - 20 and changed[1].max() == 63
    assert ((picture == colour).all(axis=-1)[:30]).any()


def test_plan_labels_keeps_every_label_inside_and_apart():
    rng = np.random.default_rng(0)
    xy = rng.uniform(-10, 100, size=(30, 2))
    boxes = np.concatenate([xy, xy + rng.uniform(2, 30, size=(30, 2))], axis=1)
    sizes = [(int(w), 12) for w in rng.integers(10, 60, size=30)]
    placed = plan_labels((100, 120), boxes, sizes, list(range(30)), budget=1.0)
    assert placed
    rects = list(placed.values())
    for i, (x0, y0, x1, y1) in enumerate(rects):
        assert 0 <= x0 < x1 <= 120 and 0 <= y0 < y1 <= 100
        for a0, b0, a1, b1 in rects[i + 1:]:
            assert x1 <= a0 or a1 <= x0 or y1 <= b0 or b1 <= y0
    assert plan_labels((100, 120), boxes, sizes, list(range(30)), max_labels=20) == {}
    budget = plan_labels((100, 120), boxes, sizes, list(range(30)), budget=0.05)
    assert sum(w * h for i, (w, h) in enumerate(sizes) if i in budget) <= 0.05 * 100 * 120


def dense_scene(count=300, size=512, seed=0):
    """``count`` small discs (radius 3 to 8 px) of 3 classes on a textured background."""
    rng = np.random.default_rng(seed)
    image = (rng.random((size, size, 3)) * 60 + 100).astype(np.uint8)
    yy, xx = np.mgrid[:size, :size]
    boxes, masks = [], []
    for _ in range(count):
        r = rng.uniform(3, 8)
        cx, cy = rng.uniform(r, size - r, size=2)
        masks.append((xx - cx) ** 2 + (yy - cy) ** 2 <= r * r)
        boxes.append([cx - r, cy - r, cx + r, cy + r])
    return (image, torch.tensor(boxes, dtype=torch.float32), torch.from_numpy(rng.integers(0, 3, count)),
            torch.from_numpy(np.stack(masks)), torch.from_numpy(rng.random(count)))


def test_a_dense_image_keeps_its_pixels_visible_and_gets_a_legend_not_300_labels():
    image, boxes, labels, masks, scores = dense_scene()
    names = ["nucleus", "mitotic", "apoptotic"]
    picture = np.asarray(draw_instances(image, boxes, labels, masks, scores, names)).astype(int)
    plain = np.asarray(draw_instances(image, boxes, labels, masks, scores, names, show_labels=False)).astype(int)
    by_labels = (picture != plain).any(axis=-1)
    assert 0 < by_labels.mean() < 0.03  # the legend alone, in one corner
    rows, cols = np.nonzero(by_labels)
    assert rows.max() - rows.min() < 100 and cols.max() - cols.min() < 200
    covered = masks.any(0).numpy()
    assert not (by_labels & covered).mean() > 0.01  # the emptiest corner: few objects under the legend
    # the objects stay visible: a light fill (alpha 0.3) inside the one-pixel outlines of these small objects
    change = np.abs(plain - image.astype(int)).max(axis=-1)
    assert change[~covered].max() == 0
    padded = np.pad(masks.numpy(), ((0, 0), (1, 1), (1, 1)))  # outside the picture is background
    inner = (padded[:, 1:-1, 1:-1] & padded[:, :-2, 1:-1] & padded[:, 2:, 1:-1] & padded[:, 1:-1, :-2]
             & padded[:, 1:-1, 2:])
    single = (masks.numpy().sum(0) == 1) & inner.any(0)  # interiors of non-overlapping objects
    assert change[single].max() <= 0.3 * 255 * 1.2 + 1
    outline = (plain == np.asarray(class_colours(labels.numpy()))[None, None, 0]).all(axis=-1)  # class 0's colour
    assert (~inner.any(0) & covered).mean() / covered.mean() < 0.6 and outline.mean() < covered.mean()


def test_a_few_instances_get_labels_and_no_legend():
    image, boxes, labels, masks, scores = dense_scene(count=5, size=256, seed=1)
    picture = np.asarray(draw_instances(image, boxes, labels, masks, scores, ["a", "b", "c"])).astype(int)
    plain = np.asarray(draw_instances(image, boxes, labels, masks, scores, show_labels=False)).astype(int)
    by_labels = (picture != plain).any(axis=-1)
    assert 0 < by_labels.mean() < 0.15


def test_empty_mask_gets_its_box_and_float_masks_are_thresholded():
    image = np.zeros((32, 32, 3), np.uint8)
    masks = torch.zeros(1, 32, 32)
    masks[0, 5:9, 5:9] = 0.4  # below 0.5: no pixel
    picture = np.asarray(draw_instances(image, torch.tensor([[4.0, 4.0, 12.0, 12.0]]), torch.tensor([1]), masks,
                                        show_labels=False))
    assert (picture[4, 4:12] == PALETTE[1]).all() and picture[6, 6].max() == 0


def test_side_by_side_tiles_and_titles():
    left = draw_instances(np.full((8, 5, 3), 10, np.uint8), torch.zeros(0, 4), torch.zeros(0, dtype=torch.int64))
    right = draw_instances(np.full((6, 7, 3), 20, np.uint8), torch.zeros(0, 4), torch.zeros(0, dtype=torch.int64))
    both = np.asarray(side_by_side(left, right, gap=2))
    assert both.shape == (8, 5 + 2 + 7, 3)
    assert (both[:, :5] == 10).all() and (both[:6, 7:] == 20).all() and (both[:, 5:7] == 255).all()
    grid = tile_pictures([left, right, left], columns=2, gap=1)
    assert grid.size == (2 * 7 + 1, 2 * 8 + 1)
    titled = add_title(left, "x", size=10)
    assert titled.size == (5, 8 + 18)
    with pytest.raises(ValueError):
        tile_pictures([], columns=2)


def test_masks_kept_as_crops_draw_the_same_picture():
    from instaseg.structures.mask_crops import MaskCrops

    image = (np.arange(40 * 50 * 3) % 251).astype(np.uint8).reshape(40, 50, 3)
    masks = torch.zeros(3, 40, 50, dtype=torch.bool)
    masks[0, 5:20, 3:30] = True
    masks[1, 25:38, 10:12] = True
    masks[2, 22:30, 35:49] = True
    boxes = torch.tensor([[3, 5, 30, 20], [10, 25, 12, 38], [35, 22, 49, 30]], dtype=torch.float32)
    labels, scores = torch.tensor([0, 1, 0]), torch.tensor([0.9, 0.8, 0.7])
    full = np.asarray(draw_instances(image, boxes, labels, masks, scores))
    cropped = np.asarray(draw_instances(image, boxes, labels, MaskCrops.from_masks(masks), scores))
    assert np.array_equal(full, cropped)


def test_keypoints_draw_joints_and_limbs_of_labelled_points_only():
    image, boxes, masks = _one_instance((4, 4, 60, 60))
    # joints at pixel centres (12.5, 12.5), (40.5, 12.5); the third is unlabelled (v = 0) and hidden
    keypoints = torch.tensor([[[12.5, 12.5, 2.0], [40.5, 12.5, 1.0], [40.5, 50.5, 0.0]]])
    plain = np.asarray(draw_instances(image, boxes, torch.tensor([2]), masks, show_labels=False))
    picture = np.asarray(draw_instances(image, boxes, torch.tensor([2]), masks, show_labels=False,
                                        keypoints=keypoints, skeleton=[(0, 1), (1, 2)]))
    assert (picture[12, 12] == 255).all() and (picture[12, 40] == 255).all()  # white joint dots
    assert (picture[12, 26] == class_colours([2])[0]).all()  # the limb between them, in the class colour
    assert (plain[12, 26] != picture[12, 26]).any()
    np.testing.assert_array_equal(picture[45:56, 30:50], plain[45:56, 30:50])  # no dot, no limb to v = 0
    with pytest.raises(ValueError, match="keypoints must be"):
        draw_instances(image, boxes, torch.tensor([2]), masks, keypoints=torch.zeros(1, 3))
