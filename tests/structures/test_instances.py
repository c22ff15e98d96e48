import pytest
import torch

from instaseg.structures import ImageList, Instances, batch_images


def _instances(n, h=8, w=10, mask_scores=False):
    return Instances(
        boxes=torch.rand(n, 4),
        scores=torch.rand(n),
        labels=torch.arange(n),
        masks=torch.zeros(n, h, w, dtype=torch.bool),
        mask_scores=torch.rand(n) if mask_scores else None,
    )


def test_instances_validates_lengths_and_shapes():
    with pytest.raises(ValueError, match="scores has 2 rows"):
        Instances(torch.rand(3, 4), torch.rand(2), torch.zeros(3, dtype=torch.long), torch.zeros(3, 4, 4))
    with pytest.raises(ValueError, match="boxes must be"):
        Instances(torch.rand(3, 5), torch.rand(3), torch.zeros(3, dtype=torch.long), torch.zeros(3, 4, 4))
    with pytest.raises(ValueError, match="masks must be"):
        Instances(torch.rand(3, 4), torch.rand(3), torch.zeros(3, dtype=torch.long), torch.zeros(3, 4))


def test_instances_indexing_cat_and_empty():
    inst = _instances(5, mask_scores=True)
    top = inst[inst.scores > 0.5]
    assert len(top) == int((inst.scores > 0.5).sum())
    assert torch.equal(inst[1].labels, torch.tensor([1]))
    assert torch.equal(inst[-1].labels, torch.tensor([4]))
    both = Instances.cat([inst, inst[:2]])
    assert len(both) == 7 and both.mask_scores.shape == (7,)
    empty = Instances.empty((8, 10))
    assert len(empty) == 0 and empty.image_size == (8, 10) and empty.labels.dtype == torch.int64
    with pytest.raises(ValueError):
        Instances.cat([inst, _instances(2)])


def test_batch_images_pads_to_stride_and_keeps_sizes():
    a = torch.rand(3, 50, 70)
    b = torch.rand(3, 65, 33)
    batch = batch_images([a, b], size_divisibility=32)
    assert isinstance(batch, ImageList)
    assert batch.tensor.shape == (2, 3, 96, 96)
    assert batch.image_sizes == [(50, 70), (65, 33)]
    torch.testing.assert_close(batch.tensor[0, :, :50, :70], a)
    torch.testing.assert_close(batch.tensor[1, :, :65, :33], b)
    assert batch.tensor[0, :, 50:].abs().sum() == 0 and batch.tensor[1, :, :, 33:].abs().sum() == 0
    single = batch_images([a], size_divisibility=1)
    assert single.tensor.shape == (1, 3, 50, 70)


def test_batch_images_rejects_bad_input():
    with pytest.raises(ValueError):
        batch_images([])
    with pytest.raises(ValueError):
        batch_images([torch.rand(3, 4, 4), torch.rand(1, 4, 4)])


def test_instances_without_masks_index_and_concatenate_but_name_no_image_size():
    # a model without a mask branch (Keypoint R-CNN with boxes and keypoints only)
    inst = Instances(torch.rand(3, 4), torch.rand(3), torch.arange(3), None, keypoints=torch.rand(3, 5, 3))
    assert inst[1:].masks is None and inst[1:].keypoints.shape == (2, 5, 3)
    both = Instances.cat([inst, inst[:1]])
    assert both.masks is None and both.keypoints.shape == (4, 5, 3)
    with pytest.raises(ValueError, match="without masks"):
        Instances.cat([inst, _instances(2)])
    with pytest.raises(ValueError, match="no masks"):
        inst.image_size
