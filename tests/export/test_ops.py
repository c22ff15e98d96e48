"""The export-only custom ops: eager kernels against slow references, ONNX translations against
the eager kernels in ONNX Runtime."""

from __future__ import annotations

import math

import pytest
import torch

from instaseg.export.ops import ONNX_TRANSLATIONS, batched_nms_indices, roi_align_op
from instaseg.ops.roi_align import roi_align


def _random_boxes(*shape: int, scale: float = 40.0) -> torch.Tensor:
    xy = torch.rand(*shape, 2) * scale
    wh = torch.rand(*shape, 2) * scale * 0.6 + 0.5
    return torch.cat((xy, xy + wh), dim=-1)


def _iou_float64(a: list[float], b: list[float]) -> float:
    iw = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    ih = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = iw * ih
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def reference_batched_nms(boxes, scores, iou_threshold, score_threshold, max_per_batch):
    """Greedy NMS per set with explicit loops in float64: rows [set, index], best first per set."""
    rows = []
    for b in range(boxes.shape[0]):
        entries = [(float(s), n) for n, s in enumerate(scores[b].tolist()) if s > score_threshold]
        entries.sort(key=lambda item: (-item[0], item[1]))  # by score, ties by index
        kept = []
        for _, n in entries:
            box = boxes[b, n].double().tolist()
            if all(_iou_float64(boxes[b, k].double().tolist(), box) <= iou_threshold for k in kept):
                kept.append(n)
        rows.extend([b, n] for n in kept[:max_per_batch])
    return torch.tensor(rows, dtype=torch.int64).reshape(-1, 2)


@pytest.mark.parametrize("max_per_batch", [100, 3])
def test_batched_nms_indices_matches_a_greedy_loop(max_per_batch):
    boxes, scores = _random_boxes(4, 30), torch.rand(4, 30)
    scores[1, :5] = 0.25  # entries at the score threshold are not candidates
    scores[2, 3] = scores[2, 7]  # a tie: the lower index first
    got = batched_nms_indices(boxes, scores, 0.5, 0.25, max_per_batch)
    assert torch.equal(got, reference_batched_nms(boxes, scores, 0.5, 0.25, max_per_batch))


def test_batched_nms_indices_with_nothing_to_keep():
    boxes, scores = _random_boxes(2, 5), torch.zeros(2, 5)
    assert batched_nms_indices(boxes, scores, 0.5, 0.1, 10).shape == (0, 2)
    assert batched_nms_indices(boxes[:, :0], scores[:, :0], 0.5, -math.inf, 10).shape == (0, 2)


def test_roi_align_op_is_instaseg_roi_align():
    features = torch.randn(2, 3, 12, 10)
    rois = torch.cat((torch.tensor([[0.0], [1.0], [1.0]]), _random_boxes(3, scale=30.0)), dim=1)
    expected = roi_align(features, rois, (5, 4), 0.25, 0, True)
    assert torch.equal(roi_align_op(features, rois, 0.25, 5, 4, 0, True), expected)
    empty = roi_align_op(features, rois[:0], 0.25, 5, 4, 0, True)
    assert empty.shape == (0, 3, 5, 4) and empty.data_ptr() != features.data_ptr()


def test_custom_ops_pass_opcheck():
    boxes, scores = _random_boxes(3, 20), torch.rand(3, 20)
    torch.library.opcheck(batched_nms_indices, (boxes, scores, 0.5, 0.2, 10),
                          test_utils=("test_schema", "test_faketensor"))
    features = torch.randn(1, 2, 8, 8)
    rois = torch.cat((torch.zeros(4, 1), _random_boxes(4, scale=20.0)), dim=1)
    torch.library.opcheck(roi_align_op, (features, rois, 0.5, 3, 3, 2, False),
                          test_utils=("test_schema", "test_faketensor"))


class _OpsModule(torch.nn.Module):
    def forward(self, boxes, scores, features, rois, keys):
        return (
            batched_nms_indices(boxes, scores, 0.5, 0.25, 1000),
            roi_align_op(features, rois, 0.25, 7, 7, 0, True),  # Detectron2's settings
            roi_align_op(features, rois, 0.25, 5, 6, 2, False),  # torchvision's
            torch.sort(keys, descending=True, stable=True)[1],
        )


