"""The inference fast paths change nothing: same detections as the plain path, training untouched.

Fast paths: FrozenBatchNorm2d folded into the convolutions (a cache, rebuilt when weights change),
channels-last feature maps, and per-class NMS run on the best-scored candidates only.
"""

import copy

import pytest
import torch

from instaseg.hub import build_model
from instaseg.ops.nms import top_batched_nms
from instaseg.layers import FrozenBatchNorm2d
from instaseg.layers.fusion import fast_paths
from instaseg.ops.nms import batched_nms

from tests.detectors._toy_data import toy_scene

FROZEN = {"model__backbone__norm": "FrozenBN", "model__backbone__freeze_at": 2}


def _randomize(model):
    """Non-trivial frozen statistics (and DCN offsets), well conditioned so scores do not tie."""
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, FrozenBatchNorm2d):
                module.weight.uniform_(0.8, 1.2)
                module.bias.uniform_(-0.1, 0.1)
                module.running_mean.uniform_(-0.1, 0.1)
                module.running_var.uniform_(0.8, 1.2)
            elif hasattr(module, "conv_offset"):
                module.conv_offset.weight.normal_(0.0, 0.01)
                module.conv_offset.bias.normal_(0.0, 0.5)
    return model


def _rcnn():
    model = build_model("mask_rcnn_r18_fpn_tiny", num_classes=3, input__min_size_test=96, input__max_size_test=128,
                        model__inference__score_thresh=0.0, **FROZEN)
    return _randomize(model).double()


def _yolact():
    model = build_model("yolact_pp_r18_tiny", num_classes=3, input__square=64, model__inference__score_thresh=0.0,
                        **FROZEN)
    return _randomize(model).double()


def _images(n=2, size=96):
    return [toy_scene(seed, size)[0].double() for seed in range(n)]


def _assert_same(plain, fast):
    for a, b in zip(plain, fast):
        assert len(a) == len(b) > 0
        assert torch.equal(a.labels, b.labels)
        torch.testing.assert_close(b.boxes, a.boxes, rtol=0, atol=1e-9)
        torch.testing.assert_close(b.scores, a.scores, rtol=0, atol=1e-12)
        if a.mask_scores is not None:
            torch.testing.assert_close(b.mask_scores, a.mask_scores, rtol=0, atol=1e-12)
        assert torch.equal(a.masks, b.masks)


@pytest.mark.parametrize("factory, size", [(_rcnn, 96), (_yolact, 64)])
def test_fast_paths_give_the_plain_detections(factory, size):
    model = factory().eval()
    images = _images(2, size)
    with fast_paths(fold_batchnorm=False, channels_last=False):
        plain = model.predict(images)
    fast = model.predict(images)
    _assert_same(plain, fast)


def test_folding_stays_out_of_the_state_dict_and_training():
    model = _rcnn()
    reference = copy.deepcopy(model)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    model.eval()
    model.predict(_images(1))
    after = model.state_dict()
    assert list(after) == list(state) and all(torch.equal(after[k], state[k]) for k in state)

    images, targets = zip(*[toy_scene(seed, 96) for seed in range(2)])
    images, targets = [i.double() for i in images], list(targets)
    losses = []
    for net in (model, reference):  # the same batch, the same RoI sampling
        net.train()
        torch.manual_seed(0)
        total, _ = net.loss(net(images, targets), targets)
        total.backward()
        losses.append(total.detach())
    torch.testing.assert_close(losses[0], losses[1], rtol=0, atol=0)
    for (name, p), q in zip(model.named_parameters(), reference.parameters()):
        if p.requires_grad:
            torch.testing.assert_close(p.grad, q.grad, rtol=0, atol=0, msg=name)


def test_new_weights_after_inference_are_used():
    model = _rcnn().eval()
    images = _images(1)
    model.predict(images)  # fills the folding cache
    other = _randomize(_rcnn()).eval()
    model.load_state_dict(other.state_dict())
    with fast_paths(fold_batchnorm=False, channels_last=False):
        expected = other.predict(images)
    _assert_same(expected, model.predict(images))


class _ConvInputLayouts(torch.overrides.TorchFunctionMode):
    """Records, for every 2-D convolution called (a module's, or a folded one's ``F.conv2d``), whether its
    input is channels-last (and not also plain contiguous, as a 1x1 map is)."""

    def __init__(self) -> None:
        super().__init__()
        self.layouts: list[bool] = []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        if getattr(func, "__name__", "") == "conv2d":
            x = args[0]
            self.layouts.append(x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous())
        return func(*args, **(kwargs or {}))


def test_channels_last_at_inference_only():
    """Training keeps the default layout (oneDNN would otherwise reorder every weight and weight
    gradient, each step); inference, with autograd off, runs channels-last from the stem on."""
    model = _rcnn()
    convs = [m for m in model.modules() if isinstance(m, torch.nn.Conv2d)]
    images, targets = zip(*[toy_scene(seed, 96) for seed in range(2)])
    with _ConvInputLayouts() as seen:
        model.train()(list(images), list(targets))
    assert len(seen.layouts) >= len(convs) - 1 and not any(seen.layouts)  # every conv ran (the mask head's too)
    with _ConvInputLayouts() as seen:
        model.eval().predict(list(images))
    assert seen.layouts and all(seen.layouts[:20])  # the backbone's convs (the mask head runs only on detections)


def _reference_top_nms(boxes, scores, idxs, threshold, max_keep):
    """Greedy per-class NMS with explicit loops (float64), ranked by score then index."""
    order = sorted(range(len(scores)), key=lambda i: (-float(scores[i]), i))
    kept = []
    for i in order:
        ok = True
        for j in kept:
            if int(idxs[j]) != int(idxs[i]):
                continue
            x1, y1 = max(boxes[i, 0], boxes[j, 0]), max(boxes[i, 1], boxes[j, 1])
            x2, y2 = min(boxes[i, 2], boxes[j, 2]), min(boxes[i, 3], boxes[j, 3])
            inter = max(float(x2 - x1), 0.0) * max(float(y2 - y1), 0.0)
            area = lambda b: float((b[2] - b[0]) * (b[3] - b[1]))
            if inter / (area(boxes[i]) + area(boxes[j]) - inter) > threshold:
                ok = False
                break
        if ok:
            kept.append(i)
    return kept[:max_keep]


@pytest.mark.parametrize("max_keep", [1, 7, 30, 1000])
def test_top_batched_nms_is_the_head_of_the_full_run(max_keep):
    g = torch.Generator().manual_seed(max_keep)
    n = 400
    xy = torch.rand(n, 2, generator=g, dtype=torch.float64) * 60
    boxes = torch.cat([xy, xy + 5 + torch.rand(n, 2, generator=g, dtype=torch.float64) * 30], dim=1)
    scores = (torch.rand(n, generator=g, dtype=torch.float64) * 20).floor() / 20  # many exact ties
    idxs = torch.randint(0, 3, (n,), generator=g)
    got = top_batched_nms(boxes, scores, idxs, 0.5, max_keep)
    assert torch.equal(got, batched_nms(boxes, scores, idxs, 0.5)[:max_keep])
    assert got.tolist() == _reference_top_nms(boxes, scores, idxs, 0.5, max_keep)
