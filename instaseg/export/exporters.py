"""Write a detector as ONNX or as a ``torch.export`` program, and run the files back.

Both formats hold the same graph: :func:`export_wrapper` turns a built detector into a module
``image (3, H, W) float RGB in [0, 255] -> (boxes, scores, labels, masks, mask_scores)`` (see
:data:`OUTPUT_NAMES`; a Keypoint R-CNN adds ``keypoints``, and has no ``masks`` and
``mask_scores`` without a mask branch: :func:`output_names`) that runs the model's own
``preprocess -> forward -> postprocess`` for one image, traced once by ``torch.export`` with the
image height and width symbolic (``dynamic=True``) or fixed to the example's size.

* ONNX (``torch.onnx.export(..., dynamo=True)``, opset 18): NMS and RoIAlign become the standard
  ``NonMaxSuppression`` and ``RoiAlign`` operators, so ONNX Runtime (or any runtime with those
  operators) runs the file without instaseg. The older TorchScript-based ONNX exporter
  (``dynamo=False``) is deprecated and is not used.
* ``torch_export``: the :class:`torch.export.ExportedProgram` saved with ``torch.export.save``
  (``.pt2``). It calls instaseg's custom ops, so loading it needs ``import instaseg.export``.
"""

from __future__ import annotations

import contextlib
import logging
import os
import warnings
from collections.abc import Iterator
from pathlib import Path

import torch
from torch import Tensor, nn

from instaseg.detectors.base import Detector
from instaseg.detectors.mask_rcnn import MaskRCNN
from instaseg.detectors.yolact import Yolact
from instaseg.errors import InstasegError
from instaseg.export.ops import ONNX_TRANSLATIONS
from instaseg.ops import fast_kernels
from instaseg.structures.instances import Instances

__all__ = [
    "OUTPUT_NAMES",
    "KEYPOINTS_OUTPUT",
    "OUTPUT_LAYOUTS",
    "ONNX_OPSET",
    "output_names",
    "export_wrapper",
    "export_program",
    "has_rescored_masks",
    "export_onnx",
    "program_to_onnx",
    "save_program",
    "load_program",
    "OnnxPredictor",
    "outputs_to_instances",
]

OUTPUT_NAMES = ("boxes", "scores", "labels", "masks", "mask_scores")
KEYPOINTS_OUTPUT = "keypoints"
# Every graph has one of these output lists (output_names); their lengths tell them apart.
OUTPUT_LAYOUTS = (
    OUTPUT_NAMES,  # Mask R-CNN, MS R-CNN, YOLACT, YOLACT++
    OUTPUT_NAMES + (KEYPOINTS_OUTPUT,),  # Keypoint R-CNN with the mask branch
    OUTPUT_NAMES[:3] + (KEYPOINTS_OUTPUT,),  # Keypoint R-CNN, boxes and keypoints only
)
INPUT_NAME = "image"
# Opset 18: RoiAlign with coordinate_transformation_mode (16+), GridSample for DCN (16+), and the
# opset onnxscript's torch library is written against.
ONNX_OPSET = 18
# Symbolic image sides: at least 32 px (every FPN level is then at least 1 x 1).
_MIN_SIDE, _MAX_SIDE = 32, 8192


def export_wrapper(model: nn.Module) -> nn.Module:
    """The traceable single-image module of a built detector (its layers shared; the model is put
    in eval mode).

    Raises:
        InstasegError: not an instaseg detector, or settings the graph does not reproduce
            (Soft-NMS, torchvision-style paste, RoIPool).
    """
    if isinstance(model, MaskRCNN):
        _check_exportable_rcnn(model)
    elif isinstance(model, Yolact):
        _check_exportable_yolact(model)
    else:
        raise InstasegError(f"no exporter for {type(model).__name__}: expected a MaskRCNN or Yolact model")
    return DetectorExport(model).eval()


