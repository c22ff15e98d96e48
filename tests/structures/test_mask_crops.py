"""Masks kept as crops: round trips to full masks, and COCO RLE from crops against the full-mask encoder."""

import numpy as np
import pytest
import torch

from instaseg.structures.instances import CroppedInstances, Instances
from instaseg.structures.mask_crops import MaskCrops, window_to_rle
from instaseg.structures.masks import bitmap_to_rle, rle_to_bitmap


def _random_masks(num, height, width, seed=0):
    generator = torch.Generator().manual_seed(seed)
    masks = torch.zeros(num, height, width, dtype=torch.bool)
    for i in range(num):
        x0, x1 = sorted(torch.randint(0, width + 1, (2,), generator=generator).tolist())
        y0, y1 = sorted(torch.randint(0, height + 1, (2,), generator=generator).tolist())
        masks[i, y0:y1, x0:x1] = torch.rand(y1 - y0, x1 - x0, generator=generator) > 0.3
    return masks


def test_from_masks_keeps_tight_windows_and_round_trips():
    masks = _random_masks(12, 17, 23)
    masks[0] = False  # an empty mask
    masks[1] = True  # the whole image
    crops = MaskCrops.from_masks(masks, offset=(5, 7), image_size=(40, 50))
    full = crops.to_full()
    assert full.shape == (12, 40, 50) and crops.shape == (12, 40, 50)
    assert torch.equal(full[:, 7:24, 5:28], masks) and full.sum() == masks.sum()
    assert crops.windows[0].tolist() == [5, 7, 5, 7] and crops.crops[0].numel() == 0
    assert crops.windows[1].tolist() == [5, 7, 28, 24]
    for i in range(2, 12):  # tight: every window edge row / column holds a True pixel
        crop = crops.crops[i]
        if crop.numel():
            assert crop[0].any() and crop[-1].any() and crop[:, 0].any() and crop[:, -1].any()
    assert torch.equal(crops.areas(), masks.flatten(1).sum(1))
    assert crops.nbytes() == sum(c.numel() for c in crops.crops)


def test_crops_do_not_keep_the_source_tensor_alive():
    masks = torch.ones(2, 100, 100, dtype=torch.bool)
    masks[:, 50:] = False
    crops = MaskCrops.from_masks(masks)
    assert all(c.untyped_storage().nbytes() == c.numel() for c in crops.crops)


def test_select_and_concatenate():
    crops = MaskCrops.from_masks(_random_masks(5, 9, 11))
    picked = crops[torch.tensor([4, 0])]
    assert torch.equal(picked.to_full(), crops.to_full()[[4, 0]])
    assert torch.equal(crops[torch.arange(5) > 2].to_full(), crops.to_full()[3:])
    both = MaskCrops.cat([crops, picked])
    assert len(both) == 7 and torch.equal(both.to_full()[5:], picked.to_full())
    with pytest.raises(ValueError):
        MaskCrops.cat([crops, MaskCrops.empty((3, 3))])
    with pytest.raises(ValueError):
        MaskCrops(torch.tensor([[0, 0, 4, 4]]), [torch.zeros(3, 4, dtype=torch.bool)], (9, 11))
    with pytest.raises(ValueError):
        MaskCrops(torch.tensor([[0, 0, 12, 4]]), [torch.zeros(4, 12, dtype=torch.bool)], (9, 11))


@pytest.mark.parametrize("size", [(1, 1), (7, 5), (16, 31), (40, 3)])
def test_rle_from_crops_equals_the_full_mask_encoder(size):
    height, width = size
    masks = _random_masks(20, height, width, seed=height * width)
    masks[0] = True
    masks[1] = False
    if height > 2:
        masks[2] = False
        masks[2, :, 0] = True  # a full column: the window is as tall as the image
    crops = MaskCrops.from_masks(masks)
    for i, rle in enumerate(crops.to_rles()):
        assert rle == bitmap_to_rle(masks[i].numpy()), i
        assert np.array_equal(rle_to_bitmap(rle), masks[i].numpy())


def test_window_rle_of_a_loose_window():
    """A crop need not be tight: False rows and columns inside the window encode the same."""
    crop = np.zeros((6, 4), dtype=bool)
    crop[2:4, 1] = True
    full = np.zeros((10, 12), dtype=bool)
    full[3:9, 3:7] = crop
    assert window_to_rle(crop, [3, 3, 7, 9], (10, 12)) == bitmap_to_rle(full)


def test_cropped_instances_match_instances():
    masks = _random_masks(4, 20, 30)
    instances = Instances(torch.rand(4, 4) * 10, torch.rand(4), torch.tensor([0, 1, 2, 1]), masks, torch.rand(4))
    cropped = CroppedInstances.from_instances(instances, offset=(10, 5), image_size=(25, 60))
    assert cropped.image_size == (25, 60) and len(cropped) == 4
    assert torch.equal(cropped.boxes, instances.boxes + torch.tensor([10.0, 5.0, 10.0, 5.0]))
    back = cropped.to_instances()
    assert torch.equal(back.masks[:, 5:25, 10:40], masks) and torch.equal(back.mask_scores, instances.mask_scores)
    sub = cropped[cropped.labels == 1]
    assert sub.labels.tolist() == [1, 1] and torch.equal(sub.to_instances().masks, back.masks[[1, 3]])
    joined = CroppedInstances.cat([cropped, CroppedInstances.from_instances(instances[0], (0, 0), (25, 60))])
    assert len(joined) == 5
    assert len(CroppedInstances.empty((25, 60))) == 0
    with pytest.raises(ValueError):
        CroppedInstances(torch.zeros(2, 4), torch.zeros(2), torch.zeros(2, dtype=torch.int64), cropped.masks)
