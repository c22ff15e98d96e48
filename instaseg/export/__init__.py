"""Deployment formats: ONNX (ONNX Runtime) and ``torch.export`` programs, post-processing included.

``export_onnx(model, "model.onnx")`` writes a graph ``image (3, H, W) float RGB in [0, 255] ->
boxes, scores, labels, masks, mask_scores`` for Mask R-CNN, MS R-CNN, YOLACT and YOLACT++, and
``keypoints`` after them for Keypoint R-CNN (``boxes, scores, labels, keypoints`` without a mask
branch).
Importing this package registers instaseg's export ops (``torch.ops.instaseg.*``), which a saved
``torch.export`` program needs before ``torch.export.load``.
"""

from instaseg.export import ops  # noqa: F401  (registers torch.ops.instaseg.*)
from instaseg.export.exporters import (
    KEYPOINTS_OUTPUT,
    ONNX_OPSET,
    OUTPUT_LAYOUTS,
    OUTPUT_NAMES,
    OnnxPredictor,
    export_onnx,
    export_program,
    export_wrapper,
    load_program,
    output_names,
    outputs_to_instances,
    program_to_onnx,
    save_program,
)

__all__ = [
    "KEYPOINTS_OUTPUT",
    "ONNX_OPSET",
    "OUTPUT_LAYOUTS",
    "OUTPUT_NAMES",
    "OnnxPredictor",
    "export_onnx",
    "export_program",
    "export_wrapper",
    "load_program",
    "output_names",
    "outputs_to_instances",
    "program_to_onnx",
    "save_program",
]
