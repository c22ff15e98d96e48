"""train.precision / bench --precision: autocast dtypes, float32 losses, and a bf16 benchmark step."""

from dataclasses import dataclass

import pytest
import torch

from instaseg.engine.precision import autocast, autocast_dtype, float32_outputs, grad_scaler
from instaseg.hub import run_benchmark


@dataclass
class _Inner:
    logits: torch.Tensor
    index: torch.Tensor


@dataclass
class _Raw:
    sizes: list
    levels: list
    inner: _Inner
    named: dict
    optional: torch.Tensor | None


def test_float32_outputs_casts_every_16_bit_tensor_and_keeps_the_gradient_path():
    leaf = torch.randn(3, 4, dtype=torch.float64).to(torch.bfloat16).requires_grad_(True)
    half = leaf.to(torch.float16)
    index = torch.tensor([2, 0])
    raw = _Raw(sizes=[(5, 6)], levels=[leaf * 2, torch.ones(2)], inner=_Inner(half, index),
               named={"a": (leaf,)}, optional=None)
    out = float32_outputs(raw)
    assert isinstance(out, _Raw) and isinstance(out.inner, _Inner) and isinstance(out.named["a"], tuple)
    assert [t.dtype for t in out.levels] == [torch.float32, torch.float32]
    assert out.inner.logits.dtype == torch.float32 and out.named["a"][0].dtype == torch.float32
    assert out.inner.index is index and out.sizes == [(5, 6)] and out.optional is None
    assert raw.levels[0].dtype == torch.bfloat16  # the input is left as it was
    (out.levels[0].sum() + out.named["a"][0].sum()).backward()
    assert leaf.grad.dtype == torch.bfloat16 and torch.equal(leaf.grad.float(), torch.full((3, 4), 3.0))


def test_autocast_dtype_per_device_and_mode():
    cpu = torch.device("cpu")
    assert autocast_dtype("float32", cpu) is None and autocast_dtype("bf16", cpu) == torch.bfloat16
    assert autocast_dtype("fp16", torch.device("cuda")) == torch.float16
    with pytest.warns(UserWarning, match="fp16 needs CUDA"):
        assert autocast_dtype("fp16", cpu) is None
    with pytest.raises(ValueError, match="float32, bf16, fp16"):
        autocast_dtype("int8", cpu)
    assert grad_scaler(torch.bfloat16, cpu) is None and grad_scaler(None, cpu) is None
    layer = torch.nn.Linear(4, 2)
    with autocast(torch.bfloat16, cpu):
        assert layer(torch.ones(1, 4)).dtype == torch.bfloat16
    with autocast(None, cpu):
        assert layer(torch.ones(1, 4)).dtype == torch.float32


def test_a_bf16_training_benchmark_step_runs():
    result = run_benchmark("mask_rcnn_r18_fpn_tiny", size=64, iters=1, train=True, precision="bf16",
                           flops=False, stages=False)
    assert result.precision == "bf16" and result.mode == "train" and len(result.times_ms) == 1


@pytest.mark.parametrize("preset", ["mask_rcnn_r18_fpn_tiny", "yolact_r18_tiny"])
def test_bf16_inference_features_follow_float32_and_results_come_back_in_float32(preset):
    """bench --precision bf16 / --modes bf16: the FPN maps within 3% (relative Frobenius error per level;
    measured below 1.5%) of float32's, and boxes, scores and masks leave ``predict`` in full precision."""
    from instaseg.hub import build_model

    torch.manual_seed(0)
    model = build_model(preset, num_classes=3).eval()
    image = torch.rand(3, 128, 128, generator=torch.Generator().manual_seed(1)) * 255
    batch = model.preprocess([image])
    batch = getattr(batch, "tensor", batch)  # R-CNN: an ImageList; YOLACT: the square batch

    def levels() -> list[torch.Tensor]:
        return list(model.neck(list(model.backbone(batch).values())).values())

    with torch.no_grad():
        reference = levels()
        with autocast(torch.bfloat16, torch.device("cpu")):
            reduced = levels()
            results = model.predict([image])
    for want, got in zip(reference, reduced, strict=True):
        assert got.dtype == torch.bfloat16
        assert float((got.float() - want).norm() / want.norm()) < 0.03
    assert results[0].boxes.dtype == torch.float32 and results[0].scores.dtype == torch.float32
