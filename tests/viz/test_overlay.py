"""Overlay pictures: masks blended in each instance's colour, boxes, and labels kept inside the picture."""

import numpy as np
import torch

from instaseg.viz.overlay import draw_instances, instance_colours, side_by_side


def _one_instance(box, size=64):
    image = np.zeros((size, size, 3), dtype=np.uint8)
    masks = torch.zeros(1, size, size, dtype=torch.bool)
    x1, y1, x2, y2 = box
    masks[0, y1 + 2:y2 - 2, x1 + 2:x2 - 2] = True
    boxes = torch.tensor([box], dtype=torch.float32)
    return image, boxes, masks


def test_mask_is_blended_in_the_instance_colour_and_nothing_else_changes():
    image, boxes, masks = _one_instance((10, 20, 30, 40))
    picture = np.asarray(draw_instances(image, boxes, torch.tensor([0]), masks, alpha=0.5))
    colour = instance_colours(1)[0].astype(np.float32)
    inside = picture[masks[0].numpy()]
    np.testing.assert_allclose(inside, np.broadcast_to(np.floor(0.5 * colour), inside.shape), atol=1)
    far = picture[50:, 40:]  # away from the box, its outline and its label
    assert far.max() == 0


def test_label_near_the_right_edge_stays_inside_the_picture():
    image, boxes, masks = _one_instance((50, 30, 64, 44))
    picture = np.asarray(draw_instances(image, boxes, torch.tensor([0]), masks, torch.tensor([0.99]),
                                        class_names=["square_frame"]))
    colour = instance_colours(1)[0]
    band = picture[:30]  # the rows above the box, where the label goes
    filled = np.nonzero((band == colour).all(axis=-1).any(axis=0))[0]
    # "square_frame 0.99" is wider than the 14 px left of x=50: it is moved left, ending at the edge
    assert filled.min() < 50 - 20 and filled.max() == 63


def test_side_by_side_puts_both_pictures_next_to_each_other():
    left = draw_instances(np.full((8, 5, 3), 10, np.uint8), torch.zeros(0, 4), torch.zeros(0, dtype=torch.int64))
    right = draw_instances(np.full((6, 7, 3), 20, np.uint8), torch.zeros(0, 4), torch.zeros(0, dtype=torch.int64))
    both = np.asarray(side_by_side(left, right, gap=2))
    assert both.shape == (8, 5 + 2 + 7, 3)
    assert (both[:, :5] == 10).all() and (both[:6, 7:] == 20).all() and (both[:, 5:7] == 255).all()


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
