"""The top floor: models ready to use, for the CLI, the ``Predictor`` and any other front end.

* build: :func:`build_model` (a preset or config, or published weights by name), :func:`model_from_config`
  (ImageNet backbone weights applied), :func:`load_model` (an instaseg checkpoint, eval mode),
  :func:`load_pretrained_weights` (fine-tuning initialisation) and what they share;
* weights: :func:`resolve_checkpoint` (a catalogue name fetched through ``instaseg.zoo`` and converted
  once, or a path), :func:`convert_torchvision_file` and its siblings (``instaseg convert``);
* :class:`Predictor`; :func:`train` / :func:`train_on_dataset` and :func:`run_benchmark` on a model
  built here.

Everything below stays unaware of it: ``detectors`` assembles modules from a config, ``weights``
translates state dicts, ``engine`` trains, evaluates and measures any model it is handed.
"""

from instaseg.hub.backbone import load_backbone_weights, load_imagenet_weights
from instaseg.hub.bench import build_bench_model, run_benchmark
from instaseg.hub.build import (
    build_model,
    class_sized_tensors,
    config_for_weights,
    load_model,
    load_pretrained_weights,
    model_from_config,
    model_shapes,
    resolve_config,
    without_backbone_weights,
)
from instaseg.hub.convert import (
    convert_detectron2_file,
    convert_mmdet_file,
    convert_torchvision_file,
    convert_yolact_file,
    save_converted,
    save_weights,
)
from instaseg.hub.predictor import Predictor, as_image_tensor
from instaseg.hub.pretrained import checkpoint_for, resolve_checkpoint
from instaseg.hub.training import fine_tuning_initialiser, train, train_on_dataset

__all__ = [
    "Predictor",
    "as_image_tensor",
    "build_bench_model",
    "build_model",
    "checkpoint_for",
    "class_sized_tensors",
    "config_for_weights",
    "convert_detectron2_file",
    "convert_mmdet_file",
    "convert_torchvision_file",
    "convert_yolact_file",
    "fine_tuning_initialiser",
    "load_backbone_weights",
    "load_imagenet_weights",
    "load_model",
    "load_pretrained_weights",
    "model_from_config",
    "model_shapes",
    "resolve_checkpoint",
    "resolve_config",
    "run_benchmark",
    "save_converted",
    "save_weights",
    "train",
    "train_on_dataset",
    "without_backbone_weights",
]