def output_names(model: nn.Module) -> tuple[str, ...]:
    """The outputs of ``model``'s graph, in order (one of :data:`OUTPUT_LAYOUTS`): :data:`OUTPUT_NAMES`,
    then ``keypoints`` for a Keypoint R-CNN; ``masks`` and ``mask_scores`` only with a mask branch."""
    if isinstance(model, DetectorExport):
        model = model.model
    rcnn = isinstance(model, MaskRCNN)
    names = OUTPUT_NAMES if not rcnn or model.mask_head is not None else OUTPUT_NAMES[:3]
    return names + (KEYPOINTS_OUTPUT,) if rcnn and model.keypoint_head is not None else names


class DetectorExport(nn.Module):
    """A detector's own inference, ``predict``, for one image: ``forward(image (3, H, W) float RGB
    in [0, 255])`` -> ``boxes (N, 4)`` float xyxy in input-image pixels, ``scores (N,)`` class
    scores, ``labels (N,)`` int64 in ``[0, num_classes)``, ``masks (N, H, W)`` bool,
    ``mask_scores (N,)`` (MS R-CNN, YOLACT++: the rescored mask score; otherwise the class score)
    and, from a Keypoint R-CNN, ``keypoints (N, K, 3)`` float ``(x, y, score)`` in input-image
    pixels, best first; :attr:`output_names` says which (:func:`output_names`).

    Nothing is re-implemented here: while ``torch.export`` traces, the model's ``preprocess ->
    forward -> postprocess`` take the traceable paths of instaseg's ops (graph ops for NMS and
    RoIAlign, fixed-size Fast NMS, whole-image mask paste), each tested to agree with its eager path.
    """

    def __init__(self, model: Detector) -> None:
        super().__init__()
        self.model = model
        self.output_names = output_names(model)

    def forward(self, image: Tensor) -> tuple[Tensor, ...]:
        model = self.model
        result = model.postprocess(model([image]), [(image.shape[-2], image.shape[-1])])[0]
        outputs = {"boxes": result.boxes, "scores": result.scores, "labels": result.labels}
        if result.masks is not None:
            # A graph output of its own when the model does not rescore masks (ONNX names each output once).
            mask_scores = result.mask_scores if result.mask_scores is not None else result.scores.clone()
            outputs.update(masks=result.masks, mask_scores=mask_scores)
        if result.keypoints is not None:
            outputs[KEYPOINTS_OUTPUT] = result.keypoints
        return tuple(outputs[name] for name in self.output_names)


def _check_exportable_rcnn(model: MaskRCNN) -> None:
    """Raise :class:`InstasegError` for settings the exported graph does not reproduce."""
    problems = []
    if model.inference_config.nms != "nms":
        problems.append(f"inference.nms={model.inference_config.nms!r} (only 'nms' exports)")
    if model.mask_config is not None and model.mask_config.paste != "centres":
        problems.append(f"mask_head.paste={model.mask_config.paste!r} (only 'centres' exports)")
    if model.box_config.pooler_type != "align":
        problems.append(f"box_head.pooler_type={model.box_config.pooler_type!r} (only 'align' exports)")
    if model.input_config.resize_rounding != "floor":
        problems.append(f"input.resize_rounding={model.input_config.resize_rounding!r} (only 'floor' exports)")
    if model.input_config.resize_filter != "bilinear":
        problems.append(f"input.resize_filter={model.input_config.resize_filter!r} (only 'bilinear' exports: "
                        "Pillow's uint8 filter is not a graph operation)")
    if model.rpn_config.anchor_strides != "fixed":
        problems.append(f"model.rpn.anchor_strides={model.rpn_config.anchor_strides!r} (only 'fixed' exports)")
    if problems:
        raise InstasegError("cannot export this Mask R-CNN: " + "; ".join(problems))


def _check_exportable_yolact(model: Yolact) -> None:
    """Raise :class:`InstasegError` for settings the exported graph does not reproduce."""
    if model.inference_config.nms not in ("fast_nms", "nms"):
        raise InstasegError(f"cannot export YOLACT with inference.nms={model.inference_config.nms!r}: "
                            "use 'fast_nms' or 'nms'")