def _inputs(num_sets: int, num_boxes: int, num_rois: int, size: tuple[int, int]):
    scores = torch.rand(num_sets, num_boxes)
    scores[0, :3] = 0.25  # exactly at the threshold: excluded on both sides
    scores[-1, 1] = scores[-1, 4]  # tied scores
    rois = torch.cat((torch.randint(0, 2, (num_rois, 1)).float(), _random_boxes(num_rois, scale=50.0) - 5.0), dim=1)
    keys = torch.randint(0, 4, (num_boxes,)).float()  # many ties
    return _random_boxes(num_sets, num_boxes), scores, torch.randn(2, 4, *size), rois, keys


def test_onnx_translations_agree_with_the_eager_ops(tmp_path):
    pytest.importorskip("onnxscript")
    ort = pytest.importorskip("onnxruntime")
    dim = torch.export.Dim
    shapes = ({0: dim("sets"), 1: dim("boxes")}, {0: dim("sets"), 1: dim("boxes")},
              {2: dim("height"), 3: dim("width")}, {0: dim("rois")}, {0: dim("boxes")})
    program = torch.onnx.export(_OpsModule(), _inputs(3, 20, 6, (16, 20)), dynamo=True, opset_version=18,
                                custom_translation_table=ONNX_TRANSLATIONS, dynamic_shapes=shapes, verbose=False)
    program.save(str(tmp_path / "ops.onnx"))
    session = ort.InferenceSession(str(tmp_path / "ops.onnx"), providers=["CPUExecutionProvider"])
    for num_sets, num_boxes, num_rois, size in [(2, 40, 9, (20, 24)), (5, 25, 1, (13, 31)), (1, 8, 0, (9, 9))]:
        inputs = _inputs(num_sets, num_boxes, num_rois, size)
        got = session.run(None, {i.name: x.numpy() for i, x in zip(session.get_inputs(), inputs)})
        expected = _OpsModule()(*inputs)
        assert torch.equal(torch.from_numpy(got[0]), expected[0])
        torch.testing.assert_close(torch.from_numpy(got[1]), expected[1], atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(torch.from_numpy(got[2]), expected[2], atol=1e-5, rtol=1e-5)
        assert torch.equal(torch.from_numpy(got[3]), expected[3])


@pytest.mark.slow
def test_keypoint_decoding_exports_with_a_symbolic_roi_count(tmp_path):
    """The ragged decoding (data-dependent pixel count) traced once with R symbolic: the program
    replays it exactly and ONNX Runtime (ScatterElements max/min, CumSum) to float rounding, for
    R = 0 too."""
    pytest.importorskip("onnxscript")
    onnxruntime = pytest.importorskip("onnxruntime")
    from instaseg.ops.keypoints import heatmaps_to_keypoints, heatmaps_to_keypoints_ragged

    class Decode(torch.nn.Module):
        def forward(self, heatmaps, rois):
            return heatmaps_to_keypoints(heatmaps, rois, "detectron2")

    def inputs(n):
        return torch.randn(n, 3, 8, 8) * 3, _random_boxes(n, scale=30.0) - 3.0

    torch.manual_seed(0)
    count = torch.export.Dim("rois", min=0, max=1000)
    program = torch.export.export(Decode(), inputs(5), dynamic_shapes=({0: count}, {0: count}), strict=False)
    path = tmp_path / "decode.onnx"
    torch.onnx.export(program, dynamo=True, opset_version=18, optimize=False, verbose=False).save(str(path))
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    names = [i.name for i in session.get_inputs()]
    for n in (4, 0, 1):
        heatmaps, rois = inputs(n)
        expected = heatmaps_to_keypoints_ragged(heatmaps, rois, "detectron2")
        assert torch.equal(program.module()(heatmaps, rois), expected)
        (got,) = session.run(None, {names[0]: heatmaps.numpy(), names[1]: rois.numpy()})
        assert got.shape == (n, 3, 3)
        torch.testing.assert_close(torch.from_numpy(got), expected, rtol=1e-5, atol=1e-5)