def _example_image(example: Tensor | tuple[int, int]) -> Tensor:
    if isinstance(example, Tensor):
        if example.dim() != 3 or example.shape[0] != 3:
            raise InstasegError(f"the example image must be (3, H, W), got {tuple(example.shape)}")
        return example.float()
    height, width = example
    if min(height, width) < _MIN_SIDE:
        raise InstasegError(f"example images need sides of at least {_MIN_SIDE} px, got {height}x{width}")
    # Any content traces the same graph; a seeded pattern keeps exports reproducible.
    generator = torch.Generator().manual_seed(0)
    return torch.rand((3, height, width), generator=generator) * 255


def export_program(
    model: nn.Module, example: Tensor | tuple[int, int] = (480, 640), dynamic: bool = True
) -> torch.export.ExportedProgram:
    """``torch.export`` of :func:`export_wrapper(model) <export_wrapper>` on one example image.

    ``example``: an image ``(3, H, W)`` or its ``(H, W)``. With ``dynamic`` the program accepts
    any height and width from 32 to 8192 px; otherwise only the example's size.
    """
    wrapper = export_wrapper(model)
    image = _example_image(example)
    shapes = None
    if dynamic:
        side = {1: torch.export.Dim("height", min=_MIN_SIDE, max=_MAX_SIDE),
                2: torch.export.Dim("width", min=_MIN_SIDE, max=_MAX_SIDE)}
        shapes = (side,)
    with fast_kernels(False), torch.no_grad(), _quiet():  # trace the pure-PyTorch paths
        return torch.export.export(wrapper, (image,), dynamic_shapes=shapes, strict=False)


def save_program(program: torch.export.ExportedProgram, path: str | Path) -> Path:
    """Save a program from :func:`export_program` as a ``.pt2`` file."""
    path = Path(path)
    torch.export.save(program, path)
    return path


def load_program(path: str | Path) -> torch.export.ExportedProgram:
    """Load a ``.pt2`` written by :func:`save_program` (instaseg's custom ops are registered here)."""
    return torch.export.load(Path(path))


def export_onnx(
    model: nn.Module,
    path: str | Path,
    example: Tensor | tuple[int, int] = (480, 640),
    dynamic: bool = True,
    optimize: bool = True,
    metadata: dict[str, str] | None = None,
) -> Path:
    """Write ``model`` as an ONNX file at ``path`` (input ``image``, outputs :func:`output_names`).

    ``example`` and ``dynamic`` as in :func:`export_program`; ``optimize`` and ``metadata`` as in
    :func:`program_to_onnx`.
    """
    _require_onnxscript()
    metadata = {"instaseg.rescored_masks": str(has_rescored_masks(model)).lower(), **(metadata or {})}
    return program_to_onnx(export_program(model, example, dynamic), path, optimize, metadata)


def has_rescored_masks(model: nn.Module) -> bool:
    """Whether ``model`` scores masks apart from boxes (MS R-CNN, YOLACT++): its ``mask_scores``
    output is then its own; otherwise the graph repeats the class score there."""
    return getattr(model, "maskiou_head", None) is not None or getattr(model, "rescoring_head", None) is not None


def program_to_onnx(
    program: torch.export.ExportedProgram,
    path: str | Path,
    optimize: bool = True,
    metadata: dict[str, str] | None = None,
) -> Path:
    """Translate a program from :func:`export_program` to ONNX (opset :data:`ONNX_OPSET`) at ``path``,
    its outputs named as :func:`output_names` (told apart by their number).

    ``optimize`` runs onnxscript's graph optimizer (constant folding, dead code removal);
    ``metadata`` goes into the file's ``metadata_props`` (e.g. category names).
    """
    _require_onnxscript()
    path = Path(path)
    expected = _program_output_names(program)
    with _quiet():
        onnx_program = torch.onnx.export(
            program, dynamo=True, opset_version=ONNX_OPSET, custom_translation_table=ONNX_TRANSLATIONS,
            input_names=[INPUT_NAME], output_names=list(expected), optimize=optimize, verbose=False,
        )
    names = [value.name for value in onnx_program.model.graph.outputs]
    if names != list(expected):  # a renamed or merged output would silently break every caller
        raise InstasegError(f"the ONNX graph's outputs are {names}, expected {list(expected)}")
    onnx_program.model.metadata_props.update(metadata or {})
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx_program.save(str(path), external_data=False)
    return path


def _program_output_names(program: torch.export.ExportedProgram) -> tuple[str, ...]:
    count = len(program.graph_signature.user_outputs)
    for names in OUTPUT_LAYOUTS:
        if len(names) == count:
            return names
    raise InstasegError(f"a program with {count} outputs is not one of export_program's")


def _require_onnxscript() -> None:
    try:
        import onnxscript  # noqa: F401  (the dynamo exporter writes its graphs with it)
    except ImportError:
        raise InstasegError("ONNX export needs onnx and onnxscript: pip install 'instaseg[export]'") from None


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """Silence the exporter's progress lines and its warnings about torchvision and deprecations."""
    names = ("torch.onnx", "torch.export", "torch.fx.experimental.symbolic_shapes")
    loggers = [logging.getLogger(name) for name in names]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(open(os.devnull, "w")) as sink:
            warnings.simplefilter("ignore")
            try:
                yield
            finally:
                sink.close()
    finally:
        for logger, level in zip(loggers, levels):
            logger.setLevel(level)


def outputs_to_instances(
    outputs: list | tuple,
    image_size: tuple[int, int],
    has_mask_scores: bool = True,
    names: tuple[str, ...] = OUTPUT_NAMES,
) -> Instances:
    """The graph outputs (numpy arrays or tensors) named ``names`` (one of :data:`OUTPUT_LAYOUTS`)
    -> :class:`Instances` on ``image_size``; ``masks`` None where the graph has none."""
    if tuple(names) not in OUTPUT_LAYOUTS or len(outputs) != len(names):
        raise InstasegError(f"{len(outputs)} outputs named {list(names)}: not an instaseg graph's")
    found = {name: torch.as_tensor(o) for name, o in zip(names, outputs)}
    masks = found.get("masks")
    keypoints = found.get(KEYPOINTS_OUTPUT)
    return Instances(
        boxes=found["boxes"].float(),
        scores=found["scores"].float(),
        labels=found["labels"].long(),
        masks=None if masks is None else masks.bool().reshape(-1, *image_size),
        mask_scores=found["mask_scores"].float() if masks is not None and has_mask_scores else None,
        keypoints=None if keypoints is None else keypoints.float(),
    )


class OnnxPredictor:
    """Run an exported ONNX file with ONNX Runtime (CPU): ``predictor(image (3, H, W)) -> Instances``.

    ``metadata`` holds the file's ``metadata_props`` (``instaseg export`` writes the preset,
    category ids and names there).
    """

    def __init__(self, path: str | Path, num_threads: int | None = None) -> None:
        try:
            import onnxruntime
        except ImportError:
            raise InstasegError("running ONNX files needs onnxruntime: pip install 'instaseg[export]'") from None
        options = onnxruntime.SessionOptions()
        if num_threads:
            options.intra_op_num_threads = num_threads
        self.session = onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        self.metadata: dict[str, str] = dict(self.session.get_modelmeta().custom_metadata_map)
        # The file's own output names: which of OUTPUT_LAYOUTS it has (keypoints, masks).
        self.output_names = tuple(value.name for value in self.session.get_outputs())
        if self.output_names not in OUTPUT_LAYOUTS:
            raise InstasegError(f"{path} has outputs {list(self.output_names)}: not an instaseg export")

    def run(self, image: Tensor) -> list:
        """Raw outputs (numpy arrays, in :attr:`output_names` order) for ``image (3, H, W)``."""
        array = image.detach().to("cpu", torch.float32).contiguous().numpy()
        return self.session.run(list(self.output_names), {INPUT_NAME: array})

    def __call__(self, image: Tensor) -> Instances:
        # Plain Mask R-CNN / YOLACT files repeat the class score as mask score; Instances says None.
        rescored = self.metadata.get("instaseg.rescored_masks", "true") != "false"
        return outputs_to_instances(self.run(image), tuple(image.shape[-2:]), rescored, self.output_names)
